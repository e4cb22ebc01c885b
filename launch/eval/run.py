"""The evaluation loop: predict, score per image, append to a resumable log, summarise.

Per-image results go to a JSON-lines file as they are computed: its first line identifies the run (model,
dataset, protocol, settings); each following line is one image (`index`, `name`, metrics, or `skipped` with the
reason). Restarting the same run skips the images already in the file; a different run refuses to mix in.
"""

import json
import os

import numpy as np
from tqdm import tqdm

from launch.eval import metrics, protocols


def score_sample(predictor, sample, task, spec):
    """Metrics of one sample: depth → `protocols.score_depth`; normals → `metrics.normals_metrics`;
    pairs (DA-2K) → {"pairs", "correct"} (a disparity prediction ranks larger as closer, depth smaller)."""
    if (task == "normals") != (predictor.kind == "normals"):
        raise ValueError(f"a {predictor.kind} model cannot be scored on a {task} benchmark")
    pred = predictor.predict(sample.rgb)
    if task == "depth":
        return protocols.score_depth(pred, sample.depth, sample.mask, predictor.kind, spec)
    if task == "normals":
        return metrics.normals_metrics(pred, sample.normals, sample.mask)
    correct = metrics.pair_correct(pred, sample.pairs, larger_is_closer=predictor.kind == "disparity")
    return {"pairs": int(correct.size), "correct": int(correct.sum())}


def summarize(task, records):
    """Benchmark numbers from per-image records: the mean of each metric over scored images (depth, normals), or
    DA-2K accuracy in % over all pairs."""
    scored = [r for r in records if "skipped" not in r]
    if not scored:
        raise ValueError("no image could be scored: see the skipped reasons in the per-image results")
    if task == "pairs":
        pairs = sum(r["pairs"] for r in scored)
        return {"accuracy": 100.0 * sum(r["correct"] for r in scored) / pairs, "pairs": pairs}
    keys = metrics.DEPTH_METRICS if task == "depth" else metrics.NORMALS_METRICS
    return metrics.mean_metrics([{k: r[k] for k in keys} for r in scored])


def _read_log(path, run):
    """Records already in the per-image log of this `run` ({} if none); refuses a log of another run.

    A last line cut short (the process killed while writing it) is dropped: that image is scored again.
    """
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    parsed = []
    for number, line in enumerate(lines):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise ValueError(f"{path}:{number + 1} is not JSON: the per-image log is damaged; delete it to "
                                 "start afresh") from None
    if not parsed:
        return {}
    if parsed[0].get("run") != run:
        raise ValueError(f"{path} holds results of another run ({parsed[0].get('run')}); expected {run}. Delete it or "
                         "choose another --output to start afresh")
    return {r["index"]: r for r in parsed[1:]}


def evaluate(predictor, reader, spec, run, log_path, limit=None):
    """Score every sample of `reader` (the first `limit`), resuming from `log_path`.

    spec: the `protocols.DepthSpec` for depth benchmarks (None otherwise); run: JSON-able identity of the run.
    Returns (records sorted by index, summary dict).
    """
    run = json.loads(json.dumps(run))
    done = _read_log(log_path, run)
    total = len(reader) if limit is None else min(limit, len(reader))
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    # rewrite what is kept (dropping a cut-short line) atomically, then append
    with open(log_path + ".tmp", "w") as log:
        for line in [{"run": run}, *(done[i] for i in sorted(done))]:
            log.write(json.dumps(line) + "\n")
    os.replace(log_path + ".tmp", log_path)
    with open(log_path, "a") as log:
        todo = [i for i in range(total) if i not in done]
        for i in tqdm(todo, total=total, initial=total - len(todo), desc=f"evaluating {run['dataset']}", unit="img"):
            sample = reader[i]
            try:
                record = {"index": i, "name": sample.name, **score_sample(predictor, sample, reader.task, spec)}
            except metrics.EmptyMask as e:
                record = {"index": i, "name": sample.name, "skipped": str(e)}
            done[i] = record
            log.write(json.dumps(record) + "\n")
            log.flush()
    records = [done[i] for i in sorted(done) if i < total]
    return records, summarize(reader.task, records)


def markdown(run, summary, records):
    """The summary as a Markdown document: what was run, one table row of numbers, skipped images."""
    keys = list(summary)
    skipped = [r for r in records if "skipped" in r]
    lines = [
        f"# {run['dataset']} — {run['protocol']} protocol",
        "",
        f"model `{run['model']}` ({run['kind']}), {len(records) - len(skipped)} images scored"
        + (f", {len(skipped)} skipped" if skipped else ""),
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(_fmt(summary[k]) for k in keys) + " |",
    ]
    lines += [f"- skipped `{r['name']}`: {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


def _fmt(value):
    return str(value) if isinstance(value, (int, np.integer)) else f"{value:.4f}"
