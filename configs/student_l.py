"""The Depth Anything V2 student recipe (configs/student_g.py) at ViT-L (335 M, plus a frozen ViT-L): FSDP, remat.

    python launch/train.py --config configs/student_l.py --workdir DIR \\
        --config.model.dinov2_init=dinov2_vitl14_pretrain.pth --config.data.sources.sa1b.root=/data/pseudo/sa1b ...
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("student_g.py")))["get_config"]()
    c.model.encoder = "vitl"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.sharding = "fsdp"
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
