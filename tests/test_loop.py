"""The shared training loop on a tiny regression task: optimizer groups, schedules, accumulation, EMA, NaN guard.

`ToyTask`, `ToySource` and `toy_config` are also used by test_mesh.py, test_checkpoint.py and test_train_cli.py
(in subprocesses, as `--config.task=test_loop:ToyTask`), so they stay importable and picklable.
"""

import json
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from launch import loop, optimizer
from launch.data import pipeline
from launch.data.sources import BadSample

FEATURES = 8


class ToySource:
    """`num_samples` samples {"x": [8] float32, "y": float32, "index": int}, a fixed function of the index.

    bad_every: indices divisible by it raise `BadSample`; delay: seconds each read takes (to slow a run down).
    """

    def __init__(self, num_samples=64, seed=0, bad_every=0, delay=0.0):
        self.num_samples = num_samples
        self.seed = seed
        self.bad_every = bad_every
        self.delay = delay

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        time.sleep(self.delay)
        if self.bad_every and index % self.bad_every == 0:
            raise BadSample(f"toy/{self.seed}/{index}.npy", "corrupt file")
        x = np.random.default_rng((self.seed, index)).normal(size=FEATURES).astype(np.float32)
        return {"x": x, "y": np.float32(np.sin(x.sum())), "index": index}


class ToyModel(nn.Module):
    hidden: int = 32

    @nn.compact
    def __call__(self, x):
        """x: [B, 8] → [B]."""
        init = lambda *names: nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)
        zeros = lambda *names: nn.with_logical_partitioning(nn.initializers.zeros, names)
        h = nn.Dense(self.hidden, kernel_init=init("embed", "mlp"), bias_init=zeros("mlp"), name="encoder")(x)
        h = nn.with_logical_constraint(jax.nn.gelu(h), ("batch", "mlp"))
        h = nn.Dense(FEATURES, kernel_init=init("mlp", "embed"), bias_init=zeros("embed"), name="decoder")(h)
        return nn.Dense(1, kernel_init=init("embed", None), name="head")(h)[:, 0]


class ToyTask:
    """Regression of y from x; `frozen` holds a fixed input scale; the loss uses its rng (random feature dropout)."""

    def __init__(self, config=None, dropout=0.1):
        self.model = ToyModel()
        self.dropout = dropout

    def init(self, rng, example_batch):
        params = self.model.init(rng, jnp.asarray(example_batch["x"]))["params"]
        frozen = {"scale": nn.with_logical_partitioning(lambda: jnp.full((FEATURES,), 0.5), ("embed",))()}
        return params, frozen

    def loss(self, params, frozen, batch, rng, step, targets):
        keep = jax.random.bernoulli(rng, 1.0 - self.dropout, batch["x"].shape) if self.dropout else 1.0
        pred = self.model.apply({"params": params}, batch["x"] * frozen["scale"] * keep)
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, {"sample_ids": batch["index"]}

    def prepare(self, sample, rng):
        noise = 0.0 if rng is None else rng.normal(scale=0.01)
        return {"x": sample["x"], "y": np.float32(sample["y"] + noise), "index": np.int32(sample["index"])}

    def param_groups(self, params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "encoder" if path[0].key == "encoder" else "decoder", params
        )

    def logical_axis_rules(self, sharding):
        return ()


def toy_config(**overrides):
    """A complete training config for ToyTask (fields as in configs/*.py); keyword overrides use a.b paths."""
    c = ml_collections.ConfigDict()
    c.task = "test_loop:ToyTask"
    c.seed = 0
    c.total_steps = 6
    c.batch_size = 8
    c.log_every = 1
    c.eval_every = 0
    c.checkpoint_every = 3
    c.keep_checkpoints = 2
    c.sharding = "dp"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adamw", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0, accumulate_steps=1,
            ema_decay=0.0, lr=dict(encoder=1e-3, decoder=1e-2),
        )
    )
    c.schedule = ml_collections.ConfigDict(
        dict(kind="cosine", warmup_steps=2, power=0.9, end_factor=0.0, decay_rate=0.5, decay_steps=10)
    )
    c.data = ml_collections.ConfigDict(
        dict(
            sources={"toy": dict(reader="test_loop:ToySource", weight=1.0, num_samples=40, seed=0, delay=0.0)},
            worker_count=0, read_threads=0, read_buffer=4, max_bad_fraction=0.01,
        )
    )
    return override(c, **overrides)


def override(config, **overrides):
    """`config` with fields set by keyword, their paths written a.b.c (as on the command line)."""
    for path, value in overrides.items():
        node = config
        *parents, leaf = path.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def toy_iterator(task, batch_size, num_samples=40, seed=0):
    dataset = pipeline.mixture([ToySource(num_samples)], [1.0], seed)
    return pipeline.train_iterator(dataset, task.prepare, seed, batch_size, read_threads=0)


def _batch(task, size=8):
    return jax.tree.map(jnp.asarray, next(toy_iterator(task, size)))


def _setup(config, task=None):
    task = task or ToyTask()
    return task, loop.prepare_training(config, task, _batch(task, 1), devices=jax.devices()[:1])


def _manual_grads(task, params, frozen, batch, key, step=0):
    rng = jax.random.fold_in(key, step)
    return jax.jit(jax.grad(lambda p: task.loss(p, frozen, batch, rng, step, {})[0]))(params)


def test_schedule_follows_warmup_then_closed_form_decay():
    base = dict(warmup_steps=4, power=0.9, end_factor=0.1, decay_rate=0.5, decay_steps=3)
    total = 14
    for kind, expected in {
        "constant": lambda t: 1.0,
        "poly": lambda t: (1 - t / 10) ** 0.9,
        "cosine": lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 10)),
        "exponential": lambda t: 0.5 ** (t / 3),
    }.items():
        factor = optimizer.schedule(ml_collections.ConfigDict(dict(kind=kind, **base)), total)
        got = [float(factor(s)) for s in range(total)]
        want = [(s + 1) / 4 * expected(0) for s in range(4)] + [expected(s - 4) for s in range(4, total)]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=kind)


def test_iter_exponential_is_marigolds_released_schedule():
    def released(n, total=25_000, final=0.01, warmup=100):  # Marigold's IterExponential lambda, restated
        if warmup > 0 and n < warmup:
            return n / warmup
        if n >= total:
            return final
        return math.exp((n - warmup) / (total - warmup) * math.log(final))

    sched = ml_collections.ConfigDict(dict(kind="iter_exponential", warmup_steps=100, final_ratio=0.01,
                                           decay_end=25_000))
    factor = optimizer.schedule(sched, 30_000)
    steps = [0, 1, 50, 99, 100, 101, 12_550, 24_999, 25_000, 29_999]
    np.testing.assert_allclose([float(factor(n)) for n in steps], [released(n) for n in steps],
                               rtol=16 * np.finfo(np.float32).eps, atol=0)  # exp of a float32 t * ln(0.01)
    assert float(factor(0)) == 0.0  # the first update uses lr 0, as released
    with pytest.raises(ValueError, match="final_ratio"):
        optimizer.schedule(ml_collections.ConfigDict(dict(kind="iter_exponential", warmup_steps=100,
                                                          final_ratio=0.0)), 1_000)


def test_each_parameter_group_moves_by_its_own_learning_rate():
    config = toy_config(**{"optimizer.name": "sgd", "optimizer.b1": 0.0, "optimizer.clip_norm": 0.0,
                           "optimizer.weight_decay": 0.0, "schedule.kind": "constant", "schedule.warmup_steps": 0})
    task, setup = _setup(config)
    key = jax.random.key(0)
    batch = _batch(task)
    state, frozen = setup.init(key, batch)
    before = jax.device_get(state.params)
    grads = _manual_grads(task, before, frozen, batch, key)
    state, _ = setup.step(state, frozen, batch, key)
    for name, lr in [("encoder", 1e-3), ("decoder", 1e-2), ("head", 1e-2)]:
        expected = jax.tree.map(lambda p, g: p - lr * g, before[name], grads[name])
        jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-9),
                     jax.device_get(state.params[name]), expected)


def test_zero_learning_rate_group_is_frozen_and_has_no_optimizer_state():
    config = toy_config(**{"optimizer.lr": dict(encoder=0.0, decoder=1e-2)})
    task, setup = _setup(config)
    key = jax.random.key(0)
    batch = _batch(task)
    state, frozen = setup.init(key, batch)
    encoder_before = jax.device_get(state.params["encoder"])
    adam_leaves = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    trained = sum(x.size for k, v in state.params.items() if k != "encoder" for x in jax.tree.leaves(v))
    assert adam_leaves == 2 * trained  # mu and nu for the trained groups only
    for _ in range(2):
        state, _ = setup.step(state, frozen, batch, key)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["encoder"]), encoder_before)
    assert not np.allclose(jax.device_get(state.params["decoder"]["kernel"]), 0)


def test_frozen_params_are_passed_to_the_loss_but_never_trained_nor_in_the_state():
    task, setup = _setup(toy_config())
    key = jax.random.key(0)
    state, frozen = setup.init(key, _batch(task))
    np.testing.assert_array_equal(jax.device_get(frozen["scale"]), np.full(FEATURES, 0.5))
    assert "scale" not in jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(state)[0])


def test_weight_decay_and_clipping_follow_adamw_with_global_norm_clip():
    config = toy_config(**{"schedule.kind": "constant", "schedule.warmup_steps": 0, "optimizer.clip_norm": 0.01})
    task, setup = _setup(config)
    key = jax.random.key(0)
    batch = _batch(task)
    state, frozen = setup.init(key, batch)
    params = jax.device_get(state.params)
    grads = _manual_grads(task, params, frozen, batch, key)
    reference = optax.chain(
        optax.clip_by_global_norm(0.01),
        optax.multi_transform(
            {lab: optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01,
                              mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
             for lab, lr in [("encoder", 1e-3), ("decoder", 1e-2)]},
            task.param_groups(params),
        ),
    )
    updates, _ = jax.jit(reference.update)(grads, reference.init(params), params)
    expected = optax.apply_updates(params, updates)
    state, _ = setup.step(state, frozen, batch, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), jax.device_get(state.params),
                 expected)


def test_non_finite_loss_skips_the_update_and_is_counted():
    task, setup = _setup(toy_config())
    key = jax.random.key(0)
    batch = _batch(task)
    state, frozen = setup.init(key, batch)
    before = jax.device_get(state.params)
    bad = dict(batch, x=batch["x"].at[0, 0].set(jnp.nan))
    state, metrics = setup.step(state, frozen, bad, key)
    assert int(metrics["skipped"]) == 1 and not np.isfinite(float(metrics["loss"]))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), before)
    state, metrics = setup.step(state, frozen, batch, key)
    assert int(state.step) == 2 and int(state.skipped) == 1 and np.isfinite(float(metrics["loss"]))
    assert not np.array_equal(jax.device_get(state.params["head"]["kernel"]), before["head"]["kernel"])


def test_gradient_accumulation_equals_one_big_batch():
    config = toy_config(**{"optimizer.name": "sgd", "optimizer.b1": 0.0, "optimizer.clip_norm": 0.0})
    # Without feature dropout the loss is a plain mean over examples, so equal micro-batches average to the batch.
    task = ToyTask(dropout=0.0)
    batch = _batch(task)
    key = jax.random.key(0)
    results = []
    for accumulate in (1, 2, 4):
        config.optimizer.accumulate_steps = accumulate
        _, setup = _setup(config, task)
        state, frozen = setup.init(key, batch)
        for _ in range(3):
            state, metrics = setup.step(state, frozen, batch, key)
        results.append((jax.device_get(state.params), float(metrics["loss"])))
    for params, loss in results[1:]:
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params, results[0][0])
        np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)


def test_ema_tracks_params_with_the_configured_decay():
    task, setup = _setup(toy_config(**{"optimizer.ema_decay": 0.9}))
    key = jax.random.key(0)
    batch = _batch(task)
    state, frozen = setup.init(key, batch)
    ema = jax.device_get(state.params)
    for _ in range(3):
        state, _ = setup.step(state, frozen, batch, key)
        ema = jax.tree.map(lambda e, p: 0.9 * e + 0.1 * p, ema, jax.device_get(state.params))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), jax.device_get(state.ema), ema)


def test_train_logs_step_loss_lr_and_speed_and_learns(tmp_path):
    config = toy_config(**{"total_steps": 40, "log_every": 5, "checkpoint_every": 20, "eval_every": 20})
    task = ToyTask()
    held_out = next(toy_iterator(task, 16, seed=1))

    def evaluate(params, frozen, put):
        batch = put(held_out)
        pred = task.model.apply({"params": params}, batch["x"] * frozen["scale"])
        return {"eval/loss": float(jnp.mean((pred - batch["y"]) ** 2))}, None

    loop.train(config, task, toy_iterator(task, 8), _batch(task, 1), tmp_path, evaluate=evaluate)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 35, 40]
    for r in train:
        assert {"step", "loss", "lr", "steps_per_sec", "lr/encoder", "lr/decoder", "grad_norm"} <= r.keys()
        assert r["steps_per_sec"] > 0 and r["lr"] == r["lr/decoder"]
    factor = optimizer.schedule(config.schedule, 40)
    np.testing.assert_allclose(train[0]["lr/encoder"], 1e-3 * float(factor(4)), rtol=1e-6)
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[-1]["eval/loss"] < 0.7 * evals[0]["eval/loss"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["20", "40"]
    from test_tensorboard_log import assert_event_files_hold_the_metrics  # not at the top: subprocesses import us

    assert_event_files_hold_the_metrics(tmp_path)


def test_bad_learning_rate_table_names_the_missing_group():
    with pytest.raises(ValueError, match=r"\['encoder'\] have no learning rate"):
        _setup(toy_config(**{"optimizer.lr": dict(decoder=1e-2)}))
