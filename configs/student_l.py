"""The Depth Anything V2 student recipe (configs/student_g.py) at ViT-L (335 M, plus a frozen ViT-L): FSDP, remat dots.

    python launch/train.py --config configs/student_l.py --workdir DIR \\
        --config.model.dinov2_init=dinov2_vitl14_pretrain.pth --config.data.sources.sa1b.root=/data/pseudo/sa1b ...
"""

import runpy
from pathlib import Path


def get_config():
    return runpy.run_path(str(Path(__file__).with_name("student_g.py")))["get_config"](encoder="vitl")
