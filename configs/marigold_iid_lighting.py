"""Marigold IID lighting v1.1 as released: albedo, diffuse shading and non-diffuse residual from Hypersim.

    python launch/train.py --config configs/marigold_iid_lighting.py --workdir DIR --config.model.base=...

Differences from configs/marigold_depth.py (released values): three targets (U-Net 16 channels in, 12 out), no
loss mask, lr 8e-5, 50K steps with the decay ending at 45K. No generic held-out score exists for intrinsics yet
(PSNR per target is planned), so eval_every is 0.
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("marigold_depth.py")))["get_config"]()
    c.model.modality = "iid_lighting"
    c.total_steps = 50_000  # released max_iter ("converges ~34k")
    c.optimizer.lr.unet = 8e-5  # released lr
    c.schedule.decay_end = 45_000  # released total_iter
    c.data.sources = {"hypersim": dict(reader="hypersim_lighting", root="/data/hypersim", weight=1.0,
                                       resize=(480, 640), resize_method="bilinear")}  # released IID resize
    c.eval_every = 0  # intrinsics have no generic held-out score yet
    return c
