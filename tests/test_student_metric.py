"""The student (`dav2_student`) and metric (`dav2_metric`) tasks on the real ViT-S: losses, frozen and warm weights.

Small sizes (28 x 28 crops, batch 2) keep these cheap; the mesh equivalence and exact resume on the same tasks
are in tests/test_student_metric_mesh.py (marked slow).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import unbox
from jax.sharding import NamedSharding, PartitionSpec

import dav2_jax
from dav2_jax.losses import depth_loss, feature_alignment_loss, silog_loss
from dav2_jax.metric import MetricTask
from dav2_jax.student import StudentTask

jax.config.update("jax_default_matmul_precision", "highest")
CROP = 28
F32 = float(np.finfo(np.float32).eps)


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
    """A random-weight relative ViT-S saved as a dav2_jax folder: the feature model and encoder source."""
    model = dav2_jax.DepthAnythingV2("vits")
    params = jax.device_get(unbox(jax.jit(model.init)(jax.random.key(7), jnp.zeros((1, CROP, CROP, 3)))))
    path = str(tmp_path_factory.mktemp("relative") / "vits")
    dav2_jax.save(model, params, path, format="jax")
    return path, params["params"]


def _batch(seed, key="disparity"):
    rng = np.random.default_rng(seed)
    batch = {"image": rng.normal(size=(2, CROP, CROP, 3)).astype(np.float32),
             key: rng.uniform(0.05, 30.0, (2, CROP, CROP)).astype(np.float32),
             "valid": rng.uniform(size=(2, CROP, CROP)) > 0.1}
    return {k: jnp.asarray(v) for k, v in batch.items()}


def _one_device():
    return NamedSharding(jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",)), PartitionSpec())


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=_one_device()), unbox(tree))


def _student(relative_run, **kwargs):
    task = StudentTask("vits", crop=CROP, feature_teacher=relative_run[0], **kwargs)
    batch = _batch(0)
    params, frozen = jax.eval_shape(task.init, jax.random.key(0), batch)
    frozen = task.load_frozen(_abstract(frozen))
    return task, params, frozen, batch


def test_student_frozen_encoder_is_read_into_the_requested_layout(relative_run):
    _, _, frozen, _ = _student(relative_run)
    want = relative_run[1]["pretrained"]
    for got, expected in zip(jax.tree.leaves(frozen["dinov2"]), jax.tree.leaves(want), strict=True):
        assert got.sharding.is_equivalent_to(_one_device(), got.ndim)
        np.testing.assert_array_equal(np.asarray(got), expected)


def test_student_loss_is_trimmed_depth_loss_plus_weighted_feature_alignment(relative_run):
    task, _, frozen, batch = _student(relative_run, feature_weight=0.5, encoder_from=relative_run[0])
    params = unbox(jax.jit(task.model.init)(jax.random.key(3), batch["image"]))["params"]
    same = task.warm_start(params)  # the frozen model's encoder

    @jax.jit
    def reference(params):
        """The depth loss on the pseudo labels and the alignment of the last block's tokens, term by term."""
        pred = task.model.apply({"params": params}, batch["image"])
        depth, _ = depth_loss(pred, batch["disparity"], batch["valid"], gm_weight=2.0, trim=0.1)
        student = task.model.apply({"params": params}, batch["image"], method="encoder_features")[-1]
        frozen_tokens = task.model.apply({"params": same}, batch["image"], method="encoder_features")[-1]
        return depth, feature_alignment_loss(student, frozen_tokens, 0.85)

    loss = jax.jit(task.loss)
    # same encoder as the frozen model: every token has cosine 1 > 0.85, so the alignment term is exactly 0
    value, metrics = loss(same, frozen, batch, jax.random.key(0))
    depth, _ = reference(same)
    assert float(metrics["feature"]) == 0.0
    assert float(value) == pytest.approx(float(depth), rel=64 * F32)
    # a random encoder: 1 - mean cosine over the tokens below the margin, weighted 0.5
    value, metrics = loss(params, frozen, batch, jax.random.key(0))
    depth, feature = reference(params)
    assert 0.0 < float(metrics["feature"]) == pytest.approx(float(feature), rel=64 * F32)
    assert float(value) == pytest.approx(float(depth) + 0.5 * float(feature), rel=64 * F32)


def test_student_without_a_feature_model_is_refused():
    with pytest.raises(ValueError, match="feature_weight=0"):
        StudentTask("vits", crop=CROP)
    task = StudentTask("vits", crop=CROP, feature_weight=0.0)
    assert jax.eval_shape(task.init, jax.random.key(0), _batch(0))[1] == {}


def test_metric_loss_is_silog_on_depths_within_range_and_head_is_bounded(relative_run):
    task = MetricTask("vits", max_depth=20.0, min_depth=0.5, crop=CROP, encoder_from=relative_run[0])
    batch = _batch(1, "depth")
    fresh = unbox(jax.jit(task.model.init)(jax.random.key(4), batch["image"]))["params"]
    params = task.warm_start(fresh)
    for got, want in zip(jax.tree.leaves(params["pretrained"]), jax.tree.leaves(relative_run[1]["pretrained"])):
        np.testing.assert_array_equal(np.asarray(got), want)
    for got, want in zip(jax.tree.leaves(params["depth_head"]), jax.tree.leaves(fresh["depth_head"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # the head stays fresh
    value, metrics = jax.jit(task.loss)(params, {}, batch, jax.random.key(0))
    pred = task.predict(params, {}, batch)
    assert float(pred.min()) > 0.0 and float(pred.max()) < 20.0
    depth = batch["depth"]
    in_range = batch["valid"] & (depth >= 0.5) & (depth <= 20.0)
    assert 0 < int(in_range.sum()) < int(batch["valid"].sum())  # the range test removes some pixels
    want = silog_loss(pred, depth, in_range, 0.5)
    assert float(value) == pytest.approx(float(want), rel=64 * F32)
    assert task.prediction_kind == "metric" and task.model.max_depth == 20.0


def _config(name, **overrides):
    import runpy
    from pathlib import Path

    config = runpy.run_path(str(Path(__file__).resolve().parents[1] / "configs" / f"{name}.py"))["get_config"]()
    config.update_from_flattened_dict(overrides)
    return config


@pytest.mark.parametrize("size", ["s", "b", "l", "g"])
def test_student_configs_are_the_papers_recipe_and_build_their_task(size):
    from launch import tasks, train

    config = _config(f"student_{size}", **{"model.dinov2_init": "dinov2.pth"})
    train.check_config(config)
    task = tasks.build_task(config)
    assert isinstance(task, StudentTask) and task.model.encoder == "vit" + size
    assert (config.batch_size, config.total_steps, task.crop, task.trim) == (192, 480_000, 518, 0.1)
    assert dict(config.optimizer.lr) == {"encoder": 5e-6, "decoder": 5e-5}
    weights = {name: entry.weight for name, entry in config.data.sources.items()}
    assert {entry.reader for entry in config.data.sources.values()} == {"pseudo_labeled"}
    assert weights == {"bdd100k": 8.2e6, "google_landmarks": 4.1e6, "imagenet21k": 13.1e6, "lsun": 9.8e6,
                       "objects365": 1.7e6, "open_images_v7": 7.8e6, "places365": 6.5e6, "sa1b": 11.1e6}
    assert task.feature_teacher == "dinov2.pth" and task.feature_margin == 0.85
    if size == "g":
        assert (config.sharding, config.model.dtype, config.model.remat) == ("fsdp", "bfloat16", "dots")


@pytest.mark.parametrize("name, encoder, max_depth", [
    ("metric_hypersim_s", "vits", 20.0), ("metric_hypersim_b", "vitb", 20.0), ("metric_hypersim_l", "vitl", 20.0),
    ("metric_vkitti_s", "vits", 80.0), ("metric_vkitti_b", "vitb", 80.0), ("metric_vkitti_l", "vitl", 80.0),
])
def test_metric_configs_are_the_released_recipe_and_build_their_task(name, encoder, max_depth):
    from launch import tasks, train

    config = _config(name)
    train.check_config(config)
    task = tasks.build_task(config)
    assert isinstance(task, MetricTask)
    assert (task.model.encoder, task.model.max_depth, task.min_depth, task.silog_lambda) == (encoder, max_depth,
                                                                                              1e-3, 0.5)
    assert config.batch_size == 32 and dict(config.optimizer.lr) == {"encoder": 5e-6, "decoder": 5e-5}
    assert (config.optimizer.name, config.optimizer.weight_decay, config.schedule.kind, config.schedule.power,
            config.schedule.warmup_steps) == ("adamw", 0.01, "poly", 0.9, 0)
    if max_depth == 80.0:
        assert config.total_steps == 120 * 19_559 // 32


def test_demo_configs_read_the_demo_runs():
    student, metric = _config("demo_student"), _config("demo_metric")
    assert student.data.sources.to_dict() == {"pseudo": {"reader": "pseudo_labeled", "root": "runs/demo_pseudo",
                                                     "weight": 1.0}}
    assert student.model.feature_teacher == "runs/demo" and metric.model.encoder_from == "runs/demo"
