"""Stable Diffusion 2 folder → Marigold U-Net (released surgery), the training schedule, and the augmentations."""

import numpy as np
import pytest

from marigold_jax import augment, surgery
from marigold_jax.convert_diffusers import params_to_torch
from test_marigold_convert import tiny_components


@pytest.fixture(scope="module")
def sd2_folder(tmp_path_factory):
    """A tiny random StableDiffusionPipeline (v-prediction, 4-channel U-Net) saved as a diffusers folder."""
    from diffusers import StableDiffusionPipeline

    parts = tiny_components(4, 4)
    pipe = StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    path = str(tmp_path_factory.mktemp("sd2") / "stable-diffusion-2")
    pipe.save_pretrained(path)
    return pipe, path


@pytest.mark.parametrize("n_targets", [1, 2, 3])
def test_surgery_equals_the_released_formula(sd2_folder, n_targets):
    import torch
    from flax import traverse_util

    pipe, path = sd2_folder
    base = surgery.read_base(path)
    unet, _ = surgery.build_models(base, n_targets)
    assert (unet.in_channels, unet.out_channels) == (4 * (n_targets + 1), 4 * n_targets)
    flat = surgery.widen_unet(surgery.host_weights(base, "unet", surgery.base_unet(base)), n_targets)
    ours = params_to_torch(traverse_util.unflatten_dict(flat))
    ref = {k: v.detach().numpy() for k, v in pipe.unet.state_dict().items()}
    # released: conv_in weight repeated (n + 1) times over input channels / (n + 1), bias kept; IID: conv_out
    # weight and bias repeated n times over output channels
    ref["conv_in.weight"] = (torch.from_numpy(ref["conv_in.weight"]).repeat(1, n_targets + 1, 1, 1)
                             / (n_targets + 1)).numpy()
    ref["conv_out.weight"] = torch.from_numpy(ref["conv_out.weight"]).repeat(n_targets, 1, 1, 1).numpy()
    ref["conv_out.bias"] = torch.from_numpy(ref["conv_out.bias"]).repeat(n_targets).numpy()
    assert ours.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(ours[key], ref[key], err_msg=key)


@pytest.mark.slow
def test_widened_unet_gives_the_base_output_when_every_slot_holds_the_same_latent(sd2_folder):
    import jax.numpy as jnp
    from flax import traverse_util

    _, path = sd2_folder
    base = surgery.read_base(path)
    sd_unet = surgery.base_unet(base)
    flat = surgery.host_weights(base, "unet", sd_unet)
    wide, _ = surgery.build_models(base, 1)
    as_params = lambda f: {"params": traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32)
                                                                    for k, v in f.items()})}
    z = np.random.default_rng(0).standard_normal((1, 8, 8, 4)).astype(np.float32)
    text = np.random.default_rng(1).standard_normal((1, 2, sd_unet.cross_attention_dim)).astype(np.float32)
    t = jnp.array([500])
    ref = np.asarray(sd_unet.apply(as_params(flat), z, t, text))
    out = np.asarray(wide.apply(as_params(surgery.widen_unet(flat, 1)), np.concatenate([z, z], -1), t, text))
    np.testing.assert_allclose(out, ref, atol=1e-5 * np.abs(ref).max(), rtol=0)


def test_training_schedule_is_the_base_betas_rescaled_to_zero_snr_as_diffusers(sd2_folder):
    from diffusers import DDPMScheduler

    from marigold_jax import schedulers

    pipe, path = sd2_folder
    config = surgery.training_scheduler(surgery.read_base(path).scheduler_config)
    ref = DDPMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    # the rescale subtracts two nearly equal square roots: one-ulp differences of PyTorch's float32 linspace reach
    # ~4e-7 in alpha_bar (the tolerance of test_marigold_schedulers)
    np.testing.assert_allclose(schedulers.alphas_cumprod(config), ref.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-6)
    assert schedulers.alphas_cumprod(config)[-1] == 0.0
    assert config.prediction_type == "v_prediction" and config.timestep_spacing == "trailing"


def test_a_marigold_unet_is_refused_as_base(sd2_folder):
    _, path = sd2_folder
    with pytest.raises(ValueError, match="not an already widened Marigold U-Net"):
        surgery.marigold_unet_config({"in_channels": 8, "out_channels": 4}, 1)


def test_missing_base_parts_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="unet/config.json"):
        surgery.read_base(str(tmp_path))


def test_flip_mirrors_every_raster_and_negates_normal_x():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    normals = rng.standard_normal((4, 6, 3)).astype(np.float32)
    valid = rng.random((4, 6)) > 0.5
    i2, n2, v2 = augment.hflip(image, normals, valid, normals=True)
    np.testing.assert_array_equal(i2, image[:, ::-1])
    np.testing.assert_array_equal(v2, valid[:, ::-1])
    np.testing.assert_array_equal(n2[..., 0], -normals[:, ::-1, 0])
    np.testing.assert_array_equal(n2[..., 1:], normals[:, ::-1, 1:])
    _, d2, _ = augment.hflip(image, normals, valid, normals=False)
    np.testing.assert_array_equal(d2, normals[:, ::-1])


def test_blurs_and_jitter_keep_what_they_must():
    flat = np.full((40, 40, 3), 90, np.uint8)
    assert (augment.gaussian_blur(flat, 2.5) == 90).all()
    for angle in (0.0, 37.0, 90.0, 200.0):
        k = augment.motion_kernel(7, angle)
        assert abs(k.sum() - 1) < 1e-6 and (k > 0).sum() >= 4
    np.testing.assert_array_equal(augment.motion_kernel(5, 0.0)[2], np.full(5, 0.2, np.float32))
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    same = augment.color_jitter(image, 1.0, 1.0, 1.0, 0.0, [0, 1, 2, 3])
    assert np.abs(same.astype(int) - image).max() <= 1  # only the float round trip's truncation
    gray = augment.color_jitter(image, 1.0, 1.0, 0.0, 0.0, [2])
    assert np.abs(gray.astype(int) - gray[..., :1]).max() <= 1
    hue = augment.color_jitter(np.array([[[255, 0, 0]]], np.uint8), 1.0, 1.0, 1.0, 1 / 3, [3])
    np.testing.assert_array_equal(hue[0, 0], [0, 255, 0])  # a third of a turn: red -> green


def test_augment_applies_blurs_only_to_normals_at_768_rows():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    target = rng.standard_normal((16, 16, 3)).astype(np.float32)
    valid = np.ones((16, 16), bool)
    always = dict(gaussian_blur_p=1.0, motion_blur_p=1.0, color_jitter_p=0.0)
    out, _, _ = augment.augment(image, target, valid, "normals", np.random.default_rng(1), flip_p=0.0,
                                normals_options=always)
    np.testing.assert_array_equal(out, image)  # 16 rows, not Hypersim's 768: no blur
    out, _, _ = augment.augment(image, target, valid, "normals", np.random.default_rng(1), flip_p=0.0,
                                normals_options={**always, "blur_rows": 16})
    assert np.abs(out.astype(int) - image).mean() > 5
    out, t2, _ = augment.augment(image, target, valid, "depth", np.random.default_rng(1), flip_p=1.0)
    np.testing.assert_array_equal(out, image[:, ::-1])
    np.testing.assert_array_equal(t2, target[:, ::-1])
