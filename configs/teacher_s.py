"""The teacher recipe with a ViT-S encoder: the paper's data, losses and schedule on one host's budget.

    python launch/train.py --config configs/teacher_s.py --workdir DIR \\
        --config.model.dinov2_init=dinov2_vits14_pretrain.pth

Not a configuration of the paper (its teacher is ViT-G); the same recipe at 1/50 of the parameters, data parallel.
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("teacher_g.py")))["get_config"]()
    c.model.encoder = "vits"
    c.model.dtype = "float32"
    c.model.remat = False
    c.sharding = "dp"
    c.mesh.data = -1
    c.mesh.fsdp = 1
    return c
