"""`launch/sample_grids.py`: what the sample pictures show for each prediction kind, and where each tile lands."""

import io
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import pytest
from PIL import Image

from launch import loop, sample_grids, tasks
from launch.data import pipeline, synthetic
from launch.data.sources import SyntheticScenes

EPS = np.finfo(np.float64).eps


def _scenes(n=2, size=28):
    samples = [synthetic.generate(5, i, size, size) for i in range(n)]
    return {k: np.stack([s[k] for s in samples]) for k in ("image", "depth", "valid", "normals", "albedo")}


def _tile(grid, row, column, size):
    """Tile (row, column) of a grid of size x size inputs, shrunk back by the enlargement factor."""
    scale = max(1, math.ceil(sample_grids.MIN_TILE / size))
    side = size * scale
    top = sample_grids.HEADER + row * (side + sample_grids.GAP)
    left = column * (side + sample_grids.GAP)
    return grid[top : top + side : scale, left : left + side : scale]


@pytest.mark.parametrize(
    "kind, make, shift",
    [
        ("disparity", lambda d: 2.0 / d + 3.0, 1.5),  # any positive affine map of the disparity; undone by +1.5
        ("depth", lambda d: 0.25 * d - 1.0, 4.0),  # any positive affine map of the depth; undone by +4
        ("metric", lambda d: d, 0.0),
    ],
)
def test_an_exact_prediction_is_drawn_with_the_ground_truths_values(kind, make, shift):
    s = _scenes(1)
    depth, valid = s["depth"][0].astype(np.float64), s["valid"][0]
    pred = np.where(valid, make(np.where(valid, depth, 1.0)), 0.0)
    shown, truth = sample_grids.depth_for_display(kind, pred, depth, valid, 1e-3, 1e3)
    assert np.array_equal(np.isnan(truth), ~valid)
    expected = 1.0 / depth[valid] if kind == "disparity" else depth[valid]
    np.testing.assert_array_equal(truth[valid], expected)
    # a float64 least-squares fit over n pixels, then s·pred + t: rounding of a few eps·sqrt(n) on terms as large
    # as max|value| + |t| (the sum cancels down to the value)
    bound = 16 * EPS * math.sqrt(valid.sum()) * (np.abs(expected).max() + shift)
    np.testing.assert_allclose(shown[valid], expected, rtol=0, atol=bound)


def test_metric_predictions_keep_their_scale_and_are_clipped_to_the_range():
    s = _scenes(1)
    depth, valid = s["depth"][0], s["valid"][0]
    shown, _ = sample_grids.depth_for_display("metric", 2.0 * depth + 0.5, depth, valid, 1.0, 8.0)
    np.testing.assert_array_equal(shown, np.clip(2.0 * depth.astype(np.float64) + 0.5, 1.0, 8.0))


def test_colours_span_the_map_over_the_range_and_unlabelled_pixels_are_black():
    values = np.array([[2.0, 4.0, np.nan, 6.0, 10.0]])
    rgb = sample_grids.colour(values, 2.0, 6.0, "Spectral")
    lut = np.round(matplotlib.colormaps["Spectral"]([0.0, 0.5, 1.0])[:, :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(rgb[0, [0, 1, 3]], lut)
    np.testing.assert_array_equal(rgb[0, 2], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 4], lut[2])  # beyond the range: clipped to its end


def test_disparity_grid_puts_input_prediction_and_ground_truth_side_by_side():
    s = _scenes(2)
    pred = np.where(s["valid"], 1.0 / np.where(s["valid"], s["depth"], 1.0), 0.0)
    grid = sample_grids.render("disparity", s["image"], pred, s["depth"], s["valid"])
    side = 28 * 5  # enlarged to at least MIN_TILE = 128 by an integer factor
    assert grid.dtype == np.uint8
    assert grid.shape == (sample_grids.HEADER + 2 * (side + sample_grids.GAP), 3 * side + 2 * sample_grids.GAP, 3)
    for row in range(2):
        np.testing.assert_array_equal(_tile(grid, row, 0, 28), s["image"][row])
        truth = _tile(grid, row, 2, 28)
        np.testing.assert_array_equal(truth[~s["valid"][row]], 0)
        disparity = 1.0 / s["depth"][row][s["valid"][row]]
        expected = sample_grids.colour(disparity[None], disparity.min(), disparity.max(), "Spectral_r")[0]
        np.testing.assert_array_equal(truth[s["valid"][row]], expected)
        # an exact prediction looks like the ground truth wherever there is one
        prediction = _tile(grid, row, 1, 28)
        close = np.abs(prediction.astype(int) - truth.astype(int)).max(-1) <= 1
        assert close[s["valid"][row]].all()


def test_normals_are_drawn_as_rgb_of_half_the_vector_plus_a_half():
    s = _scenes(1)
    flipped = s["normals"] * np.array([-1.0, 1.0, 1.0], np.float32)
    grid = sample_grids.render("normals", s["image"], flipped, s["normals"], s["valid"])
    as_rgb = lambda n: (np.clip((n + 1.0) * 0.5, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(_tile(grid, 0, 1, 28), as_rgb(flipped[0]))
    truth = _tile(grid, 0, 2, 28)
    np.testing.assert_array_equal(truth[s["valid"][0]], as_rgb(s["normals"][0])[s["valid"][0]])
    np.testing.assert_array_equal(truth[~s["valid"][0]], 0)


def test_intrinsics_get_one_prediction_and_ground_truth_pair_per_target():
    s = _scenes(1, size=140)  # no enlargement above MIN_TILE
    targets = np.stack([s["albedo"], np.repeat(s["depth"][..., None] / s["depth"].max(), 3, -1)], axis=1)
    properties = {"target_names": ["albedo", "other"], "albedo": {"prediction_space": "linear"},
                  "other": {"prediction_space": "srgb"}}
    grid = sample_grids.render("intrinsics", s["image"], targets, targets, np.ones((1, 140, 140), bool),
                               target_properties=properties)
    assert grid.shape == (sample_grids.HEADER + 140 + sample_grids.GAP, 5 * 140 + 4 * sample_grids.GAP, 3)
    assert sample_grids.labels("intrinsics", properties)[1:3] == ["albedo prediction", "albedo ground truth"]
    gamma = (np.clip(s["albedo"][0] ** (1 / 2.2), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(_tile(grid, 0, 1, 140), gamma)
    np.testing.assert_array_equal(_tile(grid, 0, 2, 140), gamma)
    np.testing.assert_array_equal(_tile(grid, 0, 3, 140), (targets[0, 1] * 255).astype(np.uint8))


def test_unknown_kinds_and_non_rgb_inputs_are_refused_with_what_was_expected():
    s = _scenes(1)
    with pytest.raises(ValueError, match=r"unknown prediction kind 'heat'.*'disparity'"):
        sample_grids.render("heat", s["image"], s["depth"], s["depth"], s["valid"])
    with pytest.raises(ValueError, match=r"expected RGB uint8 images \[N, H, W, 3\], got float32"):
        sample_grids.render("depth", s["image"].astype(np.float32), s["depth"], s["depth"], s["valid"])


class _PixelDisparity(nn.Module):
    @nn.compact
    def __call__(self, image):
        """image: [B, H, W, 3] in [0, 1] → disparity [B, H, W], one affine map of each pixel's colour."""
        kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", None))
        return nn.Dense(1, kernel_init=kernel, name="decoder")(image)[..., 0]


class _PixelTask:
    """A one-layer disparity regressor on generated scenes: just enough to learn visibly within a few steps."""

    prediction_kind = "disparity"

    def __init__(self, config=None):
        self.model = _PixelDisparity()

    def init(self, rng, example_batch):
        return self.model.init(rng, jnp.asarray(example_batch["image"]))["params"], {}

    def predict(self, params, frozen, batch, rng=None):
        return self.model.apply({"params": params}, batch["image"])

    def input_images(self, batch):
        return np.round(np.asarray(batch["image"]) * 255).astype(np.uint8)

    def loss(self, params, frozen, batch, rng, step=None, targets=None):
        valid = batch["valid"]
        disparity = jnp.where(valid, 1.0 / jnp.where(valid, batch["depth"], 1.0), 0.0)
        return jnp.sum(jnp.where(valid, self.predict(params, frozen, batch) - disparity, 0.0) ** 2) / valid.sum(), {}

    def prepare(self, sample, rng):
        return {"image": (sample["image"] / 255.0).astype(np.float32), "depth": sample["depth"],
                "valid": sample["valid"]}

    def param_groups(self, params):
        return jax.tree.map(lambda _: "decoder", params)

    def logical_axis_rules(self, sharding):
        return ()


def test_each_evaluation_writes_a_picture_whose_predictions_change_as_the_model_learns(tmp_path):
    from test_loop import toy_config
    from test_tensorboard_log import _read

    config = toy_config(**{"total_steps": 4, "eval_every": 2, "checkpoint_every": 4, "optimizer.lr": {"decoder": 0.3}})
    config.eval = dict(source=dict(reader="synthetic", num_samples=2, height=28, width=28, seed=9), batch_size=2,
                       num_samples=2, min_depth=1e-3, max_depth=1e3, num_images=2)
    task = _PixelTask()
    scenes = SyntheticScenes(16, 28, 28, seed=0)
    iterator = pipeline.train_iterator(pipeline.mixture([scenes], [1.0], 0), task.prepare, 0, 8, read_threads=0)
    loop.train(config, task, iterator, pipeline.example_batch(scenes, task.prepare), tmp_path,
               evaluate=tasks.build_evaluate(config, task), devices=jax.devices()[:1])
    pictures = [np.asarray(Image.open(tmp_path / "samples" / f"{step}.png")) for step in (0, 2, 4)]
    side = 28 * 5 + sample_grids.GAP
    for picture in pictures:
        assert picture.shape == (sample_grids.HEADER + 2 * side, 3 * side - sample_grids.GAP, 3)
    for row in range(2):
        inputs, predictions, truths = zip(*[[_tile(p, row, c, 28) for c in range(3)] for p in pictures])
        assert all(np.array_equal(x, inputs[0]) for x in inputs) and all(np.array_equal(x, truths[0]) for x in truths)
        assert not np.array_equal(predictions[0], predictions[1]) and not np.array_equal(predictions[1], predictions[2])
    logged = _read(tmp_path / "tensorboard").Images("samples")
    assert [image.step for image in logged] == [0, 2, 4]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(logged[-1].encoded_image_string))), pictures[-1])


def test_the_teachers_input_images_are_the_rgb_it_was_given():
    from dav2_jax.teacher import TeacherTask

    task = TeacherTask("vits", crop=28)
    sample = synthetic.generate(3, 0, 28, 28)  # already the crop size: no resize
    batch = {k: v[None] for k, v in task.prepare(sample, None).items()}
    np.testing.assert_array_equal(task.input_images(batch)[0], sample["image"])


def test_a_task_without_input_images_is_told_to_add_it_or_turn_the_pictures_off():
    class NoPictures:
        prediction_kind = "disparity"

        def predict(self, params, frozen, batch, rng):
            return batch["depth"]

    config = ml_collections.ConfigDict(dict(task="no_pictures", eval_every=1, seed=0, eval=dict()))
    with pytest.raises(ValueError, match=r"needs input_images\(batch\).*--config.eval.num_images=0"):
        tasks.build_evaluate(config, NoPictures())
