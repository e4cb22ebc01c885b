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

from dav2_jax.teacher import TeacherTask
from launch.data import pipeline, sources
from launch.eval import metrics, protocols


def _dav2_teacher(config):
    return TeacherTask(**config.model)


TASKS = {"dav2_teacher": _dav2_teacher}

READERS = {
    "synthetic": sources.SyntheticScenes,
    "hypersim": sources.Hypersim,
    "vkitti2": sources.VirtualKitti2,
    "irs": sources.IRS,
    "tartanair": sources.TartanAir,
    "blendedmvs": sources.BlendedMVS,
    "pseudo_labeled": sources.PseudoLabeled,
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
    """One reader from a config entry {reader (default: the entry's name), weight, **reader arguments}."""
    kwargs = {k: v for k, v in dict(entry).items() if k not in ("reader", "weight")}
    return lookup(entry.get("reader", name), READERS, "data reader")(**kwargs)


def build_train_data(config, task):
    """The checkpointable training iterator (this process's share of each batch) and an example batch for init."""
    entries = dict(config.data.sources)
    if not entries:
        raise ValueError("config.data.sources is empty: give at least one source, e.g. the synthetic scenes")
    names = sorted(entries)
    srcs = [build_source(name, entries[name]) for name in names]
    weights = [float(entries[name].get("weight", 1.0)) for name in names]
    dataset = pipeline.mixture(srcs, weights, config.seed, config.data.max_bad_fraction, names)
    iterator = pipeline.train_iterator(
        dataset, task.prepare, config.seed, config.batch_size, config.data.worker_count,
        config.data.read_threads, config.data.read_buffer,
    )
    return iterator, pipeline.example_batch(srcs[0], task.prepare)


def _relative_depth_evaluation(config, task):
    """AbsRel and δ1 on the held-out source after least-squares scale and shift in disparity space (DAv2)."""
    source = build_source("eval", config.eval.source)
    batches = pipeline.eval_batches(source, task.prepare, config.eval.batch_size, config.eval.num_samples)
    spec = protocols.DepthSpec(config.eval.min_depth, config.eval.max_depth)
    predict = jax.jit(task.predict)

    def evaluate(params, frozen, put_batch):
        scores = []
        for local in batches:
            batch = put_batch(local)
            pred, depth, valid = (
                np.asarray(multihost_utils.process_allgather(x, tiled=True))
                for x in (predict(params, frozen, batch), batch["depth"], batch["valid"])
            )
            for p, d, v in zip(pred, depth, valid):
                try:
                    scores.append(protocols.score_depth(p, d, v, "disparity", spec))
                except metrics.EmptyMask:
                    continue
        if not scores:
            return {"eval/abs_rel": math.nan, "eval/delta1": math.nan}
        return {
            "eval/abs_rel": float(np.mean([s["abs_rel"] for s in scores])),
            "eval/delta1": float(np.mean([s["delta1"] for s in scores])),
        }

    return evaluate


EVALUATIONS = {"dav2_teacher": _relative_depth_evaluation}


def build_evaluate(config, task):
    """The periodic evaluation `(params, frozen, put_batch) -> metrics` of the task, or None if eval_every is 0."""
    if not config.eval_every:
        return None
    if config.task not in EVALUATIONS:
        raise ValueError(
            f"task {config.task!r} has no periodic evaluation; set --config.eval_every=0 "
            f"(evaluations exist for {sorted(EVALUATIONS)})"
        )
    return EVALUATIONS[config.task](config, task)
