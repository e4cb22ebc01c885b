"""Metric fine-tuning as released (configs/metric_hypersim_l.py): ViT-L on Virtual KITTI 2, 80 m (outdoor).

    python launch/train.py --config configs/metric_vkitti_l.py --workdir DIR \\
        --config.model.encoder_from=depth_anything_v2_vitl.pth --config.data.sources.vkitti2.root=/data/vkitti2

Virtual KITTI 2: 19,559 training pairs in the released list, depth valid up to 80 m (sky is 655.35 m).
"""

import runpy
from pathlib import Path


def get_config():
    base = runpy.run_path(str(Path(__file__).with_name("metric_hypersim_l.py")))["get_config"]
    return base(encoder="vitl", dataset="vkitti2", max_depth=80.0, train_images=19_559)
