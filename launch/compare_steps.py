"""Score training runs on a held-out set at several numbers of denoising steps, with the same noise: a table.

    python launch/compare_steps.py --run runs/demo_marigold --run runs/demo_marigold_lcm --steps 1 4 \\
        [--seed 0] [--output comparison.md]

Each run (newest checkpoint, EMA weights when kept) is rebuilt from its saved config with `model.eval_steps` set
to each step count and scored by the loop's own held-out evaluation (`launch.tasks.build_evaluate`): a `marigold`
run samples with trailing DDIM, a `marigold_lcm` run with LCM. Every run is scored on the first run's held-out
set with the same seed, so all see the same scenes and the same initial noise (ensemble of 1).
"""

import argparse
import copy

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from launch import loop, tasks
from launch.data import pipeline
from marigold_jax import runs

SAMPLERS = {"DDIMScheduler": "DDIM trailing", "LCMScheduler": "LCM"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, help="training run directory (repeat for several)")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4], help="denoising steps to score each run at")
    p.add_argument("--seed", type=int, help="seed of the initial noise (default: the first run's)")
    p.add_argument("--output", help="also write the Markdown table to this file")
    return p.parse_args(argv)


def score(run, steps, held_out, seed):
    """({"eval/abs_rel", "eval/delta1"} or the normals scores, sampler name) of `run` at `steps` steps."""
    config = ml_collections.ConfigDict(runs.run_config(run))
    config.model.eval_steps = steps
    config.eval = copy.deepcopy(held_out)
    config.eval.num_images = 0
    config.eval_every, config.seed = 1, seed
    task = tasks.build_task(config)
    source = tasks.build_source("eval", config.eval.source)
    example = pipeline.example_batch(source, task.prepare)
    setup = loop.prepare_training(config, task, example)
    frozen = setup.init_frozen(None, example)
    weights, _ = runs.read_weights(run)
    params = loop.put_global(weights, setup.state_shardings.params)

    def put_batch(local):
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(setup.batch_sharding, np.asarray(x)),
                            local)

    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
        scores, _ = tasks.build_evaluate(config, task)(params, frozen, put_batch)
    return scores, SAMPLERS.get(task.plan[0].kind, task.plan[0].kind)


def main(argv=None):
    args = parse_args(argv)
    first = ml_collections.ConfigDict(runs.run_config(args.run[0]))
    seed = first.seed if args.seed is None else args.seed
    rows = []
    for run in args.run:
        task_name = runs.run_config(run)["task"]
        for steps in args.steps:
            scores, sampler = score(run, steps, first.eval, seed)
            rows.append((run, task_name, sampler, steps, scores))
            print(f"{run} ({sampler}, {steps} steps): " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
                  flush=True)
    names = list(rows[0][4])
    lines = [f"Held-out set: {first.eval.source.to_dict()}, {first.eval.num_samples} samples, seed {seed}, ensemble 1",
             "", "| run | task | sampler | steps | " + " | ".join(n.removeprefix("eval/") for n in names) + " |",
             "|---|---|---|---|" + "---|" * len(names)]
    for run, task_name, sampler, steps, scores in rows:
        lines.append(f"| {run} | {task_name} | {sampler} | {steps} | "
                     + " | ".join(f"{scores[n]:.4f}" for n in names) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(table)
    return rows


if __name__ == "__main__":
    main()
