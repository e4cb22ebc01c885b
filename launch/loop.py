"""The outer training loop: mesh, shardings and jitted functions for a task, then steps, logs, evaluations and
checkpoints. Optimizers and schedules are in `launch/optimizer.py`, the train step in `launch/step.py`.

A *task* is any object with
- `init(rng, example_batch) -> (params, frozen)`: trainable parameters and frozen sub-models, boxed with
  `nn.with_logical_partitioning`; frozen ones are kept outside the optimizer state (`{}` when there are none);
- `loss(params, frozen, batch, rng, step, targets) -> (scalar, metrics_dict)`: `step` is the int32 step being
  taken, `targets` the task's EMA target networks (`{}` unless it declares some, below);
- `prepare(sample, rng) -> example` (used by the data pipeline, not here);
- `param_groups(params) -> labels`: a pytree of strings with the structure of `params`; a group whose learning
  rate is 0 is frozen: no gradient, no optimizer state;
- `logical_axis_rules(sharding) -> rules`: extra (logical name, mesh axes) rules placed before the standard ones;
- for held-out evaluation: `predict(params, frozen, batch, rng) -> prediction` (jittable) and `prediction_kind`
  ("disparity" | "depth" | "metric" | "normals"; see `launch/tasks.py`), which also says how its sample pictures
  are drawn (`launch/sample_grids.py`: depth kinds in Spectral after least-squares alignment to batch["depth"],
  normals as RGB against batch["normals"]), and `input_images(batch) -> uint8 [B, H, W, 3]`: the network inputs of
  a host batch (numpy) as RGB, the first column of the pictures (not needed with `config.eval.num_images=0`);
and optionally
- `warm_start(params) -> params`: pretrained weights (e.g. DINOv2) put into the fresh params of a new run (never
  called on resume);
- `load_frozen(abstract_frozen) -> frozen`: the frozen sub-models read from files straight into the shardings of
  `abstract_frozen` (the unboxed `jax.ShapeDtypeStruct` tree of `init`'s frozen output), on fresh and resumed runs
  alike, so they are never initialised randomly nor held twice; without it frozen comes from a jitted `init`;
- `ema_targets() -> {name: decay}`: target networks, EMAs of the params updated after every applied step,
  checkpointed with the train state and passed to `loss` (consistency distillation's target network).
The loop knows nothing else about the task.
"""

import dataclasses
import logging
import sys
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from launch import mesh as mesh_lib
from launch import preemption, sample_grids
from launch.checkpoint import Checkpointer, run_directory
from launch.metrics_log import MetricsLog, to_python
from launch.optimizer import make_optimizer, trained_mask
from launch.step import TrainState, make_train_step
from launch.tensorboard_log import TensorBoardLog

log = logging.getLogger(__name__)


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
    abstract_frozen: Any  # unboxed frozen tree of ShapeDtypeStruct carrying shardings
    init_state: Any  # jitted (key, example_batch) -> TrainState, born sharded
    init_frozen: Any  # (key, example_batch) -> frozen, born sharded (read by the task's `load_frozen` if it has one)
    step: Any  # jitted train step, state donated

    def init(self, key, example_batch):
        """(state, frozen) of a fresh run, before any warm start."""
        return self.init_state(key, example_batch), self.init_frozen(key, example_batch)


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
    target_decays = {name: float(decay) for name, decay in task.ema_targets().items()} if hasattr(
        task, "ema_targets") else {}

    def create(rng, batch):
        params = nn.unbox(task.init(rng, batch)[0])
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            ema=params if use_ema else None,
            targets={name: params for name in target_decays},
            skipped=jnp.zeros((), jnp.int32),
        )

    abstract = jax.eval_shape(create, key, example_batch)
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
        targets={name: param_shardings for name in target_decays},
        skipped=replicated,
    )
    with_shardings = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
    abstract_state = jax.tree.map(with_shardings, abstract, state_shardings)
    abstract_frozen = jax.tree.map(with_shardings, nn.unbox(boxed_frozen), frozen_shardings)
    batch_sharding = mesh_lib.batch_sharding(mesh, rules)
    step_fn = make_train_step(
        task, tx, apply_lr, trained_mask(config.optimizer, labels), accumulate, float(config.optimizer.ema_decay),
        target_decays, param_shardings, batch_sharding,
    )
    init_state = jax.jit(create, out_shardings=state_shardings)
    if hasattr(task, "load_frozen"):
        init_frozen = lambda rng, batch: task.load_frozen(abstract_frozen)
    else:
        init_frozen = jax.jit(lambda rng, batch: nn.unbox(task.init(rng, batch)[1]), out_shardings=frozen_shardings)
    step = jax.jit(
        step_fn,
        in_shardings=(state_shardings, frozen_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    return Setup(
        mesh, rules, tx, lr_fns, state_shardings, frozen_shardings, batch_sharding, abstract_state, abstract_frozen,
        init_state, init_frozen, step,
    )


def train(config, task, data_iterator, example_batch, workdir, evaluate=None, stop_after_steps=None, devices=None):
    """Train `task` as `config` says, resuming from `workdir` if it holds a checkpoint; returns (state, frozen).

    data_iterator: a checkpointable Grain iterator yielding this process's share of each global batch (numpy).
    evaluate: optional `(params, frozen, put_batch) -> (scores, samples)` run every `config.eval_every` steps (and
    at the start of a fresh run) on the EMA parameters when EMA is on; `put_batch` places a host batch on the mesh.
    scores: {name: float}; samples: a uint8 [H, W, 3] picture or None (see `tasks.build_evaluate`).
    Writes, from process 0: `metrics.jsonl` (the source of truth), the same scalars at the same steps and the config
    to TensorBoard event files in `tensorboard/`, and each evaluation's samples to `samples/STEP.png` and
    TensorBoard; on resume, whatever an interrupted run wrote after the restored checkpoint is dropped from all.
    stop_after_steps: end this invocation after that many steps with a checkpoint, as a preemption would.
    SIGTERM (preemption) ends it the same way at the end of the current step: a checkpoint at that step, then
    return; running the same command again resumes there.
    """
    workdir = run_directory(workdir)
    setup = prepare_training(config, task, example_batch, devices)
    checkpointer = Checkpointer(workdir, config.keep_checkpoints, config.checkpoint_every)
    # Made by a jitted function: with several processes a host value cannot be device_put onto the whole mesh.
    key = jax.jit(lambda: jax.random.key(config.seed), out_shardings=NamedSharding(setup.mesh, PartitionSpec()))()

    def put_batch(local):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(setup.batch_sharding, np.asarray(x)), local
        )

    # Initialise outside the mesh context: Linen's DenseGeneral would constrain its flattened kernel with the
    # unflattened logical names; the jit's out_shardings place the parameters anyway.
    state, frozen, latest = _initial_state(setup, task, checkpointer, data_iterator, config, example_batch)
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules), preemption.on_sigterm() as sigterm:
        start = int(state.step)
        log.info("%s at step %d of %d; metrics in %s", "resuming" if latest is not None else "starting", start,
                 config.total_steps, workdir / "metrics.jsonl")
        metrics_log = MetricsLog(workdir / "metrics.jsonl", start)
        board = TensorBoardLog(workdir / "tensorboard", start)
        board.config(start, config)
        if jax.process_index() == 0:
            sample_grids.drop_after(workdir / "samples", start)

        def write(record):
            metrics_log.write(record)
            board.scalars(record["step"], record)

        def run_evaluation(step, state):
            scores, samples = evaluate(_eval_params(state), frozen, put_batch)
            write({"step": step, **scores})
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
            if samples is not None and jax.process_index() == 0:
                sample_grids.save(workdir / "samples", step, samples)
                board.image("samples", step, samples)

        if evaluate is not None and config.eval_every and latest is None:
            run_evaluation(0, state)
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
                values = to_python(metrics)
                now = time.perf_counter()
                record = {"step": step, "loss": values.pop("loss")}
                lrs = {f"lr/{k}": float(fn(step - 1)) for k, fn in setup.lr_fns.items()}
                record["lr"] = max(lrs.values())
                record["steps_per_sec"] = (step - last_step) / (now - last_time)
                record.update(values)
                record.update(lrs)
                write(record)
                if bar is not None:
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                last_time, last_step = now, step
            if evaluate is not None and config.eval_every and (
                step % config.eval_every == 0 or step == config.total_steps
            ):
                run_evaluation(step, state)
                last_time = time.perf_counter()
            if checkpointer.save(step, state, data_iterator, config):
                last_saved = step
            if sigterm.requested():
                log.warning("preempted at step %d of %d: checkpoint saved; run the same command to resume", step,
                            config.total_steps)
                break
        if last_saved != step:
            checkpointer.save(step, state, data_iterator, config, force=True)
        checkpointer.wait()
        checkpointer.close()
        board.close()
        if bar is not None:
            bar.close()
    return state, frozen


def _initial_state(setup, task, checkpointer, data_iterator, config, example_batch):
    """(state, frozen, restored step or None): the newest checkpoint if any, else a fresh (warm-started) init.

    Frozen sub-models are built once either way; a resumed run never reads the warm-start weights it would discard.
    """
    latest = checkpointer.latest_step()
    key = jax.random.key(config.seed)
    frozen = setup.init_frozen(key, example_batch)
    if latest is not None:
        return checkpointer.restore(latest, setup.abstract_state, data_iterator, config), frozen, latest
    state = setup.init_state(key, example_batch)
    if hasattr(task, "warm_start"):
        params = put_global(task.warm_start(state.params), setup.state_shardings.params)
        copy = lambda: jax.tree.map(jnp.copy, params)  # distinct buffers: the step donates the whole state
        state = state.replace(
            params=params,
            ema=None if state.ema is None else copy(),
            targets={name: copy() for name in state.targets},
        )
    return state, frozen, None


def put_global(tree, shardings):
    """Arrays of `tree` (each process holding the whole value) placed with `shardings`, which may span the devices
    of several processes: every process supplies the shards its devices hold."""

    def put(x, sharding):
        if isinstance(x, jax.Array) and x.sharding == sharding:  # already in place, e.g. untouched by warm_start
            return x
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)


def _eval_params(state):
    return state.params if state.ema is None else state.ema


def _progress(start, total):
    if jax.process_index() != 0 or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
