"""Put a Depth Anything V2 teacher's disparity on unlabelled images: the students' training data.

    python launch/pseudo_label.py --model MODEL --input SOURCE --output DIR [--input-size 518] [--batch-size 8]
                                  [--flip] [--num-images N] [--shard-size 1024]

MODEL: anything `dav2_jax.load` reads, including a training run directory (newest step, EMA weights when kept;
`--step` for another). SOURCE: a folder of images (recursive), a text file of image paths, `tfds:NAME[:SPLIT]` (a
prepared TFDS data set, read without TensorFlow) or `synthetic` (generated scenes; `--num-images` of them).
DIR gets ArrayRecord shards of {name, the image's original encoded bytes, float16 disparity at the image's own
size} and a manifest; read it with the `pseudo_labeled` data reader. Rerunning the same command resumes: finished
shards are kept, the rest are labelled. With several processes (hosts), each labels its share of the shards.
"""

import argparse
import logging
import os
import sys

from launch import mesh
from launch.data import labelling, unlabeled


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="teacher: .pth, transformers/dav2_jax folder or training run")
    p.add_argument("--step", type=int, default=None, help="training run: the checkpoint step (default: newest)")
    p.add_argument("--input", required=True, help="folder, text file of paths, tfds:NAME[:SPLIT] or synthetic")
    p.add_argument("--output", required=True, help="output folder (created; resumed when it exists)")
    p.add_argument("--input-size", type=int, default=None,
                   help="short side of the network input, multiple of 14 (default: 518, or the crop a training "
                        "run was trained at)")
    p.add_argument("--batch-size", type=int, default=8, help="images per network call (per process)")
    p.add_argument("--flip", action="store_true", help="average with the horizontally flipped prediction")
    p.add_argument("--num-images", type=int, default=None, help="synthetic: how many; otherwise: the first N only")
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard (the unit of resumption)")
    p.add_argument("--synthetic-size", default="70x98", help="synthetic: HEIGHTxWIDTH of the generated images")
    p.add_argument("--synthetic-seed", type=int, default=2, help="synthetic: scene seed (the demo teacher uses 0)")
    p.add_argument("--tfds-data-dir", default=None, help="tfds: the TFDS data directory (default: TFDS's own)")
    p.add_argument("--workers", type=int, default=4, help="threads reading, decoding and resizing images")
    p.add_argument("--attention", default=None, choices=["xla", "heads_first"],
                   help="attention kernel; default: heads_first on CPU, xla elsewhere")
    return p.parse_args(argv)


def _size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--synthetic-size must be HEIGHTxWIDTH, e.g. 70x98; got {text!r}") from None
    return height, width


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    mesh.initialize_distributed()
    import jax

    import dav2_jax
    from dav2_jax import runs

    attention = args.attention or ("heads_first" if jax.default_backend() == "cpu" else "xla")
    model, params = dav2_jax.load(args.model, attention_impl=attention, step=args.step)
    input_size = args.input_size
    if input_size is None:
        is_run = runs.is_run_dir(args.model)
        input_size = int(runs.run_config(args.model, args.step)["model"].get("crop", 518)) if is_run else 518
    images = unlabeled.open_unlabeled(args.input, args.num_images, _size(args.synthetic_size), args.synthetic_seed,
                                      args.tfds_data_dir)
    settings = {
        "model": os.path.abspath(args.model), "step": args.step, "input": args.input, "input_size": input_size,
        "flip": args.flip, "shard_size": args.shard_size, "images": len(images),
        "images_hash": unlabeled.fingerprint(images),
        **({"synthetic_size": args.synthetic_size, "synthetic_seed": args.synthetic_seed}
           if args.input == "synthetic" else {}),
    }
    labeller = labelling.Labeller(model, params, input_size, args.batch_size, args.flip)
    summary = labelling.label_collection(images, labeller, args.output, settings, args.shard_size, args.workers,
                                         progress=jax.process_index() == 0)
    print(f"labelled {summary['labelled']} images, skipped {summary['skipped']} unreadable "
          f"({summary['images_per_second']:.2f} images/s on process {jax.process_index()}; "
          f"{summary['shards_done_before']} shards were already done)")
    if summary["manifest"] is not None:
        manifest = summary["manifest"]
        print(f"wrote {args.output}: {manifest['records']} pseudo labels in {len(manifest['shards'])} shards, "
              f"{len(manifest['skipped'])} images skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
