"""The Depth Anything V2 student recipe (configs/student_g.py) at ViT-B (97.5 M parameters): data parallel.

    python launch/train.py --config configs/student_b.py --workdir DIR \\
        --config.model.dinov2_init=dinov2_vitb14_pretrain.pth --config.data.sources.sa1b.root=/data/pseudo/sa1b ...
"""

import runpy
from pathlib import Path


def get_config():
    return runpy.run_path(str(Path(__file__).with_name("student_g.py")))["get_config"](encoder="vitb")
