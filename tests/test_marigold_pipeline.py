"""Whole Marigold pipelines equal diffusers' (tiny random-weight checkpoints saved as folders, same injected noise).

Cases share the VAE and U-Net configs and the image sizes so that the compiled programs are reused: the number of
steps, the ensemble size and the images per call do not change them. Depth ensembles run with
`ensembling_kwargs={"max_iter": 0}`: diffusers' BFGS alignment amplifies the ~1e-6 float32 differences between
two implementations' members chaotically (see `marigold_jax.ensemble`), and its solver is tested on identical
members in test_marigold_ensemble.py; everything else of the depth ensembling runs here.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    LCMScheduler,
    MarigoldDepthPipeline,
    MarigoldIntrinsicsPipeline,
    MarigoldNormalsPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import marigold_jax

V1_1 = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=False, steps_offset=1,
    timestep_spacing="trailing",
)
LCM = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
    prediction_type="v_prediction", original_inference_steps=50, set_alpha_to_one=True, steps_offset=1,
    timestep_spacing="leading",
)
APPEARANCE = {
    "target_names": ["albedo", "material"],
    "albedo": {"prediction_space": "srgb", "up_to_scale": False},
    "material": {"prediction_space": "stack", "sub_target_names": ["roughness", "metallicity", None]},
    "roughness": {"prediction_space": "linear", "up_to_scale": False},
    "metallicity": {"prediction_space": "linear", "up_to_scale": False},
}
LIGHTING = {
    "target_names": ["albedo", "shading", "residual"],
    "albedo": {"prediction_space": "linear", "up_to_scale": False},
    "shading": {"prediction_space": "linear", "up_to_scale": True},
    "residual": {"prediction_space": "linear", "up_to_scale": True},
}
CHECKPOINTS = {
    # name: (pipeline class, U-Net in/out channels, scheduler, pipeline config)
    "depth": (MarigoldDepthPipeline, 8, 4, DDIMScheduler(**V1_1), dict(prediction_type="depth", scale_invariant=True,
                                                                      shift_invariant=True)),
    "depth-lcm": (MarigoldDepthPipeline, 8, 4, LCMScheduler(**LCM), dict(prediction_type="depth")),
    "normals": (MarigoldNormalsPipeline, 8, 4, DDIMScheduler(**V1_1), dict(prediction_type="normals",
                                                                          use_full_z_range=True)),
    "appearance": (MarigoldIntrinsicsPipeline, 12, 8, DDIMScheduler(**V1_1), dict(prediction_type="intrinsics",
                                                                                  target_properties=APPEARANCE)),
    "lighting": (MarigoldIntrinsicsPipeline, 16, 12, DDIMScheduler(**V1_1), dict(prediction_type="intrinsics",
                                                                                 target_properties=LIGHTING)),
}
SIZE = (19, 27)  # odd on purpose: padding and resizing are exercised
REDUCED = 16  # processing resolution below the native long side 27: 11 x 16


def _tiny_diffusers(name, seed):
    cls, unet_in, unet_out, scheduler, config = CHECKPOINTS[name]
    torch.manual_seed(seed)
    # The smallest models that keep Marigold's structure (VAE factor 8, cross-attention U-Net): compiling them is
    # most of this file's time. Their layers at other widths and depths are tested in test_marigold_models.py.
    vae = AutoencoderKL(
        block_out_channels=(4, 4, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4, latent_channels=4,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        in_channels=unet_in, out_channels=unet_out, block_out_channels=(16,),
        down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1,
        attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4, use_linear_projection=True,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, hidden_act="gelu", bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8)
    pipe = cls(unet=unet.eval(), vae=vae.eval(), scheduler=scheduler, text_encoder=text_encoder.eval(),
               tokenizer=tokenizer, default_denoising_steps=4, default_processing_resolution=REDUCED, **config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """PyTorch's thread pool costs far more than these tiny convolutions on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (folder, diffusers pipeline loaded from it, marigold_jax pipeline loaded from it)."""
    root = tmp_path_factory.mktemp("marigold")
    out = {}
    for seed, name in enumerate(CHECKPOINTS):
        folder = str(root / name)
        _tiny_diffusers(name, seed).save_pretrained(folder)
        ref = CHECKPOINTS[name][0].from_pretrained(folder)
        ref.set_progress_bar_config(disable=True)
        out[name] = (folder, ref, marigold_jax.load(folder))
    return out


def _images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *SIZE, 3), dtype=np.uint8)


def _latent_size(resolution):
    h, w = SIZE if resolution == 0 else (SIZE[0] * resolution // max(SIZE), SIZE[1] * resolution // max(SIZE))
    return -(-h // 8), -(-w // 8)


def _run_both(checkpoints, name, n, steps, ensemble, resolution, match, **kwargs):
    _, ref, ours = checkpoints[name]
    images = _images(n)
    channels = 4 * ours.n_targets
    latents = torch.randn(n * ensemble, channels, *_latent_size(resolution), generator=torch.Generator().manual_seed(1))
    knobs = dict(num_inference_steps=steps, ensemble_size=ensemble, processing_resolution=resolution,
                 match_input_resolution=match, output_uncertainty=ensemble > 1, **kwargs)
    expected = ref([Image.fromarray(x) for x in images], latents=latents, **knobs)
    predict = getattr(ours, f"predict_{ours.modality}")
    with jax.default_matmul_precision("highest"):
        got = predict(images, latents=latents.numpy().transpose(0, 2, 3, 1), **knobs)
    return got, expected


def _assert_within_range_fraction(got, expected, fraction):
    assert got.shape == expected.shape, (got.shape, expected.shape)
    span = float(expected.max() - expected.min())
    assert np.abs(got - expected).max() <= fraction * span, np.abs(got - expected).max() / span


CASES = [
    # name, images, steps, ensemble, processing resolution, match input resolution, extra knobs
    ("depth", 1, 1, 1, 0, True, {}),
    ("depth", 2, 4, 3, REDUCED, True, dict(ensembling_kwargs={"max_iter": 0})),
    ("depth", 1, 4, 3, 0, False, dict(ensembling_kwargs={"max_iter": 0, "reduction": "mean"})),
    ("depth-lcm", 1, 1, 1, 0, True, {}),
    ("normals", 1, 4, 3, 0, False, {}),
    ("normals", 1, 1, 1, REDUCED, True, dict(resample_method_output="bicubic")),
    ("appearance", 1, 1, 3, 0, True, {}),
    ("lighting", 2, 4, 3, REDUCED, False, dict(ensembling_kwargs={"reduction": "mean"})),
]


@pytest.mark.parametrize("name,n,steps,ensemble,resolution,match,kwargs", CASES)
def test_pipeline_equals_diffusers_with_the_same_latents(checkpoints, name, n, steps, ensemble, resolution, match,
                                                         kwargs):
    got, expected = _run_both(checkpoints, name, n, steps, ensemble, resolution, match, **kwargs)
    _assert_within_range_fraction(got.prediction, expected.prediction, 1e-3)
    if ensemble > 1:
        _assert_within_range_fraction(got.uncertainty, expected.uncertainty, 1e-3)
    else:
        assert got.uncertainty is None and expected.uncertainty is None


def test_modality_and_targets_are_read_from_the_folder(checkpoints):
    assert {name: c[2].modality for name, c in checkpoints.items()} == {
        "depth": "depth", "depth-lcm": "depth", "normals": "normals", "appearance": "intrinsics",
        "lighting": "intrinsics",
    }
    assert checkpoints["lighting"][2].target_names == ["albedo", "shading", "residual"]
    assert checkpoints["depth-lcm"][2].scheduler.kind == "LCMScheduler"


def test_defaults_come_from_the_checkpoint_and_the_seed_fixes_the_noise(checkpoints):
    _, _, ours = checkpoints["depth"]
    with jax.default_matmul_precision("highest"):
        a = ours.predict_depth(_images(1)[0], seed=3, output_latent=True)
        b = ours.predict_depth(_images(1)[0], seed=3)
        c = ours.predict_depth(_images(1)[0], seed=4)
    assert a.prediction.shape == (1, *SIZE, 1) and a.latent.shape == (1, *_latent_size(REDUCED), 4)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    assert np.abs(a.prediction - c.prediction).max() > 1e-3


def test_save_writes_a_folder_that_diffusers_and_marigold_jax_load(checkpoints, tmp_path):
    folder, ref, ours = checkpoints["appearance"]
    marigold_jax.save(ours, str(tmp_path / "saved"))
    reloaded = MarigoldIntrinsicsPipeline.from_pretrained(str(tmp_path / "saved"))
    for a, b in zip(ref.unet.state_dict().values(), reloaded.unet.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert reloaded.target_properties == APPEARANCE
    again = marigold_jax.load(str(tmp_path / "saved"))
    assert again.modality == "intrinsics" and again.scheduler == ours.scheduler


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros(SIZE, np.uint8), r"uint8 \[19, 27\]"),
        (np.zeros((*SIZE, 4), np.uint8), r"uint8 \[19, 27, 4\]"),
        (np.zeros((*SIZE, 3), np.float64), r"float64 \[19, 27, 3\]"),
    ],
)
def test_wrong_images_are_refused_naming_dtype_and_shape(checkpoints, image, message):
    with pytest.raises(ValueError, match=message):
        checkpoints["depth"][2].predict_depth(image)


def test_wrong_task_latents_and_knobs_are_refused(checkpoints):
    _, _, ours = checkpoints["depth"]
    with pytest.raises(ValueError, match="call predict_depth"):
        ours.predict_normals(_images(1))
    with pytest.raises(ValueError, match=r"latents of shape .*\[1, 2, 2, 4\]"):
        ours.predict_depth(_images(1), latents=np.zeros((1, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="multiple of 8"):
        ours.predict_depth(_images(1), processing_resolution=20)
    with pytest.raises(ValueError, match="ensemble_size > 1"):
        ours.predict_depth(_images(1), output_uncertainty=True)
    with pytest.raises(ValueError, match="unknown ensembling_kwargs"):
        ours.predict_depth(_images(1), ensemble_size=3, ensembling_kwargs={"max_iters": 3})


def test_a_folder_that_is_not_a_marigold_checkpoint_is_refused(checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        marigold_jax.load(str(tmp_path))
    folder = tmp_path / "sd"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="not a Marigold pipeline"):
        marigold_jax.load(str(folder))
    assert os.path.isdir(checkpoints["depth"][0])


@pytest.mark.parametrize(
    "name,extra,files",
    [
        ("depth", [], ["a.npy", "a.png", "a_color.png", "b.npy"]),
        ("normals", ["--ensemble", "3", "--uncertainty"], ["a.npy", "a.png", "a_uncertainty.npy",
                                                          "a_uncertainty.png"]),
        ("appearance", [], ["a.npy", "a_albedo.png", "a_material.png", "a_roughness.png", "a_metallicity.png"]),
    ],
)
def test_infer_cli_writes_each_modality_like_the_depth_anything_cli(checkpoints, tmp_path, name, extra, files):
    from launch import infer

    inputs = tmp_path / "in"
    inputs.mkdir()
    for stem, image in zip("ab", _images(2)):
        Image.fromarray(image).save(inputs / f"{stem}.png")
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["--model", checkpoints[name][0], "--input", str(inputs), "--output", str(out), "--steps", "1",
            "--processing-resolution", "0", "--attention", "xla", "--compilation-cache", "off", *extra]  # programs compiled above serve these
    with jax.default_matmul_precision("highest"):
        assert infer.main(argv) == 0
    assert set(files) <= set(os.listdir(out))
    prediction = np.load(out / "a.npy")
    assert prediction.shape == {"depth": SIZE, "normals": (*SIZE, 3), "appearance": (2, *SIZE, 3)}[name]
    if name == "depth":
        assert np.asarray(Image.open(out / "a.png")).dtype == np.uint16
    if name == "normals":
        np.testing.assert_allclose(np.linalg.norm(prediction, axis=-1), 1, atol=1e-5)
        assert np.load(out / "a_uncertainty.npy").shape == (*SIZE, 1)


_SHARDED = textwrap.dedent("""
    import sys
    import jax
    import numpy as np
    from jax.sharding import Mesh
    import marigold_jax

    assert jax.device_count() == 2
    pipeline = marigold_jax.load(sys.argv[1]).replicate(Mesh(np.array(jax.devices()), ("data",)))
    images = np.random.default_rng(0).integers(0, 256, (2, 19, 27, 3), dtype=np.uint8)
    with jax.default_matmul_precision("highest"):
        out = pipeline.predict_normals(images, **eval(sys.argv[3]))
    np.savez(sys.argv[2], prediction=out.prediction, uncertainty=out.uncertainty)
""")


@pytest.mark.slow
def test_members_sharded_over_two_devices_give_the_single_device_result(checkpoints, tmp_path):
    """Slow: a second Python process with two simulated CPU devices compiles every program again (~20 s)."""
    knobs = dict(num_inference_steps=2, ensemble_size=3, processing_resolution=0, output_uncertainty=True, seed=5)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    result = str(tmp_path / "sharded.npz")
    run = subprocess.run([sys.executable, "-c", _SHARDED, checkpoints["normals"][0], result, repr(knobs)], env=env,
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    sharded = np.load(result)
    with jax.default_matmul_precision("highest"):
        single = checkpoints["normals"][2].predict_normals(_images(2), **knobs)
    np.testing.assert_allclose(sharded["prediction"], single.prediction, atol=1e-5)
    np.testing.assert_allclose(sharded["uncertainty"], single.uncertainty, atol=1e-5)
