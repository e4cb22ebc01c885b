"""Marigold normals v1.1 as released: SD2 fine-tuned on Hypersim (0.5), InteriorVerse (0.49) and Sintel (0.01).

    python launch/train.py --config configs/marigold_normals.py --workdir DIR --config.model.base=/models/sd2 ...

Differences from configs/marigold_depth.py (released values): lr 6e-5, no loss mask, flips negate the normals' x
component, Gaussian and motion blur on Hypersim's 768-row images and colour jitter; validation with 4 steps in the
released trainer (here the generic 1-step held-out score: mean angular error).
"""

import runpy
from pathlib import Path


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("marigold_depth.py")))["get_config"]()
    c.model.modality = "normals"
    c.optimizer.lr.unet = 6e-5  # released lr
    c.data.sources = {
        "hypersim": dict(reader="hypersim_normals", root="/data/hypersim", weight=0.5, resize=(480, 640),
                         resize_method="bilinear"),  # released: bilinear after the augmentations
        "interiorverse": dict(reader="interiorverse", root="/data/interiorverse", weight=0.49, targets=("normals",)),
        "sintel": dict(reader="sintel_normals", root="/data/sintel", weight=0.01, resize=(480, 640),
                       resize_method="bilinear"),  # the reader's 436 x 582 centre crop, then resized
    }  # released prob_ls [0.5, 0.49, 0.01]
    c.eval.source = dict(reader="synthetic", num_samples=100, height=480, width=640, seed=1_000_003, kind="mixed")
    c.eval.num_samples = 96  # a multiple of the eval batch
    return c
