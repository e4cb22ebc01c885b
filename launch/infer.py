"""Predict depth for an image or a folder of images with a Depth Anything V2 or Marigold checkpoint.

    python launch/infer.py --model depth_anything_v2_vits.pth --input photos/ --output out/ [--input-size 518]

For each image NAME.ext it writes NAME.npy (float32 H×W: relative disparity, or metres for metric models),
NAME.png (16-bit, min-max normalised) and NAME_color.png. Unreadable files are reported and skipped.
"""

import argparse
import os
import sys

import numpy as np
import tqdm

from launch import images


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="official .pth, transformers/diffusers folder, dav2_jax folder or DAv2 training run directory")
    p.add_argument("--input", required=True, help="an image file or a folder of images")
    p.add_argument("--output", required=True, help="output folder (created)")
    p.add_argument("--input-size", type=int, default=518, help="DAv2: short side of the network input (×14)")
    p.add_argument("--batch-size", type=int, default=1, help="DAv2: images of one size run together")
    p.add_argument("--max-depth", type=float, default=None, help="DAv2 metric .pth whose name lacks the range")
    p.add_argument("--attention", default="auto", choices=["auto", "xla", "heads_first"],
                   help="attention kernel; auto: heads_first on CPU (faster there), xla on TPU/GPU")
    p.add_argument("--steps", type=int, default=None, help="Marigold: denoising steps (default: the checkpoint's)")
    p.add_argument("--ensemble", type=int, default=1, help="Marigold: ensemble size")
    p.add_argument("--processing-resolution", type=int, default=None, help="Marigold: long side (0 = native)")
    p.add_argument("--seed", type=int, default=0, help="Marigold: noise seed")
    p.add_argument("--uncertainty", action="store_true", help="Marigold: also write the ensemble uncertainty")
    return p.parse_args(argv)


def _batches(paths, batch_size):
    """Yield (paths, images) groups of equal-size images, reporting unreadable files as (path, error)."""
    group, group_paths = [], []
    for path in paths:
        try:
            rgb = images.read_rgb(path)
        except images.UnreadableImage as e:
            yield [path], e
            continue
        if group and (rgb.shape != group[0].shape or len(group) == batch_size):
            yield group_paths, np.stack(group)
            group, group_paths = [], []
        group.append(rgb)
        group_paths.append(path)
    if group:
        yield group_paths, np.stack(group)


def run_dav2(args, paths) -> tuple[int, list[str]]:
    import dav2_jax

    model, params = dav2_jax.load(args.model, max_depth=args.max_depth, attention_impl=args.attention)
    cmap = "Spectral_r" if model.max_depth is None else "Spectral"
    done, failed = 0, []
    with tqdm.tqdm(total=len(paths), unit="img", disable=None) as bar:
        for group_paths, batch in _batches(paths, args.batch_size):
            if isinstance(batch, Exception):
                tqdm.tqdm.write(f"skipped {batch}", file=sys.stderr)
                failed.append(group_paths[0])
            else:
                for path, depth in zip(group_paths, dav2_jax.infer_batch(model, params, batch, args.input_size)):
                    images.write_depth(args.output, os.path.splitext(os.path.basename(path))[0], depth, cmap)
                    done += 1
            bar.update(len(group_paths))
    return done, failed


def main(argv=None) -> int:
    args = parse_args(argv)
    paths = images.list_inputs(args.input)
    os.makedirs(args.output, exist_ok=True)
    if os.path.exists(os.path.join(args.model, "model_index.json")):
        from launch import infer_marigold

        done, failed = infer_marigold.run(args, paths)
    else:
        done, failed = run_dav2(args, paths)
    print(f"wrote {done} of {len(paths)} images to {args.output}" + (f"; {len(failed)} unreadable: "
          + ", ".join(os.path.basename(f) for f in failed) if failed else ""))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
