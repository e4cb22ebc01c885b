"""Draw training curves from run directories' `metrics.jsonl`, no TensorBoard needed (e.g. a run copied from a pod).

    python launch/plot.py RUN_DIR [RUN_DIR ...] --output curves.png [--metrics loss eval/abs_rel ...]

One panel per metric against the step, several runs overlaid and named by their directory. By default the panels
are the training loss and every held-out metric ("eval/..."); `--metrics` picks any logged scalars instead. The
loss is drawn on a log scale when it is positive throughout.
"""

import argparse
import json
import math
import sys
from pathlib import Path

PANEL_SIZE = (4.2, 3.0)  # inches per panel
COLUMNS = 3  # panels per row at most


def read_metrics(run_dir):
    """The records of `run_dir`/metrics.jsonl (or of that file given directly), in file order."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.jsonl at {path}: expected a run directory written by launch/train.py")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def default_metrics(runs):
    """"loss", then every "eval/..." scalar any run logged, sorted."""
    names = _scalar_names(runs)
    held_out = sorted(k for k in names if k.startswith("eval/"))
    return (["loss"] if "loss" in names else []) + held_out


def curves(runs, metrics=None):
    """A matplotlib Figure, one panel per metric (titled with its name), one line per run (labelled with its name).

    runs: {name: records} as `read_metrics` returns; metrics: names to draw (default: `default_metrics`).
    """
    from matplotlib.figure import Figure

    metrics = list(metrics) if metrics else default_metrics(runs)
    if not metrics:
        raise ValueError("the runs logged neither a loss nor a held-out metric: name the scalars with --metrics")
    columns = min(COLUMNS, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(PANEL_SIZE[0] * columns, PANEL_SIZE[1] * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics):
        drawn = []
        for name, records in runs.items():
            points = [(r["step"], r[metric]) for r in records if _is_number(r.get(metric))]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, marker="o" if len(points) < 20 else None, markersize=3)
                drawn += values
        if not drawn:
            raise ValueError(f"no run logged {metric!r}; logged scalars: {sorted(_scalar_names(runs))}")
        if metric == "loss" and min(drawn) > 0:
            ax.set_yscale("log")
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes[len(metrics):]:
        ax.remove()
    return figure


def run_names(paths):
    """Each run's directory name, or its whole path where two names would clash."""
    names = [Path(p).resolve().name for p in paths]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(paths, names)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories (each with a metrics.jsonl)")
    parser.add_argument("--output", required=True, help="image file to write (PNG, SVG or PDF by its extension)")
    parser.add_argument("--metrics", nargs="+", default=None, help="scalars to draw (default: loss and eval/*)")
    parser.add_argument("--dpi", type=int, default=100, help="resolution of raster output")
    args = parser.parse_args(argv)
    runs = dict(zip(run_names(args.runs), (read_metrics(p) for p in args.runs)))
    figure = curves(runs, args.metrics)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=args.dpi)
    print(f"wrote {len(figure.axes)} panels of {len(runs)} runs to {args.output}")
    return 0


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_names(runs):
    return {k for records in runs.values() for r in records for k, v in r.items() if _is_number(v) and k != "step"}


if __name__ == "__main__":
    sys.exit(main())
