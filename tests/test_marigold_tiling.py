"""Tiled high-resolution Marigold inference (`marigold_jax.tiling`): a global pass, then MultiDiffusion over
overlapping latent tiles. A tiny random-weight depth checkpoint (the diffusers one of test_marigold_pipeline.py)
checks that one tile is the single pass bit for bit; per-pixel stand-in networks, for which tiling changes nothing
mathematically, check that the overlapping tiles' bookkeeping (crops, noise, weights, blending) does not either.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import marigold_jax
from marigold_jax import sampling, tiling
from test_marigold_pipeline import _tiny_diffusers

EPS = np.finfo(np.float32).eps
IMAGE = skimage.data.coffee()[::8, ::8]  # 50 x 75; at long side 64: 42 x 64 pixels, padded 48 x 64, latents 6 x 8


@pytest.fixture(scope="module")
def depth(tmp_path_factory):
    """(folder, pipeline) of a tiny random-weight Marigold depth checkpoint (DDIM v1.1 schedule)."""
    folder = str(tmp_path_factory.mktemp("tiling") / "depth")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    _tiny_diffusers("depth", 0).save_pretrained(folder)
    torch.set_num_threads(threads)
    return folder, marigold_jax.load(folder)


def test_tiles_cover_the_canvas_and_weights_sum_to_one():
    for length, tile, overlap in [(6, 8, 2), (11, 4, 2), (16, 4, 1), (96, 96, 24), (250, 96, 24), (40, 8, 0)]:
        starts = tiling.tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(0 < b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    ramp = tiling.edge_weights((1, 10), 3, (False, False, True, True))[0]
    np.testing.assert_array_equal(ramp, [0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    np.testing.assert_array_equal(tiling.edge_weights((3, 4), 2, (False,) * 4), np.ones((3, 4)))
    for canvas, tile, overlap, scale in [((11, 16), (4, 4), 2, 1), ((11, 16), (4, 4), 2, 8), ((6, 8), (6, 8), 1, 8),
                                         ((30, 7), (8, 7), 3, 1)]:
        boxes = [(t, l) for t in tiling.tile_starts(canvas[0], tile[0], overlap)
                 for l in tiling.tile_starts(canvas[1], tile[1], overlap)]
        weights = tiling.tile_weights(canvas, tile, boxes, overlap, scale)
        pixels = [(t * scale, l * scale) for t, l in boxes]
        size = (canvas[0] * scale, canvas[1] * scale)
        covered = tiling.blend(np.ones((len(boxes), tile[0] * scale, tile[1] * scale)), pixels,
                               [np.ones_like(w) for w in weights], size)
        total = tiling.blend(np.ones((len(boxes), tile[0] * scale, tile[1] * scale)), pixels, weights, size)
        # float64 quotients w_i / Σ w_j, at most four per position, re-summed: 4 roundings of 2^-53 each
        np.testing.assert_allclose(total, 1.0, rtol=0, atol=4 * np.finfo(np.float64).eps)
        np.testing.assert_array_equal(total[covered == 1], 1.0)
        assert min(w.min() for w in weights) > 0


def test_the_vae_input_of_a_prediction_decodes_back_to_it():
    rng = np.random.default_rng(0)
    depth = jnp.asarray(rng.uniform(0, 1, (2, 5, 7, 1)), jnp.float32)
    normals = rng.normal(size=(2, 5, 7, 3))
    normals = jnp.asarray(normals / np.linalg.norm(normals, axis=-1, keepdims=True), jnp.float32)
    intrinsics = jnp.asarray(rng.uniform(0, 1, (2, 5, 7, 3)), jnp.float32)
    for modality, prediction, full_z in [("depth", depth, True), ("normals", normals, True),
                                         ("normals", normals.at[..., 2].set(jnp.abs(normals[..., 2])), False),
                                         ("intrinsics", intrinsics, True)]:
        back = sampling.decode_prediction(tiling.to_vae_range(prediction, modality, full_z), modality, full_z)
        # x -> 2x - 1 -> (y + 1) / 2 and a re-normalisation of unit vectors: a few roundings of values <= 1
        np.testing.assert_allclose(back, prediction, rtol=0, atol=4 * EPS)


def test_one_tile_from_pure_noise_is_the_single_pass_bit_for_bit(depth):
    """strength 1 on a zero-terminal-SNR schedule starts from the noise alone (sqrt(alpha_bar_999) = 0), and one
    tile covering the canvas has weight 1 everywhere: the same encode, U-Net steps and decode as `predict`."""
    _, pipeline = depth
    noise = np.random.default_rng(5).standard_normal((1, 3, 4, 4), dtype=np.float32)  # 21 x 32 pixels at 32
    single = pipeline.predict_depth(IMAGE, num_inference_steps=2, processing_resolution=32, latents=noise)
    tiled = tiling.predict_tiled(pipeline, IMAGE, 32, processing_resolution=32, strength=1.0,
                                 num_inference_steps=2, latents=noise)
    assert tiled.prediction.shape == (1, *IMAGE.shape[:2], 1)
    np.testing.assert_array_equal(tiled.prediction, single.prediction)


class PixelwiseUNet(nn.Module):
    """A stand-in U-Net whose output at a latent cell depends on that cell's input only (and the timestep)."""

    out_channels: int = 4

    @nn.compact
    def __call__(self, x, timesteps, context):
        return nn.Dense(self.out_channels)(jnp.tanh(nn.Dense(8)(x))) * (1.0 + timesteps / 1000.0)


def _block_encode(vae, vae_params, images):
    """Stand-in VAE encoder [B, H, W, 3] -> [B, H/8, W/8, 4]: each latent cell from its own 8 x 8 pixels."""
    b, h, w, _ = images.shape
    mean = images.reshape(b, h // 8, 8, w // 8, 8, 3).mean(axis=(2, 4))
    return jnp.concatenate([mean, mean[..., :1] * mean[..., 1:2]], axis=-1)


def _block_decode(vae, vae_params, latent):
    """Stand-in VAE decoder [B, h, w, 4] -> [B, 8h, 8w, 3]: each 8 x 8 block from its own latent cell."""
    return jnp.tanh(jnp.repeat(jnp.repeat(latent[..., :3], 8, axis=1), 8, axis=2))


@pytest.mark.parametrize("modality,targets,strength", [("depth", 1, 1.0), ("depth", 1, 0.5), ("normals", 1, 0.5),
                                                       ("intrinsics", 2, 0.5), ("intrinsics", 2, 1.0)])
def test_with_pixelwise_networks_overlapping_tiles_give_the_single_pass(depth, monkeypatch, modality, targets,
                                                                        strength):
    """With networks that act on each latent cell (8 x 8 pixels) alone, every tile's update of a cell is the single
    pass's, so blending them changes nothing but rounding: weights summing to 1 within 4 float64 roundings, cast
    to float32 once per blend (half an ulp), with 2 + 2 blends on any path (guide, steps, decode) each followed
    by steps of gain below 2 here (v-prediction DDIM on a tanh layer), plus a re-normalisation of blended normals
    (a few ulps): below 2^4 · 4 · eps / 2 = 32 eps. Intrinsics with two targets check the per-target layout."""
    _, pipeline = depth
    unet = PixelwiseUNet(out_channels=4 * targets)
    params = unet.init(jax.random.key(0), jnp.zeros((1, 1, 1, 4 + 4 * targets)), 0.0, None)
    pipeline = dataclasses.replace(pipeline, modality=modality,
                                   folder=dataclasses.replace(pipeline.folder, unet=unet, unet_params=params))
    monkeypatch.setattr(sampling, "encode", _block_encode)
    monkeypatch.setattr(sampling, "decode", _block_decode)
    image = skimage.data.coffee()[::4, ::4]  # 100 x 150; at long side 128: 85 x 128, latents 11 x 16
    noise = np.random.default_rng(6).standard_normal((1, 11, 16, 4 * targets), dtype=np.float32)
    knobs = dict(processing_resolution=64, num_inference_steps=4, strength=strength, latents=noise, batch_size=4)
    tiled = tiling.predict_tiled(pipeline, image, 128, tile_size=32, overlap=16, **knobs)
    if strength == 1.0:
        single = pipeline.predict(image, processing_resolution=128, num_inference_steps=4, latents=noise)
    else:  # the same global guide, one tile covering the canvas
        single = tiling.predict_tiled(pipeline, image, 128, tile_size=128, **knobs)
    channels = 1 if modality == "depth" else 3
    assert tiled.prediction.shape == single.prediction.shape == (targets, 100, 150, channels)
    assert np.ptp(single.prediction) > 0.1  # a non-trivial prediction
    np.testing.assert_allclose(tiled.prediction, single.prediction, rtol=0, atol=32 * EPS)


def test_bad_tiling_options_are_refused(depth):
    _, pipeline = depth
    cases = [
        (dict(resolution=60), "multiple of 8 and at least processing_resolution 32"),
        (dict(resolution=24), "multiple of 8 and at least processing_resolution 32"),
        (dict(processing_resolution=0), "positive multiple of 8"),
        (dict(tile_size=20), "tile_size that is a positive multiple of 8"),
        (dict(overlap=32), "0 <= overlap < tile_size 32"),
        (dict(overlap=4), "overlap that is a multiple of 8"),
        (dict(strength=0.0), "0 < strength <= 1"),
        (dict(strength=0.2, num_inference_steps=4), "leaves no step to run; raise num_inference_steps to at least 5"),
    ]
    for change, message in cases:
        kwargs = {**dict(resolution=64, processing_resolution=32, num_inference_steps=2), **change}
        with pytest.raises(ValueError, match=message):
            tiling.predict_tiled(pipeline, IMAGE, **kwargs)
    with pytest.raises(ValueError, match="one image .* batch of 2; call it per image"):
        tiling.predict_tiled(pipeline, np.stack([IMAGE, IMAGE]), 64, processing_resolution=32)


def test_the_cli_tiles_as_the_library_does_and_refuses_what_does_not_apply(depth, tmp_path):
    from launch import infer

    folder, pipeline = depth
    Image.fromarray(IMAGE).save(tmp_path / "coffee.png")
    base = ["--model", folder, "--input", str(tmp_path / "coffee.png"), "--output", str(tmp_path / "out"),
            "--processing-resolution", "32", "--steps", "2", "--batch-size", "4", "--compilation-cache", "off"]
    for extra, message in [(["--tiled-strength", "0.5"], "--tiled-strength only applies with --tiled-size"),
                           (["--tiled-size", "32"], "--tiled-size must be above --processing-resolution 32"),
                           (["--tiled-size", "64", "--ensemble", "2", "--uncertainty"], "--uncertainty does not apply"),
                           (["--tiled-size", "64", "--tiled-strength", "0.4"], "leaves no step to run")]:
        with pytest.raises(SystemExit, match=message):
            infer.main(base + extra)
    assert infer.main(base + ["--tiled-size", "64"]) == 0
    expected = tiling.predict_tiled(pipeline, IMAGE, 64, processing_resolution=32, num_inference_steps=2,
                                    batch_size=4)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "coffee.npy"), expected.prediction[0, ..., 0])
