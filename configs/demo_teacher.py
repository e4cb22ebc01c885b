"""The teacher's code path on a laptop CPU: ViT-S from scratch on procedural scenes at 70 x 70, no download.

    python launch/train.py --config configs/demo_teacher.py --workdir runs/demo

Same task, loop, losses, pipeline and evaluation as configs/teacher_g.py; only sizes differ. Without DINOv2 weights
(nothing is downloaded) both groups start from random init and share one learning rate.
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("teacher_s.py")))["get_config"]()
    c.total_steps = 600
    c.batch_size = 8
    c.log_every = 10
    c.eval_every = 100
    c.checkpoint_every = 100
    c.keep_checkpoints = 2

    c.model.crop = 70
    c.model.attention_impl = "heads_first"

    c.optimizer.lr.encoder = 2e-4
    c.optimizer.lr.decoder = 2e-4
    c.optimizer.clip_norm = 1.0
    c.schedule.kind = "cosine"
    c.schedule.warmup_steps = 30

    # 70 x 98 renders: the 70 x 70 crop slides horizontally; 4,800 scenes = 8 epochs' worth never repeat.
    c.data.sources = {"synthetic": dict(reader="synthetic", weight=1.0, num_samples=4_800, height=70, width=98,
                                        seed=0, kind="mixed")}
    c.data.worker_count = 0
    c.data.read_threads = 1
    c.data.read_buffer = 16

    c.eval.source = dict(reader="synthetic", num_samples=64, height=70, width=70, seed=1_000_003, kind="mixed")
    c.eval.batch_size = 16
    c.eval.num_samples = 64
    return c
