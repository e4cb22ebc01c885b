"""Names → tasks, data readers and evaluations: the only module that knows the concrete families.

`config.task` and each `config.data.sources.NAME.reader` is either a registered name or an import path
"package.module:Name" (a class or factory), so a user can train their own task or read their own data without
editing this file. A task factory is called with the whole config; a reader with the entry's remaining fields.
"""

import importlib
import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from dav2_jax.metric import MetricTask
from dav2_jax.student import StudentTask
from dav2_jax.teacher import TeacherTask
from launch import sample_grids
from launch.data import marigold_sources, pipeline, shaping, sources
from launch.eval import metrics, protocols
from marigold_jax.consistency import MarigoldLCMTask
from marigold_jax.training import MarigoldTask
from marigold_jax.vae_training import AutoencoderTask


def _dav2_teacher(config):
    return TeacherTask(**config.model)


def _dav2_student(config):
    return StudentTask(**config.model)


def _dav2_metric(config):
    return MetricTask(**config.model)


def _marigold(config):
    return MarigoldTask(**config.model)


def _marigold_lcm(config):
    return MarigoldLCMTask(**config.model)


def _marigold_vae(config):
    return AutoencoderTask(**config.model)


TASKS = {"dav2_teacher": _dav2_teacher, "dav2_student": _dav2_student, "dav2_metric": _dav2_metric,
         "marigold": _marigold, "marigold_lcm": _marigold_lcm, "marigold_vae": _marigold_vae}

READERS = {
    "synthetic": sources.SyntheticScenes,
    "hypersim": sources.Hypersim,
    "vkitti2": sources.VirtualKitti2,
    "irs": sources.IRS,
    "tartanair": sources.TartanAir,
    "blendedmvs": sources.BlendedMVS,
    "pseudo_labeled": sources.PseudoLabeled,
    "hypersim_normals": marigold_sources.HypersimNormals,
    "hypersim_lighting": marigold_sources.HypersimLighting,
    "interiorverse": marigold_sources.InteriorVerse,
    "sintel_normals": marigold_sources.SintelNormals,
}


def lookup(name, table, what):
    """`table[name]`, or the object an import path "package.module:Name" points to."""
    if name in table:
        return table[name]
    if ":" in name:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    raise ValueError(
        f"unknown {what} {name!r}: expected one of {sorted(table)} or an import path 'package.module:Name'"
    )


def build_task(config):
    return lookup(config.task, TASKS, "task")(config)


def build_source(name, entry):
    """One reader from a config entry {reader (default: the entry's name), weight, crop, resize, resize_method,
    **reader arguments}; with `crop`, its samples cut to that size (`shaping.Cropped`). `resize` acts on prepared
    examples: see `build_train_data`."""
    kwargs = {k: v for k, v in dict(entry).items() if k not in ("reader", "weight", *shaping.SHAPING_FIELDS)}
    source = lookup(entry.get("reader", name), READERS, "data reader")(**kwargs)
    return shaping.Cropped(source, entry["crop"]) if entry.get("crop") else source


def build_train_data(config, task):
    """The checkpointable training iterator (this process's share of each batch) and an example batch for init."""
    entries = dict(config.data.sources)
    if not entries:
        raise ValueError("config.data.sources is empty: give at least one source, e.g. the synthetic scenes")
    names = sorted(entries)
    srcs = [build_source(name, entries[name]) for name in names]
    weights = [float(entries[name].get("weight", 1.0)) for name in names]
    if config.data.get("batch_per_source", False):
        dataset = pipeline.per_source_batches(srcs, weights, config.seed, config.batch_size,
                                              config.data.max_bad_fraction, names)
        prepare = [_resized(task.prepare, name, entries[name]) for name in names]
    else:
        resized = [name for name in names if entries[name].get("resize")]
        if resized:
            raise ValueError(f"data.sources {resized} set `resize`, which needs --config.data.batch_per_source=True "
                             "(per-source prepare); or drop the resize")
        dataset = pipeline.mixture(srcs, weights, config.seed, config.data.max_bad_fraction, names)
        prepare = task.prepare
    iterator = pipeline.train_iterator(
        dataset, prepare, config.seed, config.batch_size, config.data.worker_count,
        config.data.read_threads, config.data.read_buffer,
    )
    first = prepare[0] if isinstance(prepare, list) else prepare
    return iterator, pipeline.example_batch(srcs[0], first)


def _resized(prepare, name, entry):
    """`prepare`, followed by the entry's `resize` (H, W) with its `resize_method` when it has one."""
    if not entry.get("resize"):
        return prepare
    if entry.get("resize_method") not in shaping.METHODS:
        raise ValueError(f"data.sources.{name}.resize needs resize_method in {shaping.METHODS}, got "
                         f"{entry.get('resize_method')!r}")
    return shaping.Resized(prepare, entry["resize"], entry["resize_method"])


def _score(kind, prediction, batch, spec):
    """Per-sample metrics of one sample's prediction against its ground truth, by the task's prediction kind.

    Depth kinds ("disparity", "depth", "metric"; see `launch.eval.protocols`): AbsRel and δ1 after the kind's
    alignment against batch["depth"] (metres); "normals": angular errors (degrees) against batch["normals"].
    Raises `metrics.EmptyMask` when the sample has no scored pixel.
    """
    if kind == "normals":
        scores = metrics.normals_metrics(prediction, batch["normals"], batch["valid"])
        return {"mean_angle": scores["mean"], "within_11_25": scores["within_11_25"]}
    scores = protocols.score_depth(prediction, batch["depth"], batch["valid"], kind, spec)
    return {"abs_rel": scores["abs_rel"], "delta1": scores["delta1"]}


EVAL_KINDS = (*protocols.OUTPUT_KINDS, "normals")
DEFAULT_NUM_IMAGES = 4  # held-out samples pictured at each evaluation when the config does not say
PREDICTION = "__prediction__"  # the key of the prediction among a gathered batch's arrays


def build_evaluate(config, task):
    """The periodic held-out evaluation `(params, frozen, put_batch) -> (scores, samples)`, or None when
    `config.eval_every` is 0.

    The task predicts (`task.predict(params, frozen, batch, rng)`, jitted, with a fixed key so evaluations are
    comparable) and says what its prediction is (`task.prediction_kind`); scoring is the benchmarks' own
    (`launch.eval`), per sample, averaged over samples: scores is {"eval/NAME": float}. samples: on process 0, the
    picture of the first `config.eval.num_images` held-out samples (`launch.sample_grids.render`: input |
    prediction | ground truth, drawn by the prediction kind; the inputs from `task.input_images(batch)`), uint8
    [H, W, 3]; None on other processes or with num_images 0.
    """
    if not config.eval_every:
        return None
    kind = getattr(task, "prediction_kind", None)
    if kind not in EVAL_KINDS or not hasattr(task, "predict"):
        raise ValueError(
            f"task {config.task!r} cannot be evaluated: it needs predict(params, frozen, batch, rng) and a "
            f"prediction_kind in {EVAL_KINDS} (has {kind!r}); or set --config.eval_every=0"
        )
    num_images = int(config.eval.get("num_images", DEFAULT_NUM_IMAGES))
    if num_images and not hasattr(task, "input_images"):
        raise ValueError(
            f"task {config.task!r} cannot show its held-out samples: it needs input_images(batch) -> uint8 "
            "[B, H, W, 3], its network inputs as RGB; or set --config.eval.num_images=0"
        )
    source = build_source("eval", config.eval.source)
    batches = pipeline.eval_batches(source, task.prepare, config.eval.batch_size, config.eval.num_samples)
    spec = protocols.DepthSpec(config.eval.min_depth, config.eval.max_depth)
    predict = jax.jit(task.predict)
    truth = ("normals", "valid") if kind == "normals" else ("depth", "valid")
    rng = jax.random.key(config.seed)
    gather = lambda tree: jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)

    def evaluate(params, frozen, put_batch):
        scores, shown = [], []
        for local in batches:
            batch = put_batch(local)
            wanted = len(shown) < num_images  # the whole batch (inputs too) only while samples are still needed
            host = gather({**(batch if wanted else {name: batch[name] for name in truth}),
                           PREDICTION: predict(params, frozen, batch, rng)})
            for i, p in enumerate(host[PREDICTION]):
                try:
                    scores.append(_score(kind, p, {name: host[name][i] for name in truth}, spec))
                except metrics.EmptyMask:
                    continue
            if wanted:
                images = task.input_images(host)
                for i in range(min(num_images - len(shown), len(images))):
                    shown.append((images[i], host[PREDICTION][i], *(host[name][i] for name in truth)))
        names = ("mean_angle", "within_11_25") if kind == "normals" else ("abs_rel", "delta1")
        results = {f"eval/{name}": float(np.mean([s[name] for s in scores])) if scores else math.nan for name in names}
        if not shown or jax.process_index() != 0:
            return results, None
        columns = [np.stack(column) for column in zip(*shown)]
        return results, sample_grids.render(kind, *columns, min_depth=spec.min_depth, max_depth=spec.max_depth)

    return evaluate
