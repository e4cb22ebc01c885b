"""The DAv2 teacher task: random 518-style crops and flips, disparity targets, parameter groups, warm start."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from safetensors.numpy import save_file

import dav2_jax
from dav2_jax.convert_official import to_state_dict
from dav2_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD
from dav2_jax.teacher import TeacherTask, random_crop


def _ramp_sample(height, width):
    """Depth 1 + x (metres) and an image whose red channel encodes x, so crops and flips can be read back."""
    x = np.arange(width, dtype=np.float32)
    depth = np.broadcast_to(1.0 + x, (height, width)).copy()
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (x * 4).astype(np.uint8)
    return {"image": image, "depth": depth, "valid": np.ones((height, width), bool), "name": "ramp"}


def test_random_crop_takes_every_offset_and_flips_half_the_time_keeping_image_and_depth_aligned():
    sample = _ramp_sample(28, 56)
    lefts, flips = set(), 0
    for seed in range(200):
        out = random_crop(sample, 28, np.random.default_rng(seed))
        row = out["depth"][0]
        flipped = row[0] > row[-1]
        flips += flipped
        left = int((row[-1] if flipped else row[0]) - 1)
        lefts.add(left)
        expected = 1.0 + np.arange(left, left + 28)
        np.testing.assert_array_equal(row, expected[::-1] if flipped else expected)
        red = out["image"][0, :, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
        np.testing.assert_allclose(red * 255, (row - 1) * 4, atol=1e-4)
    assert lefts == set(range(29)) and 70 < flips < 130


def test_centre_crop_without_rng_is_deterministic_and_unflipped():
    out = random_crop(_ramp_sample(28, 56), 28, None)
    np.testing.assert_array_equal(out["depth"][0], 1.0 + np.arange(14, 42))
    assert out["image"].shape == (28, 28, 3) and out["image"].dtype == np.float32


def test_small_images_are_upscaled_to_the_crop_with_nearest_depth_and_bicubic_image():
    # Short side 14 < crop 28: x2 to 28 x 40, then the width rounds to a multiple of 14 (official lower_bound rule).
    sample = _ramp_sample(14, 20)
    out = random_crop(sample, 28, None)
    cols = np.floor(np.arange(42) * 20 / 42).astype(int)[7:35]
    np.testing.assert_array_equal(out["depth"][0], 1.0 + cols)  # nearest: only depths that exist in the input
    assert out["valid"].all()


def test_invalid_nan_and_zero_depth_are_masked_out_and_zeroed():
    sample = _ramp_sample(28, 28)
    sample["depth"][0, 0] = np.nan
    sample["depth"][1, 1] = 0.0
    sample["valid"][2, 2] = False
    out = random_crop(sample, 28, None)
    assert not out["valid"][0, 0] and not out["valid"][1, 1] and not out["valid"][2, 2]
    assert out["valid"].sum() == 28 * 28 - 3
    assert out["depth"][0, 0] == 0 and np.isfinite(out["depth"]).all()


def test_crop_must_be_a_patch_multiple():
    with pytest.raises(ValueError, match="multiple of 14"):
        random_crop(_ramp_sample(30, 30), 30, None)


def _batch(task, n=2, size=28, seed=0):
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        depth = rng.uniform(1.0, 10.0, (size, size)).astype(np.float32)
        image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        examples.append(task.prepare({"image": image, "depth": depth, "valid": depth > 2.0}, rng))
    return {k: jnp.stack([e[k] for e in examples]) for k in examples[0]}


def test_loss_targets_inverse_depth_up_to_scale_and_shift_on_valid_pixels():
    task = TeacherTask("vits", crop=28)
    batch = _batch(task)
    disparity = jnp.where(batch["valid"], 1.0 / jnp.where(batch["valid"], batch["depth"], 1.0), 0.0)
    # A power-of-two scale is exact in float32, so the normalised maps agree bit for bit; garbage off the mask.
    task.predict = lambda params, frozen, b: 4.0 * disparity + jnp.where(b["valid"], 0.0, 7.0)
    loss, parts = task.loss(None, {}, batch, None, 0, {})
    assert float(loss) == 0.0 and set(parts) == {"ssi", "gm"}
    # Any scale and shift: zero up to float32 rounding of the normalised maps (~1e-7 per pixel, 17 mean terms).
    task.predict = lambda params, frozen, b: 3.0 * disparity + 0.5
    assert float(task.loss(None, {}, batch, None, 0, {})[0]) < 1e-4
    task.predict = lambda params, frozen, b: b["depth"]  # depth instead of disparity: wrong ordering
    assert float(task.loss(None, {}, batch, None, 0, {})[0]) > 0.5


def test_init_params_carry_logical_names_and_split_into_encoder_and_decoder_groups():
    task = TeacherTask("vits", crop=28)
    boxed, frozen = jax.eval_shape(task.init, jax.random.key(0), _batch(task, 1))
    assert frozen == {}
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert all(isinstance(leaf, nn.LogicallyPartitioned) for leaf in leaves)
    labels = task.param_groups(nn.unbox(boxed))
    assert set(jax.tree.leaves(labels["pretrained"])) == {"encoder"}
    assert set(jax.tree.leaves(labels["depth_head"])) == {"decoder"}
    count = lambda t: sum(x.size for x in jax.tree.leaves(t))
    assert count(nn.unbox(boxed)["pretrained"]) == 22_056_576  # the official ViT-S encoder


def _random_params(init, *args, seed):
    """Parameters of the right shapes filled with numpy normals (much cheaper here than compiling the init)."""
    rng = np.random.default_rng(seed)
    shapes = nn.unbox(jax.eval_shape(init, jax.random.key(0), *args))
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _same(a, b):
    return jax.tree.all(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b))


def test_dinov2_init_replaces_the_encoder_and_keeps_the_fresh_head(tmp_path):
    task = TeacherTask("vits", crop=28)
    fresh = _random_params(task.init, _batch(task, 1), seed=2)[0]
    dinov2 = _random_params(task.init, _batch(task, 1), seed=3)[0]["pretrained"]
    # The official DINOv2 layout: the DAv2 encoder keys without their `pretrained.` prefix.
    state = to_state_dict({"pretrained": dinov2})
    save_file({k[len("pretrained."):]: v for k, v in state.items()}, str(tmp_path / "dinov2.safetensors"))
    task = TeacherTask("vits", crop=28, dinov2_init=str(tmp_path / "dinov2.safetensors"))
    params = task.warm_start(fresh)
    assert _same(params["pretrained"], dinov2) and _same(params["depth_head"], fresh["depth_head"])


def test_init_from_a_depth_anything_checkpoint_sets_every_weight(tmp_path):
    model = dav2_jax.DepthAnythingV2("vits")
    source = _random_params(model.init, jnp.zeros((1, 14, 14, 3)), seed=1)["params"]
    dav2_jax.save(model, {"params": source}, str(tmp_path / "ckpt"), format="jax")
    task = TeacherTask("vits", crop=28, init_from=str(tmp_path / "ckpt"))
    fresh = _random_params(task.init, _batch(task, 1), seed=2)[0]
    params = task.warm_start(fresh)
    assert _same(params, source)
    with pytest.raises(ValueError, match="holds a vits model but the task trains vitb"):
        TeacherTask("vitb", crop=28, init_from=str(tmp_path / "ckpt")).warm_start(fresh)
    with pytest.raises(ValueError, match="not both"):
        TeacherTask("vits", dinov2_init="a.pth", init_from="b.pth")
