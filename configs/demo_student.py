"""The student's code path on a laptop CPU: ViT-S learning from the demo teacher's pseudo labels, no download.

    python launch/train.py --config configs/demo_teacher.py --workdir runs/demo
    python launch/pseudo_label.py --model runs/demo --input synthetic --num-images 2000 --output runs/demo_pseudo
    python launch/train.py --config configs/demo_student.py --workdir runs/demo_student

Same task, loop, losses (trimmed depth loss + feature alignment) and pipeline as configs/student_g.py; only sizes
differ, and, since DINOv2 cannot be downloaded here, the demo teacher's encoder stands in for it: the student's
encoder starts from it and the frozen feature model is it. The data are the pseudo labels only (2,000 generated
images the teacher never saw); the held-out scenes, with exact depth, are the demo teacher's.
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("student_s.py")))["get_config"]()
    teacher = runpy.run_path(str(Path(__file__).with_name("demo_teacher.py")))["get_config"]()
    for field in ("total_steps", "batch_size", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        c[field] = teacher[field]
    c.total_steps = 400

    c.model.crop = 70
    c.model.dtype = "float32"
    c.model.attention_impl = "heads_first"
    c.model.dinov2_init = ""
    c.model.encoder_from = "runs/demo"  # the demo teacher's encoder in DINOv2's place (relative to the repo root)
    c.model.feature_teacher = "runs/demo"

    c.optimizer.lr.encoder = 2e-5  # the paper's 1 : 10 between encoder and decoder
    c.optimizer.lr.decoder = 2e-4
    c.optimizer.clip_norm = 1.0
    c.schedule.kind = "cosine"
    c.schedule.warmup_steps = 30

    c.data.sources = {"pseudo": dict(reader="pseudo_labeled", root="runs/demo_pseudo", weight=1.0)}
    for field in ("worker_count", "read_threads", "read_buffer"):
        c.data[field] = teacher.data[field]
    c.eval = teacher.eval
    return c
