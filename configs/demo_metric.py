"""Metric fine-tuning's code path on a laptop CPU: the demo teacher's encoder learns metres on generated rooms.

    python launch/train.py --config configs/demo_teacher.py --workdir runs/demo
    python launch/train.py --config configs/demo_metric.py --workdir runs/demo_metric

Same task (bounded head, SiLog lambda 0.5), loop and optimizer (AdamW, poly decay, decoder at 10x) as
configs/metric_hypersim_l.py; the encoder comes from the relative demo run and the head starts fresh. Data: indoor
scenes with exact metric depth (20 m range, as Hypersim); held-out AbsRel is in metres, without alignment.
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("metric_hypersim_l.py")))["get_config"](encoder="vits")
    teacher = runpy.run_path(str(Path(__file__).with_name("demo_teacher.py")))["get_config"]()
    for field in ("batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        c[field] = teacher[field]
    c.total_steps = 300
    c.eval_every = 50

    c.model.crop = 70
    c.model.dtype = "float32"
    c.model.attention_impl = "heads_first"
    c.model.remat = False
    c.model.encoder_from = "runs/demo"  # the relative demo teacher (relative to the repository root)

    c.optimizer.lr.encoder = 2e-5
    c.optimizer.lr.decoder = 2e-4
    c.optimizer.clip_norm = 1.0

    c.data.sources = {"rooms": dict(reader="synthetic", weight=1.0, num_samples=2_400, height=70, width=98,
                                    seed=3, kind="indoor")}
    for field in ("worker_count", "read_threads", "read_buffer"):
        c.data[field] = teacher.data[field]

    c.eval = teacher.eval
    c.eval.source = dict(reader="synthetic", num_samples=64, height=70, width=70, seed=1_000_003, kind="indoor")
    c.eval.max_depth = c.model.max_depth
    return c
