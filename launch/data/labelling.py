"""Pseudo-labelling: a teacher's disparity for every image of a collection, written as resumable ArrayRecord shards.

`Labeller` is `dav2_jax.infer_image` for many images at once: the same host preprocessing (lower-bound bicubic
resize to multiples of 14, ImageNet normalisation), the network jitted on batches of one network size spread over
this process's devices, and the same bilinear align-corners resize back to each image's own size (on the host, so
that images of many sizes do not each compile a program). `label_collection` cuts the collection into shards of
`shard_size` consecutive images, gives each process every `process_count`-th shard and skips shards already done,
so a killed run restarted with the same command finishes without duplicates or gaps (see `pseudo_store`).
"""

import concurrent.futures
import logging
import sys
import time

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dav2_jax.dpt import resize_align_corners
from dav2_jax.preprocess import preprocess
from launch.data import pseudo_store, unlabeled
from launch.images import UnreadableImage

log = logging.getLogger(__name__)


class Labeller:
    """Batched relative-disparity prediction with a Depth Anything V2 model on this process's devices.

    batch_size is rounded up to a multiple of the local device count; a short batch is padded (the padding's
    outputs are dropped), so each network size compiles once. flip: average with the prediction for the mirrored
    image (mirrored back).
    """

    def __init__(self, model, params, input_size=518, batch_size=8, flip=False, devices=None):
        if model.max_depth is not None:
            raise ValueError(f"pseudo labels are relative disparity; got a metric model (max_depth {model.max_depth})")
        devices = list(devices or jax.local_devices())
        mesh = Mesh(np.array(devices), ("batch",))
        self.sharding = NamedSharding(mesh, PartitionSpec("batch"))
        replicated = NamedSharding(mesh, PartitionSpec())
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        self.input_size = input_size
        self.params = jax.device_put(params, replicated)

        def forward(params, x):
            out = model.apply(params, x)
            if flip:
                out = 0.5 * (out + model.apply(params, x[:, :, ::-1])[:, :, ::-1])
            return out

        self._forward = jax.jit(forward, in_shardings=(replicated, self.sharding), out_shardings=self.sharding)

    def prepare(self, image):
        """Host side: RGB uint8 [H, W, 3] → network input float32 [h, w, 3] (as `infer_image`)."""
        return preprocess(image, self.input_size)

    def __call__(self, inputs, sizes):
        """Network inputs (a list of [h, w, 3], any mix of sizes) → float32 disparity at each of `sizes` (H, W)."""
        out = [None] * len(inputs)
        groups = {}
        for i, x in enumerate(inputs):
            groups.setdefault(x.shape, []).append(i)
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                x = np.stack([inputs[i] for i in chunk])
                if len(chunk) < self.batch_size:
                    x = np.concatenate([x, np.zeros((self.batch_size - len(chunk), *x.shape[1:]), x.dtype)])
                pred = np.asarray(self._forward(self.params, jax.device_put(x, self.sharding)))
                for i, p in zip(chunk, pred):
                    out[i] = resize_align_corners(p[None, :, :, None], *sizes[i], xp=np)[0, :, :, 0]
        return out


def _load(images, i):
    """(name, encoded bytes, RGB image) of image i, or (name, None, reason) when it cannot be read or decoded."""
    name = images.name(i)
    try:
        encoded = images.encoded(i)
        return name, encoded, unlabeled.decode(encoded, name)
    except (OSError, UnreadableImage) as e:
        return name, None, str(e)


def label_shard(images, labeller, indices, pool, window, on_progress):
    """Label images `indices` → (record bytes in index order, skipped [{"name", "reason"}]).

    Images are read and preprocessed by `pool`'s threads `window` at a time; `on_progress(n)` after each window.
    """
    records, skipped = [], []
    for start in range(0, len(indices), window):
        part = indices[start:start + window]
        loaded = list(pool.map(lambda i: _load(images, i), part))
        good = [item for item in loaded if item[1] is not None]
        for name, _, reason in (item for item in loaded if item[1] is None):
            skipped.append({"name": name, "reason": reason})
        inputs = list(pool.map(lambda item: labeller.prepare(item[2]), good))
        preds = labeller(inputs, [item[2].shape[:2] for item in good])
        records.extend(pseudo_store.encode_record(name, encoded, p) for (name, encoded, _), p in zip(good, preds))
        on_progress(len(part))
    return records, skipped


def label_collection(images, labeller, root, settings, shard_size=1024, workers=4, progress=True):
    """Pseudo-label this process's unfinished shards of `images` into `root`; returns a summary dict.

    Shard k holds images [k · shard_size, (k + 1) · shard_size); process p labels the shards k with
    k % process_count == p. When every shard is done (on all processes), process 0 writes the manifest.
    Unreadable images are named on stderr, skipped and counted in the shard notes and the manifest.
    """
    pseudo_store.check_settings(root, settings)
    num_shards = -(-len(images) // shard_size)
    mine = [k for k in range(num_shards) if k % jax.process_count() == jax.process_index()]
    todo = [k for k in mine if not pseudo_store.shard_done(root, k)]
    total = sum(min(shard_size, len(images) - k * shard_size) for k in todo)
    if len(todo) < len(mine):
        log.info("resuming: %d of this process's %d shards are done", len(mine) - len(todo), len(mine))
    from tqdm import tqdm

    labelled = skipped_count = 0
    began = time.perf_counter()
    window = max(4 * labeller.batch_size, 32)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, tqdm(
        total=total, unit="img", dynamic_ncols=True, disable=not progress, file=sys.stderr
    ) as bar:
        for k in todo:
            indices = list(range(k * shard_size, min((k + 1) * shard_size, len(images))))
            records, skipped = label_shard(images, labeller, indices, pool, window, bar.update)
            for item in skipped:
                bar.write(f"skipped {item['name']}: {item['reason']}", file=sys.stderr)
            pseudo_store.write_shard(root, k, records, skipped)
            labelled += len(records)
            skipped_count += len(skipped)
    seconds = time.perf_counter() - began
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("pseudo_label: all shards written")
    manifest = None
    if jax.process_index() == 0 and all(pseudo_store.shard_done(root, k) for k in range(num_shards)):
        manifest = pseudo_store.write_manifest(root, num_shards, settings)
    return {
        "labelled": labelled, "skipped": skipped_count, "seconds": seconds,
        "images_per_second": (labelled + skipped_count) / seconds if seconds > 0 else float("nan"),
        "shards_done_before": len(mine) - len(todo), "manifest": manifest,
    }
