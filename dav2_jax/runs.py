"""Training run directories as checkpoints: the newest (or a chosen) step's weights and the model they belong to.

A run directory is what `launch/train.py --workdir RUN_DIR` writes:

    RUN_DIR/checkpoints/STEP/state    Orbax PyTree of the train state: {step, params, opt_state, ema, ...}
    RUN_DIR/checkpoints/STEP/config   the run's ConfigDict as JSON (Orbax `JsonSave`: a file named `metadata`)

Reading one needs only three facts, kept here so that other model families can mirror them: the step folders are
plain integers; the trainable weights are the `params` subtree of `state` and their EMA the `ema` subtree (an empty
or missing `ema` means EMA was off); `config["model"]` holds the task's model arguments. Only the chosen subtree
is read (Orbax partial restore), never the optimizer state. Orbax is imported lazily: this module reads run
directories without importing the training runtime (`launch`).
"""

import json
import os

import numpy as np

CHECKPOINTS = "checkpoints"


def is_run_dir(path) -> bool:
    """True if `path` is a training run directory (it has `checkpoints/` with at least one step)."""
    return bool(_steps(path))


def _steps(path):
    folder = os.path.join(path, CHECKPOINTS)
    if not os.path.isdir(folder):
        return []
    return sorted(int(d) for d in os.listdir(folder)
                  if d.isdigit() and os.path.isdir(os.path.join(folder, d, "state")))


def step_dir(path, step=None) -> str:
    """`RUN_DIR/checkpoints/STEP` of `step`, or of the newest step when None; errors list the steps there are."""
    steps = _steps(path)
    if not steps:
        raise FileNotFoundError(f"{path!r} holds no finished checkpoint (expected {CHECKPOINTS}/STEP/state)")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise ValueError(f"{path!r} has no checkpoint of step {step}; it has steps {steps}")
    return os.path.join(path, CHECKPOINTS, str(step))


def run_config(path, step=None) -> dict:
    """The config (a plain dict, as saved) of the run's checkpoint `step` (newest when None)."""
    config_dir = os.path.join(step_dir(path, step), "config")
    with open(os.path.join(config_dir, "metadata")) as f:
        return json.load(f)


def read_weights(path, step=None, use_ema=True):
    """(weights, which) of a run: numpy float32 pytree of the `ema` subtree when kept and `use_ema`, else `params`.

    which: "ema" or "params", the subtree read.
    """
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
