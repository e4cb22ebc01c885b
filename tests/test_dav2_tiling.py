"""Tiled high-resolution Depth Anything V2 inference (`dav2_jax.tiling`)."""

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

import dav2_jax
from dav2_jax import tiling
from dav2_jax.preprocess import preprocess

EPS = np.finfo(np.float32).eps


def test_tiles_cover_the_grid_with_the_asked_overlap():
    for length, tile, overlap in [(518, 518, 128), (700, 518, 128), (1036, 518, 128), (2000, 518, 0), (300, 140, 35)]:
        starts = tiling.tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(length, tile)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    w = tiling.blend_weights(10, 3)
    np.testing.assert_allclose(w, [0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25])


def test_with_a_local_network_the_tiles_reassemble_the_single_pass_exactly():
    """A per-pixel "network" has no context, so each tile's output is exactly the crop of the single pass: fitting
    gives scale 1 and shift 0 and blending equal values returns them; what remains is float rounding."""
    image = skimage.data.coffee()[::3, ::3]  # 134 x 200
    run = lambda x: x[..., 0] * 0.5 + x[..., 1] * 0.25 + 3.0  # noqa: E731 (a stand-in network)
    tiled = tiling.infer_tiled(None, None, image, resolution=70, input_size=70, overlap=20, run=run)
    single = dav2_jax.preprocess.resize_depth(run(preprocess(image, 70)[None]), image.shape[:2])[0]
    np.testing.assert_allclose(tiled, single, rtol=8 * EPS, atol=0)


def test_bad_tiling_options_are_refused():
    image = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple of 14 and at least input_size"):
        tiling.infer_tiled(None, None, image, resolution=100, input_size=140, run=lambda x: x[..., 0])
    with pytest.raises(ValueError, match="overlap < input_size"):
        tiling.infer_tiled(None, None, image, resolution=280, input_size=140, overlap=140, run=lambda x: x[..., 0])


@pytest.mark.slow
def test_the_cli_tiles_as_the_library_does(tmp_path):
    """Slow: compiles the ViT-S for the global pass and the tiles twice (the CLI's mesh placement, then the
    library's default one)."""
    from launch import infer

    model = dav2_jax.DepthAnythingV2("vits", attention_impl="heads_first")
    params = model.init(jax.random.key(1), np.zeros((1, 28, 28, 3), np.float32))
    dav2_jax.save(model, params, str(tmp_path / "model"), format="jax")
    image = skimage.data.coffee()[::6, ::6]  # 67 x 100
    Image.fromarray(image).save(tmp_path / "coffee.png")
    argv = ["--model", str(tmp_path / "model"), "--input", str(tmp_path / "coffee.png"), "--output",
            str(tmp_path / "out"), "--input-size", "28", "--tiled-size", "56", "--batch-size", "1",
            "--attention", "heads_first", "--compilation-cache", "off"]
    assert infer.main(argv) == 0
    model, params = dav2_jax.load(str(tmp_path / "model"), attention_impl="heads_first")
    expected = tiling.infer_tiled(model, params, image, resolution=56, input_size=28, batch_size=1)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "coffee.npy"), expected)
