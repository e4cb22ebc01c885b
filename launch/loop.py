"""The one training loop: Optax optimizer and schedules, the jitted sharded train step, logging, checkpoints, eval.

A *task* (see `../shared/ARCHITECTURE.md`) is any object with
- `init(rng, example_batch) -> (params, frozen)`: parameters boxed with `nn.with_logical_partitioning`; `frozen` are
  parameters that are never trained (kept outside the optimizer state; `{}` when there are none);
- `loss(params, frozen, batch, rng) -> (scalar, metrics_dict)`;
- `prepare(sample, rng) -> example` (used by the data pipeline, not here);
- `param_groups(params) -> labels`: a pytree of strings with the structure of `params`;
- `logical_axis_rules(sharding) -> rules`: extra (logical name, mesh axes) rules placed before the standard ones;
- optionally `warm_start(params, frozen) -> (params, frozen)`: pretrained weights (e.g. DINOv2) put into freshly
  initialised params; on resume only its `frozen` output is kept.
The loop knows nothing else about the task.
"""

import dataclasses
import json
import logging
import sys
import time
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from launch import mesh as mesh_lib
from launch.checkpoint import Checkpointer, run_directory

log = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `ema` is None when EMA is off."""

    step: jax.Array  # int32 [], optimizer steps taken, skipped ones included
    params: Any
    opt_state: Any
    ema: Any
    skipped: jax.Array  # int32 [], steps whose update was dropped because the loss or a gradient was not finite


def schedule(sched, total_steps):
    """Learning-rate multiplier in [0, 1] as a function of the step: linear warm-up, then the chosen decay.

    sched.kind: "constant" | "poly" ((1 - t/T)^power) | "cosine" (down to `end_factor`) | "exponential"
    (`decay_rate` per `decay_steps`); t counts from the end of warm-up, T = total_steps - warmup_steps.
    """
    warmup = int(sched.warmup_steps)
    decay_steps = max(total_steps - warmup, 1)
    kinds = {
        "constant": lambda t: jnp.ones_like(t),
        "poly": lambda t: (1.0 - jnp.minimum(t / decay_steps, 1.0)) ** sched.power,
        "cosine": lambda t: sched.end_factor
        + (1.0 - sched.end_factor) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(t / decay_steps, 1.0))),
        "exponential": lambda t: sched.decay_rate ** (t / sched.decay_steps),
    }
    if sched.kind not in kinds:
        raise ValueError(f"config.schedule.kind must be one of {sorted(kinds)}, got {sched.kind!r}")
    decay = kinds[sched.kind]

    def factor(step):
        step = jnp.asarray(step, jnp.float32)
        warm = jnp.minimum((step + 1.0) / warmup, 1.0) if warmup > 0 else 1.0
        return warm * decay(jnp.maximum(step - warmup, 0.0))

    return factor


def make_optimizer(opt, sched, total_steps, labels):
    """Optax transformation with one learning rate per parameter group.

    opt.lr maps each label of `labels` to its peak learning rate (0 freezes the group: no optimizer state).
    Weight decay (decoupled, AdamW-style) applies to tensors of rank >= 2 only, not to biases, norms or scales.
    The learning rate is a function of the loop's step (so a skipped step does not shift the schedule): the
    returned `tx` gives descent directions, and `apply_lr(updates, step)` scales them per group.
    Returns (tx, apply_lr, lr_fns) with lr_fns[label](step) the learning rate used for the update at `step`.
    """
    found = sorted(set(jax.tree.leaves(labels)))
    missing = [label for label in found if label not in opt.lr]
    if missing:
        raise ValueError(
            f"parameter groups {missing} have no learning rate; add --config.optimizer.lr.NAME=VALUE "
            f"(configured: {sorted(opt.lr)})"
        )
    factor = schedule(sched, total_steps)
    groups, lr_fns = {}, {}
    for label in found:
        peak = float(opt.lr[label])
        lr_fns[label] = lambda step, peak=peak: peak * factor(step)
        if peak == 0.0:
            groups[label] = optax.set_to_zero()
            continue
        if opt.name == "adamw":
            direction = optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
        elif opt.name == "sgd":
            direction = optax.trace(decay=opt.b1) if opt.b1 else optax.identity()
        else:
            raise ValueError(f"config.optimizer.name must be 'adamw' or 'sgd', got {opt.name!r}")
        groups[label] = optax.chain(
            direction,
            optax.add_decayed_weights(opt.weight_decay, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)),
        )
    tx = optax.multi_transform(groups, labels)
    if opt.clip_norm:
        tx = optax.chain(optax.clip_by_global_norm(opt.clip_norm), tx)

    def apply_lr(updates, step):
        return jax.tree.map(lambda u, label: -lr_fns[label](step) * u, updates, labels)

    return tx, apply_lr, lr_fns


def make_train_step(task, tx, apply_lr, accumulate_steps, ema_decay, param_shardings, micro_sharding):
    """The pure train step `(state, frozen, batch, key) -> (state, metrics)`.

    The global batch is split into `accumulate_steps` micro-batches whose gradients are averaged before one update.
    A non-finite loss or gradient norm leaves params, optimizer state and EMA untouched and increments `skipped`.
    """

    def grads_of(params, frozen, batch, rng):
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(params, frozen, batch, rng)
        return loss, metrics, jax.lax.with_sharding_constraint(grads, param_shardings)

    def step_fn(state, frozen, batch, key):
        rng = jax.random.fold_in(key, state.step)
        if accumulate_steps == 1:
            loss, metrics, grads = grads_of(state.params, frozen, batch, rng)
        else:

            def split(x):
                x = x.reshape(x.shape[0] // accumulate_steps, accumulate_steps, *x.shape[1:])
                return jnp.swapaxes(x, 0, 1)

            micro = jax.tree.map(split, batch)

            def body(carry, i):
                mb = jax.lax.with_sharding_constraint(jax.tree.map(lambda x: x[i], micro), micro_sharding)
                loss, metrics, grads = grads_of(state.params, frozen, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

            zeros = jax.eval_shape(lambda: grads_of(state.params, frozen, jax.tree.map(lambda x: x[0], micro), rng))
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            total, _ = jax.lax.scan(body, zeros, jnp.arange(accumulate_steps))
            loss, metrics, grads = jax.tree.map(lambda x: x / accumulate_steps, total)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, apply_lr(updates, state.step))
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
        ema = state.ema
        if ema is not None:
            ema = keep(jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params), ema)
        new_state = state.replace(
            step=state.step + 1,
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            ema=ema,
            skipped=state.skipped + jnp.where(ok, 0, 1).astype(jnp.int32),
        )
        return new_state, {**metrics, "loss": loss, "grad_norm": grad_norm, "skipped": new_state.skipped}

    return step_fn


@dataclasses.dataclass
class Setup:
    """What `prepare_training` derives from the config and the task."""

    mesh: Any
    rules: tuple
    tx: Any
    lr_fns: dict
    state_shardings: Any
    frozen_shardings: Any
    batch_sharding: Any
    abstract_state: Any  # TrainState of ShapeDtypeStruct carrying shardings
    init: Any  # jitted (key, example_batch) -> (state, frozen), born sharded
    init_frozen: Any  # jitted (key, example_batch) -> frozen, for a resumed run
    step: Any  # jitted train step, state donated


def prepare_training(config, task, example_batch, devices=None):
    """Mesh, rules, optimizer, shardings and the jitted init and step functions for `config` and `task`."""
    mesh = mesh_lib.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
    rules = mesh_lib.logical_rules(config.sharding, task.logical_axis_rules(config.sharding))
    accumulate = int(config.optimizer.accumulate_steps)
    shards = mesh_lib.batch_shards(mesh, rules)
    if config.batch_size % (shards * accumulate * jax.process_count()):
        raise ValueError(
            f"batch_size {config.batch_size} must be a multiple of {shards} (batch shards of mesh "
            f"{dict(mesh.shape)} under sharding={config.sharding!r}) x {accumulate} (accumulate_steps) x "
            f"{jax.process_count()} (processes); change --config.batch_size"
        )
    key = jax.random.key(config.seed)
    boxed_params, boxed_frozen = jax.eval_shape(task.init, key, example_batch)
    param_shardings = mesh_lib.tree_shardings(boxed_params, mesh, rules)
    frozen_shardings = mesh_lib.tree_shardings(boxed_frozen, mesh, rules)
    labels = task.param_groups(nn.unbox(boxed_params))
    tx, apply_lr, lr_fns = make_optimizer(config.optimizer, config.schedule, config.total_steps, labels)
    use_ema = bool(config.optimizer.ema_decay)

    def create(rng, batch):
        params, frozen = nn.unbox(task.init(rng, batch))
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema=params if use_ema else None,
            skipped=jnp.zeros((), jnp.int32),
        )
        return state, frozen

    abstract, _ = jax.eval_shape(create, key, example_batch)
    replicated = NamedSharding(mesh, PartitionSpec())
    state_shardings = TrainState(
        step=replicated,
        params=param_shardings,
        opt_state=optax.tree_map_params(
            tx,
            lambda p, s: p if isinstance(p, optax.MaskedNode) else s,  # frozen groups hold no state
            abstract.opt_state,
            param_shardings,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, optax.MaskedNode),
        ),
        ema=param_shardings if use_ema else None,
        skipped=replicated,
    )
    abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, state_shardings
    )
    batch_sharding = mesh_lib.batch_sharding(mesh, rules)
    step_fn = make_train_step(
        task, tx, apply_lr, accumulate, float(config.optimizer.ema_decay), param_shardings, batch_sharding
    )
    init = jax.jit(create, out_shardings=(state_shardings, frozen_shardings))
    init_frozen = jax.jit(lambda rng, batch: create(rng, batch)[1], out_shardings=frozen_shardings)
    step = jax.jit(
        step_fn,
        in_shardings=(state_shardings, frozen_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    return Setup(
        mesh, rules, tx, lr_fns, state_shardings, frozen_shardings, batch_sharding, abstract_state, init,
        init_frozen, step,
    )


class MetricsLog:
    """`WORKDIR/metrics.jsonl`, one JSON object per line; only process 0 writes.

    On resume, lines for steps after the restored checkpoint (written before a crash) are dropped, so the file
    reads as one uninterrupted run.
    """

    def __init__(self, path, resume_step):
        self.path = path
        self.active = jax.process_index() == 0
        if not self.active:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record):
        if self.active:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _to_python(tree):
    return {k: (v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in jax.device_get(tree).items()}


def train(config, task, data_iterator, example_batch, workdir, evaluate=None, stop_after_steps=None, devices=None):
    """Train `task` as `config` says, resuming from `workdir` if it holds a checkpoint; returns (state, frozen).

    data_iterator: a checkpointable Grain iterator yielding this process's share of each global batch (numpy).
    evaluate: optional `(params, frozen, put_batch) -> {name: float}` run every `config.eval_every` steps (and
    at the start of a fresh run) on the EMA parameters when EMA is on; `put_batch` places a host batch on the mesh.
    stop_after_steps: end this invocation after that many steps with a checkpoint, as a preemption would.
    """
    workdir = run_directory(workdir)
    setup = prepare_training(config, task, example_batch, devices)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config.checkpoint_every)
    key = jax.device_put(jax.random.key(config.seed), NamedSharding(setup.mesh, PartitionSpec()))

    def put_batch(local):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(setup.batch_sharding, np.asarray(x)), local
        )

    # Initialise outside the mesh context: Linen's DenseGeneral would constrain its flattened kernel with the
    # unflattened logical names; the jit's out_shardings place the parameters anyway.
    state, frozen, latest = _initial_state(setup, task, checkpointer, data_iterator, config, example_batch)
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
        start = int(state.step)
        log.info("%s at step %d of %d; metrics in %s", "resuming" if latest is not None else "starting", start,
                 config.total_steps, workdir / "metrics.jsonl")
        metrics_log = MetricsLog(workdir / "metrics.jsonl", start)
        if evaluate is not None and config.eval_every and latest is None:
            metrics_log.write({"step": 0, **evaluate(_eval_params(state), frozen, put_batch)})
        last_saved = latest
        bar = _progress(start, config.total_steps)
        last_time, last_step = time.perf_counter(), start
        step = start
        while step < config.total_steps and (stop_after_steps is None or step - start < stop_after_steps):
            state, metrics = setup.step(state, frozen, put_batch(next(data_iterator)), key)
            step += 1
            if bar is not None:
                bar.update(1)
            if step % config.log_every == 0 or step == config.total_steps:
                values = _to_python(metrics)
                now = time.perf_counter()
                record = {"step": step, "loss": values.pop("loss")}
                lrs = {f"lr/{k}": float(fn(step - 1)) for k, fn in setup.lr_fns.items()}
                record["lr"] = max(lrs.values())
                record["steps_per_sec"] = (step - last_step) / (now - last_time)
                record.update(values)
                record.update(lrs)
                metrics_log.write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                last_time, last_step = now, step
            if evaluate is not None and config.eval_every and (
                step % config.eval_every == 0 or step == config.total_steps
            ):
                metrics_log.write({"step": step, **evaluate(_eval_params(state), frozen, put_batch)})
                last_time = time.perf_counter()
            if checkpointer.save(step, state, data_iterator, config):
                last_saved = step
        if last_saved != step:
            checkpointer.save(step, state, data_iterator, config, force=True)
        checkpointer.wait()
        checkpointer.close()
        if bar is not None:
            bar.close()
    return state, frozen


def _initial_state(setup, task, checkpointer, data_iterator, config, example_batch):
    """(state, frozen, restored step or None): the newest checkpoint if any, else a fresh (warm-started) init."""
    latest = checkpointer.latest_step()
    key = jax.random.key(config.seed)
    if latest is None:
        state, frozen = setup.init(key, example_batch)
        if hasattr(task, "warm_start"):
            params, frozen = task.warm_start(state.params, frozen)
            params = jax.device_put(params, setup.state_shardings.params)
            frozen = jax.device_put(frozen, setup.frozen_shardings)
            state = state.replace(params=params, ema=None if state.ema is None else params)
        return state, frozen, None
    state = checkpointer.restore(latest, setup.abstract_state, data_iterator, config)
    frozen = setup.init_frozen(key, example_batch)
    if hasattr(task, "warm_start"):
        frozen = jax.device_put(task.warm_start(state.params, frozen)[1], setup.frozen_shardings)
    return state, frozen, latest


def _eval_params(state):
    return state.params if state.ema is None else state.ema


def _progress(start, total):
    if jax.process_index() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
