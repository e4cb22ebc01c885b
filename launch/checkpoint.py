"""Orbax checkpoints of a training run: train state, Grain iterator state and config JSON, saved together.

Layout: `WORKDIR/checkpoints/STEP/{state, data, config, layout}`. `state` is an Orbax PyTree (restored straight
into the target shardings, so no host ever holds a full copy); `data` holds one JSON file per process with that
process's Grain iterator state; `config` is the run's `ConfigDict` as JSON, for people and for the resume check;
`layout` is `{"version": N, "state_fields": [...]}`, the version of the train state's structure:
- 1: the train state before it held EMA target networks (step, params, opt_state, ema, skipped); checkpoints of
  that time have no `layout` item. They resume when the task declares no target networks (`targets` is {}), and
  fail with a message saying why otherwise;
- 2: `targets` added (the EMA target networks of `task.ema_targets()`).
A checkpoint of a version newer than this code's is refused with a message.
"""

import json
import logging

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

log = logging.getLogger(__name__)

LAYOUT_VERSION = 2
_V1_FIELDS = ("step", "params", "opt_state", "ema", "skipped")


def run_directory(path):
    """`path` (str or path-like, local or `gs://...`) as an absolute `epath.Path`.

    Orbax (tensorstore's OCDBT driver) refuses relative paths, and users type `--workdir runs/demo`; a local
    relative path is taken relative to the current directory, a URL is absolute already.
    """
    path = epath.Path(path)
    return path if path.is_absolute() else path.absolute()


class Checkpointer:
    """Asynchronous, keep-the-last-N checkpoints of one run directory."""

    def __init__(self, workdir, keep, every):
        """keep: how many most recent checkpoints survive; every: save period in steps (forced saves come extra)."""
        self.directory = run_directory(workdir) / "checkpoints"
        # On the period only: Orbax's default policy would also save the very first step of a run (for ViT-G, a
        # whole train state minutes after starting) and could not tell a preemption we handle ourselves.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            should_save_fn=lambda step, last_saved: step % every == 0,
            enable_async_checkpointing=True,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self):
        """The newest complete checkpoint's step, or None."""
        return self.manager.latest_step()

    def save(self, step, state, data_iterator, config, force=False):
        """Start saving (asynchronously) if `step` is on the period or `force`; returns whether it saves.

        The iterator state is read now, so the iterator may be advanced as soon as this returns.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(json.loads(config.to_json_best_effort())),
            layout=ocp.args.JsonSave({"version": LAYOUT_VERSION, "state_fields": _fields(state)}),
        )
        return self.manager.save(step, args=args, force=force)

    def layout_version(self, step):
        """The layout version of checkpoint `step` (1 for checkpoints written before layouts were versioned)."""
        if not (self.directory / str(step) / "layout").exists():
            return 1
        return int(self.manager.restore(step, args=ocp.args.Composite(layout=ocp.args.JsonRestore()))["layout"]
                   ["version"])

    def restore(self, step, abstract_state, data_iterator, config):
        """Restore `step` into `abstract_state`'s shapes and shardings; `data_iterator` is repositioned in place.

        abstract_state: a pytree of `jax.ShapeDtypeStruct` carrying the target `sharding`. The data iterators'
        positions are per process, so the run must resume with the process count that saved it.
        """
        saved = sorted(p.name for p in (self.directory / str(step) / "data").glob("process_*.json"))
        count = jax.process_count()
        if saved and not any(name.endswith(f"-of-{count}.json") for name in saved):
            raise ValueError(
                f"checkpoint {step} in {self.directory} was saved by {len(saved)} processes ({', '.join(saved)}) "
                f"but this run has {count}: each process's data position is its own, so resume with "
                f"{len(saved)} processes, or start a new --workdir (with --config.model.init_from for the weights)"
            )
        version = self.layout_version(step)
        if version > LAYOUT_VERSION:
            raise ValueError(
                f"checkpoint {self.directory / str(step)} has layout version {version}, newer than this code's "
                f"{LAYOUT_VERSION}: update the code to the version that wrote it"
            )
        target = abstract_state
        if version == 1:
            if abstract_state.targets:
                raise ValueError(
                    f"checkpoint {self.directory / str(step)} was written before train states held EMA target "
                    f"networks (layout version 1), but the task declares targets {sorted(abstract_state.targets)}; "
                    "they cannot be recovered from it: start a new run in another workdir (e.g. warm-started from "
                    "this one's weights)"
                )
            target = {name: getattr(abstract_state, name) for name in _V1_FIELDS}
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            config=ocp.args.JsonRestore(),
        )
        restored = self.manager.restore(step, args=args)
        _warn_on_config_change(restored["config"], json.loads(config.to_json_best_effort()), step)
        if version == 1:
            log.info("checkpoint %d has layout version 1 (no EMA target networks); resuming with none", step)
            return abstract_state.replace(**restored["state"], targets={})
        return restored["state"]

    def wait(self):
        """Block until every started save is on disk."""
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def _fields(state):
    return sorted(f for f in getattr(state, "__dataclass_fields__", {}))


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _warn_on_config_change(saved, current, step):
    saved, current = _flatten(saved), _flatten(current)
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))
    if changed and jax.process_index() == 0:
        log.warning(
            "resuming from step %d with a config that differs from the saved one in: %s",
            step,
            ", ".join(f"{k} ({saved.get(k)!r} -> {current.get(k)!r})" for k in changed),
        )
