"""Predict depth for images (and videos) with a Depth Anything V2 or Marigold checkpoint.

    python launch/infer.py --model depth_anything_v2_vits.pth --input photos/ --output out/ [--input-size 518]
    python launch/infer.py --model marigold-depth-v1-1 --input 'photos/**/*.jpg' --output out/ --ensemble 5
    python launch/infer.py --model runs/demo_marigold --input photos/ --output out/   # a training run

--input: an image, a video (Depth Anything: CLIP_depth.mp4 at the input's frame rate), a folder (--recursive for
sub-folders), a .txt list of paths or a glob. Outputs mirror the inputs' relative paths under --output. For each
image NAME.ext a Depth Anything model writes NAME.npy (float32 H×W: relative disparity, or metres for metric
models), NAME.png (16-bit, min-max normalised) and NAME_color.png, plus NAME_mm.png (uint16 millimetres) for
metric models; --save picks others; --tiled-size predicts large images in tiles (both families). Unreadable files
are reported and skipped. Compiled programs are cached in --compilation-cache across runs.
"""

import argparse
import os
import sys

from launch import compilation_cache, images
from launch.eval import predictors

# Flags that only one family reads: default None (or False), so that setting them for the other is an error.
DAV2_FLAGS = {"input_size": 518, "max_depth": None}
MARIGOLD_FLAGS = {"steps": None, "ensemble": 1, "ensemble_batch": 1, "processing_resolution": None, "seed": 0,
                  "uncertainty": False, "tiled_strength": None}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="official .pth, transformers/diffusers folder, dav2_jax folder or training run directory")
    p.add_argument("--input", required=True, help="an image or video, a folder, a .txt list of paths, or a glob")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--recursive", action="store_true", help="with a folder --input: include its sub-folders")
    p.add_argument("--save", default=None,
                   help="comma-separated outputs: npy, png16, color, mm and pfm (metric depth), png (normals, "
                        "intrinsics); default: npy,png16,color (+mm for metric models; npy,png for Marigold "
                        "normals and intrinsics)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images run together (default: one per local device), split over all local devices")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="compute dtype (parameters stay float32); bfloat16 is for TPUs and GPUs")
    p.add_argument("--compilation-cache", default=compilation_cache.DEFAULT_DIR,
                   help="folder of JAX's persistent compilation cache ('off' disables it); default %(default)s")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "heads_first"],
                   help="attention kernel; auto: heads_first on CPU (faster there), xla on TPU/GPU")
    p.add_argument("--input-size", type=int, default=None, help="DAv2: short side of the network input (×14)")
    p.add_argument("--max-depth", type=float, default=None, help="DAv2 metric .pth whose name lacks the range")
    p.add_argument("--tiled-size", type=int, default=None,
                   help="predict large images in overlapping tiles of the network's size, guided by a global pass: "
                        "DAv2: at this short side (×14, above --input-size); Marigold: at this long side (×8, above "
                        "--processing-resolution), by MultiDiffusion")
    p.add_argument("--steps", type=int, default=None, help="Marigold: denoising steps (default: the checkpoint's)")
    p.add_argument("--ensemble", type=int, default=None, help="Marigold: predictions per image (default 1)")
    p.add_argument("--ensemble-batch", type=int, default=None,
                   help="Marigold: ensemble members per image denoised at once (default 1)")
    p.add_argument("--processing-resolution", type=int, default=None, help="Marigold: long side (0 = native)")
    p.add_argument("--seed", type=int, default=None, help="Marigold: noise seed (default 0)")
    p.add_argument("--uncertainty", action="store_true", default=None,
                   help="Marigold: also write the ensemble uncertainty")
    p.add_argument("--tiled-strength", type=float, default=None,
                   help="Marigold with --tiled-size: fraction of the denoising steps the tiles run again from the "
                        "noised global prediction (default 0.5)")
    return p.parse_args(argv)


def _check_family(args, family: str) -> None:
    """Fill in this family's defaults; refuse flags that only the other family reads."""
    own, other = (DAV2_FLAGS, MARIGOLD_FLAGS) if family == "dav2" else (MARIGOLD_FLAGS, DAV2_FLAGS)
    wrong = ["--" + name.replace("_", "-") for name in other if getattr(args, name) is not None]
    if wrong:
        kind = "a Depth Anything V2" if family == "dav2" else "a Marigold"
        raise SystemExit(f"{args.model} is {kind} checkpoint; {', '.join(wrong)} only apply to the other family")
    for name, default in own.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def _setup_devices(args):
    """The `data` mesh over all local devices; --batch-size defaults to one image per device."""
    import jax
    import numpy as np

    devices = jax.local_devices()
    if args.batch_size is None:
        args.batch_size = len(devices)
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be at least 1, got {args.batch_size}")
    return jax.sharding.Mesh(np.array(devices), ("data",))


def main(argv=None) -> int:
    args = parse_args(argv)
    compilation_cache.enable(args.compilation_cache)
    try:
        marigold = predictors.model_family(args.model) == "marigold"
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    _check_family(args, "marigold" if marigold else "dav2")
    try:
        inputs = images.list_inputs(args.input, args.recursive)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    mesh = _setup_devices(args)
    if marigold:
        from launch import infer_marigold

        done, failed = infer_marigold.run(args, inputs, mesh)
    else:
        from launch import infer_dav2

        done, failed = infer_dav2.run(args, inputs, mesh)
    print(f"wrote {done} of {len(inputs)} inputs to {args.output}" + (f"; {len(failed)} unreadable: "
          + ", ".join(os.path.basename(f) for f in failed) if failed else ""))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
