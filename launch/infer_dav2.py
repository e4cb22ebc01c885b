"""Depth Anything V2 part of `launch/infer.py`: images bucketed by network size, batches over every device.

Images are grouped by the network input size the official preprocessing gives them (`dav2_jax.preprocess.
network_size`: aspect-dependent, resolution-independent), so a folder of phone and camera photos compiles one
program per aspect ratio, not one per image size; every batch is padded to the full --batch-size (rounded up to
a multiple of the devices) so that a bucket's last batch reuses its program. The network runs on a `data` mesh
over all local devices; preprocessing the next batch on the host overlaps the current batch's forward pass.
With --tiled-size, each image is predicted by `dav2_jax.tiling.infer_tiled` instead (tiles batched the same way);
videos go through `launch.video`.
"""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from launch import images, outputs, video


def save_kinds(args, metric: bool) -> list[str]:
    """The --save list for a Depth Anything model (default npy, png16, color, and mm for metric models)."""
    if args.save is None:
        return ["npy", "png16", "color"] + (["mm"] if metric else [])
    kinds = [k.strip() for k in args.save.split(",") if k.strip()]
    allowed = list(outputs.DEPTH_SUFFIXES) if metric else [k for k in outputs.DEPTH_SUFFIXES if k != "mm"]
    wrong = [k for k in kinds if k not in allowed]
    if wrong or not kinds:
        extra = " (mm needs a metric model: relative depth has no unit)" if "mm" in wrong else ""
        raise SystemExit(f"--save expects some of {', '.join(allowed)}, got {args.save!r}{extra}")
    return kinds


def buckets(inputs, input_size: int):
    """Group image `inputs` by network size: ({(h, w): [(index, (H, W))]}, [(index, UnreadableImage)])."""
    from dav2_jax.preprocess import network_size

    groups, bad = {}, []
    for i, item in enumerate(inputs):
        try:
            size = images.image_size(item.path)
        except images.UnreadableImage as e:
            bad.append((i, e))
            continue
        groups.setdefault(network_size(*size, input_size), []).append((i, size))
    return groups, bad


class Runner:
    """A loaded model placed on `mesh`: `submit(rgbs)` starts a padded, sharded forward pass, `result` fetches it."""

    def __init__(self, model, params, mesh, batch_size: int, input_size: int):
        devices = mesh.devices.size
        self.model, self.input_size = model, input_size
        self.batch = -(-batch_size // devices) * devices
        self.params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
        self.sharding = NamedSharding(mesh, PartitionSpec("data"))

    def forward(self, x: np.ndarray) -> jax.Array:
        """Network inputs [n ≤ batch, h, w, 3] → depth [batch, h, w] (padded rows last), computation started."""
        from dav2_jax.preprocess import forward

        x = np.concatenate([x, np.zeros((self.batch - len(x), *x.shape[1:]), x.dtype)])
        return forward(self.model, self.params, jax.device_put(jnp.asarray(x), self.sharding))

    def run(self, x: np.ndarray) -> np.ndarray:
        """`forward` for any number of inputs, `batch` at a time, fetched: depth [n, h, w]."""
        return np.concatenate([np.asarray(self.forward(x[i : i + self.batch]))[: len(x[i : i + self.batch])]
                               for i in range(0, len(x), self.batch)])

    def submit(self, rgbs: list[np.ndarray]):
        from dav2_jax.preprocess import preprocess

        x = np.stack([preprocess(rgb, self.input_size) for rgb in rgbs])
        return self.forward(x), [r.shape[:2] for r in rgbs]

    @staticmethod
    def result(pending) -> list[np.ndarray]:
        """Depths [H, W] float32 of the submitted images, resized back to each image's size."""
        from dav2_jax.preprocess import resize_depth

        depth, sizes = pending
        depth = np.asarray(depth)
        return [resize_depth(d[None], size)[0] for d, size in zip(depth, sizes)]


def run(args, inputs, mesh) -> tuple[int, list[str]]:
    """Predict every image of `inputs` (`launch.images.Input`s); returns (written, unreadable paths)."""
    import dav2_jax

    model, params = dav2_jax.load(args.model, max_depth=args.max_depth, dtype=jnp.dtype(args.dtype),
                                  attention_impl=args.attention)
    metric = model.max_depth is not None
    kinds = save_kinds(args, metric)
    cmap = "Spectral" if metric else "Spectral_r"
    suffixes = [outputs.DEPTH_SUFFIXES[k] for k in kinds]
    videos = [i for i, item in enumerate(inputs) if item.is_video]
    try:
        stems = outputs.plan_stems(inputs, args.output, suffixes + (video.suffixes(kinds) if videos else []))
    except outputs.OutputConflict as e:
        raise SystemExit(str(e)) from e
    if args.tiled_size is not None and (args.tiled_size % 14 or args.tiled_size <= args.input_size):
        raise SystemExit(f"--tiled-size must be a multiple of 14 above --input-size {args.input_size}, "
                         f"got {args.tiled_size}")
    runner = Runner(model, params, mesh, args.batch_size, args.input_size)
    done, failed = _images(args, inputs, [i for i in range(len(inputs)) if i not in videos], runner, stems, kinds,
                           cmap)
    for i in videos:
        done += video.run_dav2(runner, inputs[i].path, stems[i], kinds, cmap, runner.batch)
    return done, failed


def _images(args, inputs, indices, runner, stems, kinds, cmap) -> tuple[int, list[str]]:
    """The image part of `run`: bucketed batches, or one tiled prediction per image with --tiled-size."""
    groups, bad = buckets([inputs[i] for i in indices], args.input_size)
    groups = {size: [(indices[j], hw) for j, hw in members] for size, members in groups.items()}
    bad = [(indices[j], e) for j, e in bad]
    failed = [inputs[i].path for i, _ in bad]
    for _, e in bad:
        tqdm.tqdm.write(f"skipped {e}", file=sys.stderr)
    done, pending = 0, None
    with tqdm.tqdm(total=len(indices), unit="img", disable=None) as bar:
        bar.update(len(bad))
        for members in groups.values():
            for start in range(0, len(members), args.batch_size):
                wanted = [i for i, _ in members[start : start + args.batch_size]]
                chunk, rgbs, errors = images.read_many(inputs, wanted)
                for e in errors:
                    tqdm.tqdm.write(f"skipped {e}", file=sys.stderr)
                failed.extend(inputs[i].path for i in wanted if i not in chunk)
                bar.update(len(errors))
                if args.tiled_size is not None:
                    done += _tiled(args, runner, chunk, rgbs, stems, kinds, cmap, bar)
                    continue
                submitted = (chunk, runner.submit(rgbs)) if rgbs else None
                done += _finish(pending, stems, kinds, cmap, bar)
                pending = submitted
        done += _finish(pending, stems, kinds, cmap, bar)
    return done, failed


def _tiled(args, runner, chunk, rgbs, stems, kinds, cmap, bar) -> int:
    from dav2_jax.tiling import infer_tiled

    for i, rgb in zip(chunk, rgbs):
        depth = infer_tiled(runner.model, None, rgb, args.tiled_size, args.input_size, batch_size=runner.batch,
                            run=runner.run)
        outputs.write_depth(stems[i], depth, kinds, cmap)
        bar.update(1)
    return len(chunk)


def _finish(pending, stems, kinds, cmap, bar) -> int:
    if pending is None:
        return 0
    chunk, submitted = pending
    for i, depth in zip(chunk, Runner.result(submitted)):
        outputs.write_depth(stems[i], depth, kinds, cmap)
        bar.update(1)
    return len(chunk)
