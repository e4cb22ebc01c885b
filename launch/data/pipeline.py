"""Grain pipelines: sources → shuffle → repeat → mixture → shard by process → `prepare` → batch → prefetch.

Two mixtures: `mixture` draws every sample from a source picked by the weights (sources of one image shape);
`per_source_batches` draws every *global batch* from one source, so sources of different image shapes are never
stacked and the jitted step compiles one program per source shape.

Determinism: the order of samples is a function of (`seed`, the sources, their weights, `worker_count`); each
example's augmentation draws from `np.random.default_rng((seed, position))`, where `position` is its place in the
global stream, so it does not depend on the number of hosts. The iterator is a Grain `DatasetIterator`, whose state
(`get_state()`) the checkpoint stores, so a resumed run continues with exactly the next unseen sample.
"""

import logging
import sys
import threading

import grain
import jax
import numpy as np

from launch.data.sources import BadSample

log = logging.getLogger(__name__)


class GuardedSource:
    """A random-access source whose unusable samples (`BadSample`) become None, which Grain drops.

    Each bad sample is logged with its name. Beyond `max_bad_fraction` of the samples read by this process
    (checked once `min(len(source), 100)` have been read) the run stops: too many bad files mean a wrong path or
    a broken copy of the data, not noise.
    """

    def __init__(self, source, max_bad_fraction, label):
        self.source = source
        self.max_bad_fraction = max_bad_fraction
        self.label = label
        self.read = 0
        self.bad = 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        self.read += 1
        try:
            return self.source[index]
        except BadSample as err:
            self.bad += 1
            log.warning("%s: skipped bad sample %s (%s bad of %d read)", self.label, err, self.bad, self.read)
            if self.read >= min(len(self.source), 100) and self.bad > self.max_bad_fraction * self.read:
                raise RuntimeError(
                    f"{self.label}: {self.bad} of {self.read} samples read were unusable, more than "
                    f"data.max_bad_fraction={self.max_bad_fraction}; last one: {err}. Check the dataset path and "
                    "files, or raise --config.data.max_bad_fraction"
                ) from err
            return None


def _shuffled(sources, seed, max_bad_fraction, labels):
    """Each source guarded, shuffled with seed + its index, reshuffled and repeated every epoch (endless)."""
    labels = labels or [f"source {i}" for i in range(len(sources))]
    return [
        grain.MapDataset.source(GuardedSource(src, max_bad_fraction, label)).shuffle(seed=seed + i).repeat()
        for i, (src, label) in enumerate(zip(sources, labels))
    ]


def mixture(sources, weights, seed, max_bad_fraction=0.01, labels=None):
    """An endless MapDataset drawing from `sources` in proportion to `weights`.

    Each source is shuffled with its own seed and reshuffled every epoch, so within an epoch of a source every
    sample appears exactly once.
    """
    if len(sources) != len(weights):
        raise ValueError(f"got {len(sources)} sources but {len(weights)} weights; give one weight per source")
    parts = _shuffled(sources, seed, max_bad_fraction, labels)
    return parts[0] if len(parts) == 1 else grain.MapDataset.mix(parts, weights)


class PerSourceBatches(grain.MapDataset):
    """An endless stream of `(source_index, sample)` in which every global batch comes from one source.

    Global batch b (stream items b * global_batch ... + global_batch - 1) takes source s_b drawn with probabilities
    `weights` (normalised) from `np.random.default_rng((seed, block))`, in blocks of `BLOCK` batches, and is the k-th
    batch of that source, k = the number of earlier batches of source s_b: its items are items k * global_batch ...
    of that source's endless shuffled stream (`parts[s]`). Every item is a pure function of its stream position, so
    a Grain iterator over it resumes exactly from its saved state. A bad sample (None, see `GuardedSource`) is
    replaced by the same position one epoch of that source later, and so on, so batches never mix sources.
    """

    BLOCK = 4096  # batches whose sources are drawn at once

    def __init__(self, parts, lengths, weights, global_batch, seed):
        super().__init__(parts)
        total = float(sum(weights))
        if len(parts) != len(weights) or total <= 0 or min(weights) < 0:
            raise ValueError(f"per-source batching needs one non-negative weight per source ({len(parts)}) with a "
                             f"positive sum, got {list(weights)}")
        self.parts, self.lengths, self.global_batch, self.seed = parts, lengths, global_batch, seed
        self.probabilities = np.asarray(weights, np.float64) / total
        self.choices, self.counts = [], [np.zeros(len(parts), np.int64)]  # per block; counts before each block
        self.lock = threading.Lock()

    def __len__(self):
        return sys.maxsize // self.global_batch * self.global_batch

    def __getstate__(self):  # for Grain's worker processes: no lock, no cache
        return {**self.__dict__, "lock": None, "choices": [], "counts": self.counts[:1]}

    def __setstate__(self, state):
        self.__dict__.update(state, lock=threading.Lock())

    def batch_source(self, batch):
        """(source index, rank of this batch among that source's batches) of global batch `batch`."""
        block, offset = divmod(batch, self.BLOCK)
        with self.lock:
            while len(self.choices) <= block:
                rng = np.random.default_rng((self.seed, len(self.choices)))
                drawn = rng.choice(len(self.parts), size=self.BLOCK, p=self.probabilities)
                self.counts.append(self.counts[-1] + np.bincount(drawn, minlength=len(self.parts)))
                self.choices.append(drawn)
            drawn, before = self.choices[block], self.counts[block]
        source = int(drawn[offset])
        return source, int(before[source] + np.count_nonzero(drawn[:offset] == source))

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        batch, row = divmod(index, self.global_batch)
        source, rank = self.batch_source(batch)
        position = rank * self.global_batch + row
        sample = self.parts[source][position]
        while sample is None:
            position += self.lengths[source]
            sample = self.parts[source][position]
        return source, sample

    def __str__(self):
        return f"PerSourceBatches({len(self.parts)} sources, p={self.probabilities.round(4).tolist()})"


def per_source_batches(sources, weights, seed, global_batch_size, max_bad_fraction=0.01, labels=None):
    """An endless MapDataset of `(source_index, sample)` whose global batches each come from one source, picked in
    proportion to `weights` (see `PerSourceBatches`); each source is shuffled with its own seed every epoch, as in
    `mixture`. Give `train_iterator` one `prepare` per source."""
    parts = _shuffled(sources, seed, max_bad_fraction, labels)
    return PerSourceBatches(parts, [len(src) for src in sources], weights, global_batch_size, seed)


class ProcessShare(grain.MapDataset):
    """One process's rows of every global batch of an endless stream.

    Local item j is stream item `(j // local) * global_batch + process_index * local + j % local` (local =
    global_batch / process_count), so the processes' local batches, stacked in process order, are exactly the
    global batch a single process reads.
    """

    def __init__(self, parent, global_batch, process_index, process_count):
        super().__init__(parent)
        self.global_batch = global_batch
        self.local = global_batch // process_count
        self.offset = process_index * self.local

    def __len__(self):
        return len(self.parents[0]) // self.global_batch * self.local

    def position(self, index):
        """The stream position of local item `index`."""
        batch, row = divmod(index, self.local)
        return batch * self.global_batch + self.offset + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self.parents[0][self.position(index)]

    def __str__(self):
        return f"ProcessShare(rows {self.offset}..{self.offset + self.local - 1} of every {self.global_batch})"


class _Prepare:
    """Apply `prepare(sample, rng)` with an rng derived from the seed and the sample's global stream position."""

    def __init__(self, prepare, seed, share):
        self.prepare = prepare
        self.seed = seed
        self.share = share

    def __call__(self, local_index, sample):
        if sample is None:
            return None
        rng = np.random.default_rng((self.seed, self.share.position(local_index)))
        if isinstance(self.prepare, (list, tuple)):
            source, sample = sample
            return self.prepare[source](sample, rng)
        return self.prepare(sample, rng)


def train_iterator(
    dataset, prepare, seed, global_batch_size, worker_count=0, read_threads=2, read_buffer=16
):
    """Checkpointable iterator over this process's share of each global batch (dicts of stacked numpy arrays).

    dataset: an endless MapDataset (see `mixture`); prepare: `(sample, np.random.Generator) -> example dict`, or for
    a `per_source_batches` dataset a list of such functions, one per source.
    worker_count > 0 runs the reading and `prepare` in that many worker processes.
    """
    process_index, process_count = jax.process_index(), jax.process_count()
    if global_batch_size % process_count:
        raise ValueError(
            f"batch_size {global_batch_size} must be a multiple of the number of processes ({process_count})"
        )
    if isinstance(dataset, PerSourceBatches) != isinstance(prepare, (list, tuple)):
        raise ValueError("give one prepare function per source exactly when the dataset is per_source_batches")
    if isinstance(dataset, PerSourceBatches) and dataset.global_batch != global_batch_size:
        raise ValueError(f"the per-source batches are {dataset.global_batch} long but the global batch is "
                         f"{global_batch_size}; build them with the same batch size")
    share = ProcessShare(dataset, global_batch_size, process_index, process_count)
    ds = share.map_with_index(_Prepare(prepare, seed, share))
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=read_buffer))
    ds = ds.batch(global_batch_size // process_count, drop_remainder=True)
    if worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return iter(ds)


def example_batch(source, prepare):
    """One prepared example with a leading batch axis of 1: shapes and dtypes for initialising a model."""
    for index in range(len(source)):
        try:
            sample = source[index]
        except BadSample:
            continue
        return {k: np.asarray(v)[None] for k, v in prepare(sample, np.random.default_rng(0)).items()}
    raise ValueError(f"no usable sample in {source!r}: every sample raised BadSample")


def eval_batches(source, prepare, global_batch_size, num_samples=None):
    """This process's share of the held-out set as a list of batches, prepared deterministically (`rng=None`).

    The first `num_samples` samples (all when None), rounded down to whole global batches; each process reads and
    prepares only its own part of each batch. A held-out sample that cannot be read stops the run with its name:
    skipping it would change what every evaluation scores.
    """
    total = len(source) if num_samples is None else min(num_samples, len(source))
    usable = total - total % global_batch_size
    if usable == 0:
        raise ValueError(
            f"the held-out set has {total} samples, fewer than one batch of {global_batch_size}; "
            "lower --config.eval.batch_size or add samples"
        )
    process_index, process_count = jax.process_index(), jax.process_count()
    local = global_batch_size // process_count
    batches = []
    for start in range(0, usable, global_batch_size):
        part = []
        for index in range(start + process_index * local, start + (process_index + 1) * local):
            try:
                part.append(prepare(source[index], None))
            except BadSample as err:
                raise ValueError(f"held-out sample {index} cannot be used ({err}); fix or remove it") from err
        batches.append({k: np.stack([np.asarray(e[k]) for e in part]) for k in part[0]})
    return batches
