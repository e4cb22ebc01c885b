"""Convert checkpoints between JAX and PyTorch formats.

    python launch/convert.py --input depth_anything_v2_vits.pth --output dav2_s_jax --to jax
    python launch/convert.py --input dav2_s_jax --output Depth-Anything-V2-Small-hf --to hf
    python launch/convert.py --input dav2_s_jax --output depth_anything_v2_vits.pth --to official
    python launch/convert.py --input runs/demo --output demo.pth --to official          # a training run
    python launch/convert.py --input marigold-depth-v1-1 --output marigold_copy --to diffusers
    python launch/convert.py --input runs/demo_marigold --output demo-marigold-depth --to diffusers  # a run

Depth Anything V2 reads official .pth, transformers folders, dav2_jax folders and training run directories
(the newest checkpoint, or --step N; its EMA weights when the run kept them) and writes any of official/hf/jax.
Marigold reads diffusers folders and runs of the `marigold` task (U-Net from the run, VAE and text encoder from
its base) and writes diffusers folders.
"""

import argparse
import os
import sys

from launch.eval.predictors import model_family
from marigold_jax.run_folder import RUN_FOLDERS, run_task_name


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--to", required=True, choices=["jax", "official", "hf", "diffusers"])
    p.add_argument("--max-depth", type=float, default=None, help="metric range of an official .pth (20 or 80)")
    p.add_argument("--step", type=int, default=None, help="training run directory: the step (default: newest)")
    args = p.parse_args(argv)

    if model_family(args.input) == "marigold":
        if args.to != "diffusers":
            p.error(f"{args.input} is a Marigold checkpoint: it converts only --to diffusers")
        import marigold_jax

        marigold_jax.save(marigold_jax.load(args.input, step=args.step), args.output)
    else:
        if args.to == "diffusers":
            task = run_task_name(args.input) if os.path.isdir(args.input) else None
            found = f"a run of task {task!r}" if task else "not a diffusers folder (no model_index.json)"
            p.error(f"{args.input} is {found}; --to diffusers exports Marigold folders and runs of the tasks "
                    f"{sorted(RUN_FOLDERS)}: use --to jax|official|hf")
        import dav2_jax

        model, params = dav2_jax.load(args.input, max_depth=args.max_depth, step=args.step)
        dav2_jax.save(model, params, args.output, format=args.to)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
