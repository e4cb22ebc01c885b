"""diffusers Marigold folders ↔ marigold_jax: load without torch, same component outputs, export back to diffusers."""

import dataclasses
import json
import os
import shutil
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from marigold_jax.clip import empty_prompt_ids
from marigold_jax.convert_diffusers import empty_prompt_embedding, load_folder, read_safetensors, save_folder
from marigold_jax.vae import AutoencoderKL
from test_marigold_models import randomise, relative_error, unet_output, vae_outputs

VOCAB = ["a", "b", "c", "a</w>", "b</w>", "c</w>", "ab</w>", "<|startoftext|>", "<|endoftext|>"]
TEXT_DIM = 32


def tiny_components(in_channels=8, out_channels=4, seed=0):
    """Random-weight diffusers/transformers components of a Marigold pipeline, tiny enough for 2 CPU cores."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL as TorchVAE
    from diffusers import DDIMScheduler
    from diffusers import UNet2DConditionModel as TorchUNet
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = randomise(TorchUNet(
        in_channels=in_channels, out_channels=out_channels, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, attention_head_dim=(2, 4), cross_attention_dim=TEXT_DIM, norm_num_groups=8,
        use_linear_projection=True,
    ), seed)
    vae = randomise(TorchVAE(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=8, latent_channels=4,
    ), seed + 1)
    text_encoder = randomise(CLIPTextModel(CLIPTextConfig(
        vocab_size=len(VOCAB), hidden_size=TEXT_DIM, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=7, eos_token_id=8, pad_token_id=8,
    )), seed + 2)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "vocab.json"), "w") as f:
            json.dump({t: i for i, t in enumerate(VOCAB)}, f)
        with open(os.path.join(d, "merges.txt"), "w") as f:
            f.write("#version: 0.2\na b</w>\n")
        tokenizer = CLIPTokenizer.from_pretrained(d, model_max_length=77)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        timestep_spacing="trailing", rescale_betas_zero_snr=True, set_alpha_to_one=False, steps_offset=1,
        clip_sample=False,
    )
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


PIPELINES = {
    "depth": dict(cls="MarigoldDepthPipeline", channels=(8, 4), kwargs=dict(prediction_type="depth")),
    "normals": dict(cls="MarigoldNormalsPipeline", channels=(8, 4), kwargs=dict(prediction_type="normals")),
    "intrinsics": dict(
        cls="MarigoldIntrinsicsPipeline",
        channels=(12, 8),
        kwargs=dict(
            prediction_type="intrinsics",
            target_properties={"target_names": ["albedo", "material"], "albedo": {"prediction_space": "srgb"},
                               "material": {}},
        ),
    ),
}


def tiny_pipeline(kind, seed=0):
    import diffusers

    spec = PIPELINES[kind]
    parts = tiny_components(*spec["channels"], seed=seed)
    return getattr(diffusers, spec["cls"])(**parts, default_denoising_steps=1, default_processing_resolution=0,
                                          **spec["kwargs"])


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory):
    """A tiny random MarigoldDepthPipeline and the folder its `save_pretrained` wrote."""
    pipe = tiny_pipeline("depth")
    path = str(tmp_path_factory.mktemp("marigold") / "depth")
    pipe.save_pretrained(path)
    return pipe, path


def diffusers_empty_embedding(pipe):
    import torch

    ids = pipe.tokenizer("", padding="do_not_pad", max_length=pipe.tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        return ids.numpy(), pipe.text_encoder(ids)[0].numpy()


def test_loaded_components_give_diffusers_outputs(depth_folder):
    pipe, path = depth_folder
    folder = load_folder(path)
    ids, embedding = diffusers_empty_embedding(pipe)
    assert np.array_equal(empty_prompt_ids(os.path.join(path, "tokenizer")), ids)
    assert folder.empty_text_embedding.shape == (1, 2, TEXT_DIM)
    assert relative_error(folder.empty_text_embedding, embedding) <= 1e-5

    rng = np.random.default_rng(0)
    image = rng.uniform(-1, 1, (1, 16, 12, 3)).astype(np.float32)
    mean_ref, decoded_ref = vae_outputs(pipe.vae, image)
    with jax.default_matmul_precision("highest"):
        mean = jax.jit(partial(folder.vae.apply, method=AutoencoderKL.encode_mean))(folder.vae_params, image)
        decoded = jax.jit(partial(folder.vae.apply, method=AutoencoderKL.decode))(folder.vae_params, mean_ref)
    assert mean.shape == (1, 8, 6, 4)
    assert relative_error(mean, mean_ref) <= 1e-4 and relative_error(decoded, decoded_ref) <= 1e-4

    sample = rng.standard_normal((1, 8, 6, 8)).astype(np.float32)
    expected = unet_output(pipe.unet, sample, 999, embedding)
    with jax.default_matmul_precision("highest"):
        out = jax.jit(folder.unet.apply)(folder.unet_params, sample, 999, folder.empty_text_embedding)
    assert relative_error(out, expected) <= 1e-4

    assert folder.model_index["_class_name"] == "MarigoldDepthPipeline"
    assert folder.scheduler_config["_class_name"] == "DDIMScheduler"
    assert folder.scheduler_config["rescale_betas_zero_snr"] is True
    assert folder.vae.scaling_factor == pipe.vae.config.scaling_factor


def test_empty_prompt_embedding_from_text_encoder_and_tokenizer_alone(depth_folder, tmp_path):
    pipe, path = depth_folder
    for part in ("text_encoder", "tokenizer"):
        shutil.copytree(os.path.join(path, part), tmp_path / part)
    _, expected = diffusers_empty_embedding(pipe)
    assert relative_error(empty_prompt_embedding(str(tmp_path)), expected) <= 1e-5
    shutil.rmtree(tmp_path / "tokenizer")
    with pytest.raises(FileNotFoundError, match="lacks tokenizer"):
        empty_prompt_embedding(str(tmp_path))


def run_diffusers(pipe, image):
    """One-step diffusers prediction with fixed noise, output_type="np"."""
    import torch

    latents = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 4, 8, 6)).astype(np.float32))
    h = pipe.unet.config.out_channels // 4
    return pipe(image, num_inference_steps=1, processing_resolution=0, latents=latents.repeat(1, h, 1, 1),
                output_type="np").prediction


@pytest.mark.parametrize("kind", ["depth", "normals", "intrinsics"])
def test_saved_folder_loads_in_diffusers_with_identical_weights_and_outputs(kind, tmp_path):
    import diffusers
    import torch
    from PIL import Image

    pipe = tiny_pipeline(kind, seed=3)
    pipe.save_pretrained(tmp_path / "original")
    save_folder(load_folder(str(tmp_path / "original")), str(tmp_path / "exported"))
    cls = getattr(diffusers, PIPELINES[kind]["cls"])
    reloaded = cls.from_pretrained(str(tmp_path / "exported"))
    assert type(reloaded.scheduler) is type(pipe.scheduler)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}
    assert public(reloaded.scheduler.config) == public(pipe.scheduler.config)
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(reloaded, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    # a pipeline reloaded by diffusers differs from the in-memory one by ~1e-6 (diffusers' own round trip too):
    # compare against diffusers' reload of its own folder
    original = cls.from_pretrained(str(tmp_path / "original"))
    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 12, 3), np.uint8))
    assert np.array_equal(run_diffusers(reloaded, image), run_diffusers(original, image))
    if kind == "intrinsics":
        assert reloaded.target_properties == pipe.target_properties


def test_fine_tuned_parameters_are_exported(depth_folder, tmp_path):
    import diffusers

    _, path = depth_folder
    folder = load_folder(path)
    bumped = jax.tree.map(lambda x: x + 0.5, folder.unet_params)
    save_folder(dataclasses.replace(folder, unet_params=bumped), str(tmp_path))
    reloaded = diffusers.MarigoldDepthPipeline.from_pretrained(str(tmp_path))
    ours = read_safetensors(str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    assert np.array_equal(reloaded.unet.conv_in.weight.detach().numpy(), ours["conv_in.weight"])
    original = read_safetensors(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))
    assert np.allclose(ours["conv_in.weight"], original["conv_in.weight"] + 0.5)


def test_half_precision_weights_load_as_float32(depth_folder, tmp_path):
    from safetensors.numpy import save_file

    _, path = depth_folder
    shutil.copytree(path, tmp_path / "fp16")
    weights = tmp_path / "fp16" / "unet" / "diffusion_pytorch_model.safetensors"
    half = {k: v.astype(np.float16) for k, v in read_safetensors(str(weights)).items()}
    os.remove(weights)
    save_file(half, str(weights.with_name("diffusion_pytorch_model.fp16.safetensors")), metadata={"format": "pt"})
    folder = load_folder(str(tmp_path / "fp16"))
    kernel = folder.unet_params["params"]["conv_in"]["kernel"]
    assert kernel.dtype == jnp.float32
    assert np.array_equal(np.asarray(kernel), half["conv_in.weight"].astype(np.float32).transpose(2, 3, 1, 0))


def test_not_a_folder_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_folder(str(tmp_path / "nothing"))


def test_folder_without_model_index_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json is missing"):
        load_folder(str(tmp_path))


def test_other_pipeline_is_reported(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline, not a Marigold pipeline"):
        load_folder(str(tmp_path))


def test_missing_files_are_named(depth_folder, tmp_path):
    _, path = depth_folder
    shutil.copytree(path, tmp_path / "broken")
    os.remove(tmp_path / "broken" / "unet" / "diffusion_pytorch_model.safetensors")
    shutil.rmtree(tmp_path / "broken" / "scheduler")
    with pytest.raises(FileNotFoundError) as error:
        load_folder(str(tmp_path / "broken"))
    assert "unet/diffusion_pytorch_model.safetensors" in str(error.value)
    assert "scheduler/scheduler_config.json" in str(error.value)


def test_weights_of_another_config_are_reported(depth_folder, tmp_path):
    _, path = depth_folder
    shutil.copytree(path, tmp_path / "mixed")
    config_path = tmp_path / "mixed" / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["in_channels"] = 4
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unet weights do not match its config: .*conv_in.weight"):
        load_folder(str(tmp_path / "mixed"))


def test_unsupported_unet_option_is_reported(depth_folder, tmp_path):
    _, path = depth_folder
    shutil.copytree(path, tmp_path / "sdxl")
    config_path = tmp_path / "sdxl" / "unet" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "addition_embed_type": "text_time"}))
    with pytest.raises(ValueError, match="addition_embed_type='text_time'"):
        load_folder(str(tmp_path / "sdxl"))


def test_exporting_parameters_that_do_not_fit_the_config_is_refused(depth_folder, tmp_path):
    _, path = depth_folder
    folder = load_folder(path)
    params = jax.tree.map(lambda x: x, folder.unet_params)
    params["params"]["conv_in"]["kernel"] = jnp.zeros((3, 3, 4, 32))
    with pytest.raises(ValueError, match="unet parameters do not match unet_config.*conv_in.weight"):
        save_folder(dataclasses.replace(folder, unet_params=params), str(tmp_path))
