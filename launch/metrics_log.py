"""`WORKDIR/metrics.jsonl`: the run's scalars, one JSON object per logged step, the source of truth for curves."""

import json

import jax
import numpy as np


class MetricsLog:
    """`WORKDIR/metrics.jsonl`, one JSON object per line; only process 0 writes.

    On resume, lines for steps after the restored checkpoint (written before a crash) are dropped, so the file
    reads as one uninterrupted run.
    """

    def __init__(self, path, resume_step):
        self.path = path
        self.active = jax.process_index() == 0
        if not self.active:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record):
        if self.active:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def to_python(tree):
    """{name: device scalar or array} -> {name: Python number or nested list}, for JSON."""
    return {k: (v.item() if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in jax.device_get(tree).items()}
