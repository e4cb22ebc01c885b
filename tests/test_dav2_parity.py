"""Depth Anything V2 in JAX equals the official PyTorch model (random weights), end to end through infer_image."""

import functools

import jax
import numpy as np
import pytest
import skimage.data

import dav2_jax
from dav2_jax import convert_official
from dav2_jax.checkpoints import param_template
from dav2_jax.preprocess import network_size
from oracles import official_dav2, official_model

jax.config.update("jax_default_matmul_precision", "highest")


@functools.lru_cache(maxsize=2)
def _pair(encoder, max_depth):
    """(official torch model, our model, our params) sharing one random state dict."""
    ref = official_model(encoder, max_depth)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    model = dav2_jax.DepthAnythingV2(encoder, max_depth)
    return ref, model, convert_official.from_state_dict(sd, param_template(model))


def _official_infer(ref, rgb, input_size):
    """The official infer_image (which takes BGR) on our RGB photo."""
    return ref.infer_image(np.ascontiguousarray(rgb[..., ::-1]), input_size)


def _assert_close(ours, theirs, tol=1e-4):
    assert ours.shape == theirs.shape and ours.dtype == np.float32
    err = np.abs(ours - theirs).max() / np.ptp(theirs)
    assert err <= tol, f"max error {err:.2e} of the output range"


PHOTOS = {
    # astronaut is square: at input 518 the network sees 518x518, where the pos-embed is used as is.
    "astronaut": lambda: skimage.data.astronaut()[::4, ::4],
    "coffee": skimage.data.coffee,
}


def _case(encoder, mode, photo, input_size, slow=False):
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(encoder, {"relative": None, "metric": 20.0}[mode], photo, input_size, marks=marks,
                        id=f"{encoder}-{mode}-{input_size}")


# Every (encoder, mode, size) combination is specified; the default suite keeps the cheap ones so CI stays short
# on 2 cores, `pytest -m slow` runs the rest (ViT-L at 518 takes ~1 min per case here).
@pytest.mark.parametrize(
    "encoder,max_depth,photo,input_size",
    [
        _case("vits", "relative", "astronaut", 518),
        _case("vits", "relative", "coffee", 364),
        _case("vits", "metric", "astronaut", 518),
        _case("vits", "metric", "coffee", 364),
        _case("vitb", "relative", "astronaut", 518),
        _case("vitb", "metric", "coffee", 364),
        _case("vitb", "relative", "coffee", 364, slow=True),
        _case("vitb", "metric", "astronaut", 518, slow=True),
        _case("vitl", "metric", "coffee", 364),
        _case("vitl", "relative", "coffee", 364, slow=True),
        _case("vitl", "relative", "astronaut", 518, slow=True),
        _case("vitl", "metric", "astronaut", 518, slow=True),
    ],
)
def test_infer_image_matches_official(encoder, max_depth, photo, input_size):
    rgb = PHOTOS[photo]()
    ref, model, params = _pair(encoder, max_depth)
    theirs = _official_infer(ref, rgb, input_size)
    ours = dav2_jax.infer_image(model, params, rgb, input_size)
    _assert_close(ours, theirs)


def test_infer_image_matches_official_at_test_time_resolutions():
    rgb = skimage.data.chelsea()  # 300 x 451 → 518 x 784 at 518, 728 x 1092 at 728: sharper test-time inputs
    ref, model, params = _pair("vits", None)
    for input_size in (518, 728):
        _assert_close(dav2_jax.infer_image(model, params, rgb, input_size), _official_infer(ref, rgb, input_size))


def test_infer_batch_equals_one_by_one():
    ref, model, params = _pair("vits", None)
    rgb = skimage.data.coffee()
    batch = np.stack([rgb, rgb[::-1], rgb[:, ::-1]])
    out = dav2_jax.infer_batch(model, params, batch, 280)
    for image, got in zip(batch, out):
        np.testing.assert_allclose(got, dav2_jax.infer_image(model, params, image, 280), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_vitg_matches_official_at_small_input():
    rgb = skimage.data.coffee()
    ref, model, params = _pair("vitg", None)
    _assert_close(dav2_jax.infer_image(model, params, rgb, 140), _official_infer(ref, rgb, 140))


@pytest.mark.parametrize(
    "encoder,count",
    [("vits", 24_785_089), ("vitb", 97_470_785), ("vitl", 335_315_649), ("vitg", 1_258_132_225)],
)
def test_parameter_count_equals_official(encoder, count):
    template = param_template(dav2_jax.DepthAnythingV2(encoder))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(template)) == count


def test_state_dict_keys_and_shapes_equal_official():
    ref, model, params = _pair("vits", None)
    ours = convert_official.to_state_dict(params)
    theirs = ref.state_dict()
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value.numpy(), err_msg=key)


def test_network_input_size_follows_official_lower_bound_rule():
    resize = official_dav2().Resize(518, 518, resize_target=False, keep_aspect_ratio=True, ensure_multiple_of=14,
                             resize_method="lower_bound")
    for h, w in [(480, 640), (1080, 1920), (375, 1242), (3024, 4032), (240, 320), (400, 640), (518, 518), (37, 1000)]:
        nw, nh = resize.get_size(w, h)
        assert network_size(h, w, 518) == (nh, nw), (h, w)
