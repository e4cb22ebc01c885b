"""`launch/plot.py`: curves of several runs from their metrics.jsonl alone, one panel per metric."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from launch import plot

ROOT = Path(__file__).resolve().parents[1]


def _run(directory, factor):
    """A metrics.jsonl as the loop writes it: training records every 2 steps, evaluations every 4 (from step 0)."""
    directory.mkdir()
    records = []
    for step in range(0, 9):
        if step and step % 2 == 0:
            records.append({"step": step, "loss": factor / step, "lr": 1e-3, "sample_ids": [1, 2]})
        if step % 4 == 0:
            records.append({"step": step, "eval/abs_rel": factor * (1 - step / 10), "eval/delta1": step / 10})
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def test_one_panel_per_metric_with_one_named_line_per_run(tmp_path):
    runs = {"a": _run(tmp_path / "a", 1.0), "b": _run(tmp_path / "b", 2.0)}
    figure = plot.curves({name: plot.read_metrics(tmp_path / name) for name in runs})
    assert [ax.get_title() for ax in figure.axes] == ["loss", "eval/abs_rel", "eval/delta1"]
    for ax in figure.axes:
        metric = ax.get_title()
        assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
        for line, records in zip(ax.get_lines(), runs.values()):
            points = [(r["step"], r[metric]) for r in records if metric in r]
            np.testing.assert_array_equal(np.stack(line.get_data(), 1), np.array(points))
    assert figure.axes[0].get_yscale() == "log" and figure.axes[1].get_yscale() == "linear"


def test_the_command_writes_a_png_with_the_chosen_panels(tmp_path):
    _run(tmp_path / "a", 1.0)
    _run(tmp_path / "b", 2.0)
    out = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "plot.py"), str(tmp_path / "a"), str(tmp_path / "b"),
         "--output", str(tmp_path / "figs" / "curves.png"), "--metrics", "loss", "lr"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "wrote 2 panels of 2 runs" in out.stdout
    with Image.open(tmp_path / "figs" / "curves.png") as image:
        assert image.format == "PNG"
        # two panels side by side at the default size and dpi
        assert image.size == (2 * round(plot.PANEL_SIZE[0] * 100), round(plot.PANEL_SIZE[1] * 100))


def test_a_metric_no_run_logged_is_named_with_the_ones_that_exist(tmp_path):
    _run(tmp_path / "a", 1.0)
    with pytest.raises(ValueError, match=r"no run logged 'eval/rmse'.*'eval/abs_rel'"):
        plot.curves({"a": plot.read_metrics(tmp_path / "a")}, ["eval/rmse"])
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot.read_metrics(tmp_path / "missing")
