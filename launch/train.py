"""Train any registered task from an ml_collections config; the same command on one CPU and on a TPU pod.

    python launch/train.py --config configs/NAME.py --workdir DIR [--config.a.b=value ...] [--stop_after_steps N]

Writes DIR/metrics.jsonl and DIR/checkpoints/STEP/. Running the same command again in the same DIR resumes from
the newest checkpoint (train state, data iterator position and all), exactly where the run stopped; SIGTERM
(preemption) saves a checkpoint at the current step first. Compiled programs are cached in DIR/compilation_cache.
Several processes (a TPU pod, SLURM, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID) each run
the same command; --verbosity=1 shows the INFO logs of Orbax, Grain and the like.
"""

import logging

import jax
from absl import app, flags
from ml_collections import config_flags

from launch import checkpoint, compilation_cache, loop, mesh, tasks

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (a get_config() Python file)")
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory: metrics.jsonl and checkpoints/; resumes if present")
_STOP_AFTER = flags.DEFINE_integer(
    "stop_after_steps", None, "end this invocation after N steps with a checkpoint (the schedule is unchanged)"
)
flags.mark_flags_as_required(["config", "workdir"])

REQUIRED = (
    "task", "seed", "total_steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "mesh.data", "mesh.fsdp", "mesh.tensor", "sharding",
)


def check_config(config):
    """Raise ValueError naming any mandatory field the config lacks."""
    missing = []
    for path in REQUIRED:
        node = config
        for part in path.split("."):
            if part not in node:
                missing.append(path)
                break
            node = node[part]
    if missing:
        raise ValueError(f"the config lacks the mandatory fields {missing}; every training config defines them")


def run(config, workdir, stop_after_steps=None):
    """Build task, data and evaluation from `config` and train; returns the loop's (state, frozen)."""
    check_config(config)
    task = tasks.build_task(config)
    iterator, example = tasks.build_train_data(config, task)
    evaluate = tasks.build_evaluate(config, task)
    try:
        return loop.train(config, task, iterator, example, workdir, evaluate, stop_after_steps)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; options are --config, --workdir, --stop_after_steps")
    processes = mesh.initialize_distributed()
    # The console shows our progress, evaluations, warnings and errors; the INFO chatter of Orbax, Grain and other
    # absl users only with --verbosity=1 or more. Processes other than 0 report warnings and errors only.
    if flags.FLAGS.verbosity < 1:
        logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("launch").setLevel(logging.INFO if jax.process_index() == 0 else logging.WARNING)
    logging.getLogger("launch").info("%d process(es), %d devices (%s)", processes, jax.device_count(),
                                     jax.devices()[0].platform)
    # A resumed or repeated run loads its programs instead of compiling them again.
    config, workdir = _CONFIG.value, _WORKDIR.value
    compilation_cache.enable(
        config.get("compilation_cache_dir") or str(checkpoint.run_directory(workdir) / "compilation_cache"))
    run(config, workdir, _STOP_AFTER.value)


if __name__ == "__main__":
    app.run(main)
