"""Marigold pre/post-processing equals diffusers' MarigoldImageProcessor and torch's F.interpolate."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor

from marigold_jax import image_processing as ip


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2)))


def _nhwc(x):
    return x.numpy().transpose(0, 2, 3, 1)


SIZES = [((13, 21), (5, 8)), ((7, 10), (19, 23)), ((16, 9), (16, 31)), ((31, 17), (12, 17))]


@pytest.mark.parametrize("mode", ip.RESAMPLE_METHODS)
@pytest.mark.parametrize("antialias", [False, True])
def test_interpolation_matrices_equal_torch_interpolate(mode, antialias):
    rng = np.random.default_rng(0)
    for size_in, size_out in SIZES:
        x = rng.uniform(-1, 1, (2, *size_in, 3)).astype(np.float32)
        torch_aa = antialias and mode in ("bilinear", "bicubic")
        expected = _nhwc(F.interpolate(_nchw(x), size_out, mode=mode, antialias=torch_aa))
        mh = ip.interpolation_matrix(size_in[0], size_out[0], mode, antialias)
        mw = ip.interpolation_matrix(size_in[1], size_out[1], mode, antialias)
        got = np.einsum("oh,pw,nhwc->nopc", mh.astype(np.float64), mw.astype(np.float64), x)
        np.testing.assert_allclose(got, expected, atol=2e-6)


@pytest.mark.parametrize("mode,antialias", [("bilinear", True), ("bicubic", False), ("area", False)])
def test_jitted_resize_equals_torch_interpolate(mode, antialias):
    x = np.random.default_rng(1).uniform(-1, 1, (2, 13, 21, 3)).astype(np.float32)
    expected = F.interpolate(_nchw(x), (5, 8), mode=mode, antialias=antialias)
    np.testing.assert_allclose(np.asarray(ip.resize(x, (5, 8), mode, antialias)), _nhwc(expected), atol=2e-6)


@pytest.mark.parametrize(
    "resolution,mode,shape",
    [
        (0, "bilinear", (1, 29, 35, 3)),
        (16, "bilinear", (2, 40, 17, 3)),
        (24, "bicubic", (1, 29, 35, 3)),
        (40, "bilinear", (1, 29, 35, 3)),
        (16, "area", (1, 29, 35, 3)),
        (24, "nearest-exact", (2, 40, 17, 3)),
    ],
)
def test_preprocess_equals_diffusers(resolution, mode, shape):
    images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    expected, padding, original = MarigoldImageProcessor(vae_scale_factor=8).preprocess(images, resolution, mode)
    got, got_padding = ip.preprocess(images, resolution, mode)
    assert got_padding == padding and shape[1:3] == tuple(original)
    np.testing.assert_allclose(np.asarray(got), _nhwc(expected), atol=2e-6)
    unpadded = MarigoldImageProcessor.unpad_image(expected, padding)
    np.testing.assert_allclose(np.asarray(ip.unpad(got, got_padding)), _nhwc(unpadded), atol=2e-6)


@pytest.mark.parametrize("size", [(32, 48), (5, 77)])
def test_resize_to_max_edge_equals_diffusers(size):
    x = np.random.default_rng(2).uniform(0, 1, (1, *size, 1)).astype(np.float32)
    expected = MarigoldImageProcessor.resize_to_max_edge(_nchw(x), 24, "nearest-exact")
    np.testing.assert_allclose(np.asarray(ip.resize_to_max_edge(x, 24, "nearest-exact")), _nhwc(expected), atol=0)


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((8, 8), np.uint8), r"uint8 \[8, 8\]"),
        (np.zeros((8, 8, 4), np.uint8), r"uint8 \[8, 8, 4\]"),
        (np.zeros((8, 8, 3), np.float32), r"float32 \[8, 8, 3\]"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], "one size"),
    ],
)
def test_wrong_image_is_refused_naming_dtype_and_shape(bad, message):
    with pytest.raises(ValueError, match=message):
        ip.check_rgb_uint8(bad)


def test_extreme_aspect_ratio_is_refused():
    with pytest.raises(ValueError, match="aspect ratio"):
        ip.max_edge_size(1, 77, 24)


def test_images_are_accepted_one_batched_or_listed():
    one = np.random.default_rng(3).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert ip.check_rgb_uint8(one).shape == (1, 5, 6, 3)
    assert ip.check_rgb_uint8([one, one]).shape == (2, 5, 6, 3)
    assert ip.check_rgb_uint8(np.stack([one] * 3)).shape == (3, 5, 6, 3)
