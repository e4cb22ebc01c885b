"""What the loop promises a task beyond plain training: truly frozen learning-rate-0 groups, the step and EMA
target networks seen by the loss, frozen sub-models read straight into their shardings, warm start on fresh runs
only, and generic held-out evaluation by prediction kind."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from test_loop import FEATURES, ToyTask, _batch, _setup, toy_config, toy_iterator

from launch import loop, tasks


class _PoisonedEncoderTask(ToyTask):
    """ToyTask plus a term whose gradient with respect to the encoder kernel is NaN (d/dk sqrt(0 · k))."""

    def loss(self, params, frozen, batch, rng, step, targets):
        loss, metrics = super().loss(params, frozen, batch, rng, step, targets)
        return loss + jnp.sum(jnp.sqrt(params["encoder"]["kernel"] * 0.0)), metrics


def test_zero_learning_rate_group_gets_no_gradient_and_adds_nothing_to_the_norm():
    config = toy_config(**{"optimizer.lr": dict(encoder=0.0, decoder=1e-2)})
    task, setup = _setup(config, _PoisonedEncoderTask(dropout=0.0))
    key = jax.random.key(0)
    batch = _batch(task)
    state, frozen = setup.init(key, batch)
    params = jax.device_get(state.params)
    grads = jax.grad(lambda p: ToyTask.loss(task, p, frozen, batch, None, 0, {})[0])(params)
    trained_norm = optax.tree.norm({k: v for k, v in grads.items() if k != "encoder"})
    # Differentiating the encoder would make the norm NaN and the step would be skipped.
    state, metrics = setup.step(state, frozen, batch, key)
    assert int(metrics["skipped"]) == 0
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(trained_norm), rtol=1e-5)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["encoder"]), params["encoder"])


class _TargetTask(ToyTask):
    """Declares an EMA target network; the loss reports the step and the target's head kernel it was given."""

    def ema_targets(self):
        return {"target": 0.75}

    def loss(self, params, frozen, batch, rng, step, targets):
        loss, metrics = super().loss(params, frozen, batch, rng, step, targets)
        return loss, {**metrics, "seen_step": step, "seen_target": targets["target"]["head"]["kernel"]}


def test_loss_sees_the_step_and_an_ema_target_network_updated_after_each_step():
    task, setup = _setup(toy_config(), _TargetTask())
    key = jax.random.key(0)
    batch = _batch(task)
    state, frozen = setup.init(key, batch)
    target = jax.device_get(state.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.targets["target"]), target)
    assert jax.tree.leaves(state.targets["target"])[0] is not jax.tree.leaves(state.params)[0]
    for step in range(3):
        state, metrics = setup.step(state, frozen, batch, key)
        assert int(metrics["seen_step"]) == step
        np.testing.assert_allclose(np.asarray(metrics["seen_target"]), target["head"]["kernel"], rtol=1e-6, atol=1e-8)
        target = jax.tree.map(lambda t, p: 0.75 * t + 0.25 * p, target, jax.device_get(state.params))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
                     jax.device_get(state.targets["target"]), target)


class _LoadedFrozenTask(ToyTask):
    """Frozen weights come from `load_frozen` (0.25), never from `init`'s value (0.5); calls are counted."""

    def __init__(self, config=None):
        super().__init__(config, dropout=0.0)
        self.calls = {"load_frozen": [], "warm_start": 0}

    def load_frozen(self, abstract_frozen):
        self.calls["load_frozen"].append(abstract_frozen)
        spec = abstract_frozen["scale"]
        return {"scale": jax.make_array_from_callback(
            spec.shape, spec.sharding, lambda index: np.full(FEATURES, 0.25, np.float32)[index]
        )}

    def warm_start(self, params):
        self.calls["warm_start"] += 1
        return jax.tree.map(lambda x: x + 1.0, params)


def test_frozen_weights_are_loaded_into_their_shardings_and_warm_start_runs_on_fresh_runs_only(tmp_path):
    config = toy_config(**{"total_steps": 4, "checkpoint_every": 2})
    task = _LoadedFrozenTask()
    _, frozen = loop.train(config, task, toy_iterator(task, 8), _batch(task, 1), tmp_path, stop_after_steps=2)
    np.testing.assert_array_equal(jax.device_get(frozen["scale"]), np.full(FEATURES, 0.25))
    (abstract,) = task.calls["load_frozen"]
    assert abstract["scale"].shape == (FEATURES,) and abstract["scale"].sharding == frozen["scale"].sharding
    assert task.calls["warm_start"] == 1
    resumed = _LoadedFrozenTask()
    state, frozen = loop.train(config, resumed, toy_iterator(resumed, 8), _batch(resumed, 1), tmp_path)
    assert int(state.step) == 4 and len(resumed.calls["load_frozen"]) == 1 and resumed.calls["warm_start"] == 0
    np.testing.assert_array_equal(jax.device_get(frozen["scale"]), np.full(FEATURES, 0.25))


def test_target_networks_are_checkpointed_and_resume_exactly(tmp_path):
    config = toy_config(**{"total_steps": 4, "checkpoint_every": 2})
    whole, _ = loop.train(config, _TargetTask(), toy_iterator(_TargetTask(), 8), _batch(ToyTask(), 1),
                          tmp_path / "whole")
    loop.train(config, _TargetTask(), toy_iterator(_TargetTask(), 8), _batch(ToyTask(), 1), tmp_path / "cut",
               stop_after_steps=2)
    resumed, _ = loop.train(config, _TargetTask(), toy_iterator(_TargetTask(), 8), _batch(ToyTask(), 1),
                            tmp_path / "cut")
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.targets), jax.device_get(whole.targets))


class _NormalsOracle:
    """Predicts the ground-truth normals, or their mirror image in x when `mirror` (an error of 2·|asin(x)|)."""

    prediction_kind = "normals"

    def __init__(self, mirror=False):
        self.mirror = mirror

    def prepare(self, sample, rng):
        return {"normals": sample["normals"], "valid": sample["valid"]}

    def predict(self, params, frozen, batch, rng):
        return batch["normals"] * (jnp.array([-1.0, 1.0, 1.0]) if self.mirror else 1.0)


def test_evaluation_of_normals_reports_angular_errors_in_degrees():
    config = ml_collections.ConfigDict(dict(
        task="normals_oracle", eval_every=1, seed=0,
        eval=dict(source=dict(reader="synthetic", num_samples=2, height=28, width=28, seed=7), batch_size=2,
                  num_samples=2, min_depth=1e-3, max_depth=1000.0, num_images=0),
    ))
    put = lambda batch: {k: jnp.asarray(v) for k, v in batch.items()}
    exact, samples = tasks.build_evaluate(config, _NormalsOracle())(None, {}, put)
    assert samples is None  # config.eval.num_images = 0: no pictures, and no input_images needed
    assert exact["eval/mean_angle"] < 0.1 and exact["eval/within_11_25"] == 100.0
    source = tasks.build_source("eval", config.eval.source)
    mirrored, _ = tasks.build_evaluate(config, _NormalsOracle(mirror=True))(None, {}, put)
    x = [np.clip(source[i]["normals"][source[i]["valid"]][:, 0], -1, 1) for i in range(2)]
    expected = np.mean([np.mean(np.degrees(2 * np.arcsin(np.abs(xi)))) for xi in x])
    assert expected > 1 and mirrored["eval/mean_angle"] == pytest.approx(expected, rel=1e-3)


def test_a_task_without_prediction_kind_cannot_be_evaluated():
    config = ml_collections.ConfigDict(dict(task="toy", eval_every=5))
    with pytest.raises(ValueError, match="prediction_kind"):
        tasks.build_evaluate(config, ToyTask())
