"""Metric fine-tuning as released (configs/metric_hypersim_l.py): ViT-B on Hypersim, 20 m (indoor).

    python launch/train.py --config configs/metric_hypersim_b.py --workdir DIR \\
        --config.model.encoder_from=depth_anything_v2_vitb.pth --config.data.sources.hypersim.root=/data/hypersim
"""

import runpy
from pathlib import Path


def get_config():
    base = runpy.run_path(str(Path(__file__).with_name("metric_hypersim_l.py")))["get_config"]
    return base(encoder="vitb", dataset="hypersim", max_depth=20.0)
