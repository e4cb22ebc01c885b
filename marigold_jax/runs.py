"""Training run directories (what `launch/train.py --workdir RUN_DIR` writes) read as Marigold checkpoints.

    RUN_DIR/checkpoints/STEP/state    Orbax PyTree of the train state: {step, params, opt_state, ema, ...}
    RUN_DIR/checkpoints/STEP/config   the run's config as JSON (Orbax `JsonSave`: a file named `metadata`)

The facts relied on: step folders are plain integers; the trainable weights are the `params` subtree of `state`,
their EMA the `ema` subtree (empty or missing when EMA was off); `config["model"]` holds the task's arguments. Only the
chosen subtree is read (Orbax partial restore), never the optimizer state. Orbax is imported lazily, and nothing of
the training runtime (`launch`) is imported.
"""

import json
import os

import numpy as np

CHECKPOINTS = "checkpoints"


def steps(path):
    """The finished checkpoint steps of run directory `path`, ascending ([] when it is not a run directory)."""
    folder = os.path.join(path, CHECKPOINTS)
    if not os.path.isdir(folder):
        return []
    return sorted(int(d) for d in os.listdir(folder) if d.isdigit() and os.path.isdir(os.path.join(folder, d, "state")))


def is_run_dir(path):
    return bool(steps(path))


def step_dir(path, step=None):
    """`RUN_DIR/checkpoints/STEP` of `step` (newest when None); errors list the steps there are."""
    found = steps(path)
    if not found:
        raise FileNotFoundError(f"{path!r} holds no finished checkpoint (expected {CHECKPOINTS}/STEP/state)")
    if step is None:
        step = found[-1]
    elif step not in found:
        raise ValueError(f"{path!r} has no checkpoint of step {step}; it has steps {found}")
    return os.path.join(path, CHECKPOINTS, str(step))


def run_config(path, step=None):
    """The saved config (a plain dict) of the run's checkpoint `step` (newest when None)."""
    with open(os.path.join(step_dir(path, step), "config", "metadata"), encoding="utf-8") as f:
        return json.load(f)


def read_weights(path, step=None, use_ema=True):
    """(numpy float32 pytree, "ema" | "params"): the EMA weights when kept and `use_ema`, else the params."""
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    state_dir = os.path.abspath(os.path.join(step_dir(path, step), "state"))  # Orbax wants absolute paths
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir)).tree
        which = "ema" if use_ema and tree.get("ema") else "params"
        if not tree.get(which):
            raise ValueError(f"{state_dir!r} holds no {which!r} subtree (found {sorted(tree)})")
        item = {which: jax.tree.map(lambda _: 0, tree[which])}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = checkpointer.restore(
            state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        )
    return jax.tree.map(lambda x: np.asarray(x, np.float32), restored[which]), which
