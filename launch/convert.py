"""Convert checkpoints between JAX and PyTorch formats.

    python launch/convert.py --input depth_anything_v2_vits.pth --output dav2_s_jax --to jax
    python launch/convert.py --input dav2_s_jax --output Depth-Anything-V2-Small-hf --to hf
    python launch/convert.py --input dav2_s_jax --output depth_anything_v2_vits.pth --to official
    python launch/convert.py --input runs/demo --output demo.pth --to official          # a training run
    python launch/convert.py --input marigold-depth-v1-1 --output marigold_copy --to diffusers

Depth Anything V2 reads official .pth, transformers folders, dav2_jax folders and training run directories
(the newest checkpoint, or --step N; its EMA weights when the run kept them) and writes any of official/hf/jax.
Marigold reads and writes diffusers folders.
"""

import argparse
import os
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--to", required=True, choices=["jax", "official", "hf", "diffusers"])
    p.add_argument("--max-depth", type=float, default=None, help="metric range of an official .pth (20 or 80)")
    p.add_argument("--step", type=int, default=None, help="training run directory: the step (default: newest)")
    args = p.parse_args(argv)

    if os.path.exists(os.path.join(args.input, "model_index.json")):
        if args.to != "diffusers":
            p.error(f"{args.input} is a Marigold (diffusers) checkpoint: it converts only --to diffusers")
        import marigold_jax

        marigold_jax.save(marigold_jax.load(args.input), args.output)
    else:
        if args.to == "diffusers":
            p.error(f"{args.input} is not a diffusers folder (no model_index.json): use --to jax|official|hf")
        import dav2_jax

        model, params = dav2_jax.load(args.input, max_depth=args.max_depth, step=args.step)
        dav2_jax.save(model, params, args.output, format=args.to)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
