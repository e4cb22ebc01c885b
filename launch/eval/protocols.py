"""The benchmarks' evaluation protocols: depth caps, evaluation crops, alignment, and the per-image scoring.

A protocol ("dav2" or "marigold") fixes, per dataset, the valid depth range [min_depth, max_depth] (pixels outside
are not scored, and predictions are clipped into it), the evaluation crop, and Marigold's alignment subsampling.
How a prediction is aligned depends on what the model outputs:
- "disparity" (Depth Anything relative models): least squares in disparity space (`alignment.align_disparity`);
- "depth" (Marigold, affine-invariant depth): least squares in depth space (`alignment.align_depth`);
- "metric" (Depth Anything metric models, metres): no alignment, only clipped to the range.
"""

import dataclasses
import math

import numpy as np

from launch.eval import alignment, metrics

PROTOCOLS = ("dav2", "marigold")
OUTPUT_KINDS = ("disparity", "depth", "metric")
# Marigold clips every prediction to at least this before scoring (log and ratio metrics need d̂ > 0)
MIN_PREDICTED_DEPTH = 1e-6

NYU_SHAPE = (480, 640)
KB_CROP_HW = (352, 1216)


@dataclasses.dataclass(frozen=True)
class DepthSpec:
    """How one dataset is scored under one protocol. Depths in metres."""

    min_depth: float
    max_depth: float
    crop: str | None = None  # "eigen_nyu", "garg", "eigen_kitti" or None: see `evaluation_crop`
    alignment_max_resolution: int | None = None  # fit the alignment on a subsample (Marigold's ETH3D setting)


# Depth Anything V2 Table 2 follows MiDaS: depth capped per dataset (NYU 10 m, KITTI 80 m, ETH3D and Sintel 72 m),
# Eigen crop on NYU, Garg crop on KITTI. DAv2 published no evaluation code; ScanNet/DIODE caps follow the datasets.
# Marigold: its `src/dataset/*_dataset.py` ranges and `config/dataset_depth/*.yaml` crops, verbatim.
DEPTH_SPECS = {
    "dav2": {
        "nyu": DepthSpec(1e-3, 10.0, "eigen_nyu"),
        "kitti": DepthSpec(1e-3, 80.0, "garg"),
        "eth3d": DepthSpec(1e-3, 72.0),
        "scannet": DepthSpec(1e-3, 10.0),
        "diode": DepthSpec(1e-3, 300.0),
        "sintel": DepthSpec(1e-3, 72.0),
        "motorcycle": DepthSpec(1e-3, 10.0),
    },
    "marigold": {
        "nyu": DepthSpec(1e-3, 10.0, "eigen_nyu"),
        "kitti": DepthSpec(1e-5, 80.0, "eigen_kitti"),
        "eth3d": DepthSpec(1e-5, math.inf, alignment_max_resolution=1024),
        "scannet": DepthSpec(1e-3, 10.0),
        "diode": DepthSpec(0.6, 350.0),
        "sintel": DepthSpec(1e-3, 72.0),
        "motorcycle": DepthSpec(1e-3, 10.0),
    },
}


def depth_spec(protocol, family):
    """The `DepthSpec` of dataset family `family` ("nyu", "kitti", ...) under `protocol` ("dav2" | "marigold")."""
    if protocol not in DEPTH_SPECS:
        raise ValueError(f"unknown protocol {protocol!r}: expected one of {PROTOCOLS}")
    if family not in DEPTH_SPECS[protocol]:
        raise ValueError(
            f"no depth protocol for dataset family {family!r}: expected one of {sorted(DEPTH_SPECS[protocol])}"
        )
    return DEPTH_SPECS[protocol][family]


def evaluation_crop(name, shape):
    """Bool mask [H, W] of the evaluation crop `name` (None: everything).

    "eigen_nyu": rows 45:471, cols 41:601 of the 480×640 NYUv2 frame (Eigen et al. 2014, as in BTS and Marigold).
    "garg": KITTI rows 0.40810811·H : 0.99189189·H, cols 0.03594771·W : 0.96405229·W (Garg et al. 2016).
    "eigen_kitti": KITTI rows 0.3324324·H : 0.91351351·H, cols 0.0359477·W : 0.96405229·W (Eigen et al. 2014).
    Fractions are truncated with int(), as BTS and Marigold do.
    """
    h, w = shape
    mask = np.zeros((h, w), bool)
    if name is None:
        mask[:] = True
    elif name == "eigen_nyu":
        if (h, w) != NYU_SHAPE:
            raise ValueError(f"the NYU Eigen crop needs the full 480x640 frame, got {h}x{w}")
        mask[45:471, 41:601] = True
    elif name == "garg":
        mask[int(0.40810811 * h) : int(0.99189189 * h), int(0.03594771 * w) : int(0.96405229 * w)] = True
    elif name == "eigen_kitti":
        mask[int(0.3324324 * h) : int(0.91351351 * h), int(0.0359477 * w) : int(0.96405229 * w)] = True
    else:
        raise ValueError(f"unknown evaluation crop {name!r}: expected None, 'eigen_nyu', 'garg' or 'eigen_kitti'")
    return mask


def kb_crop(image):
    """KITTI benchmark crop: the bottom 352 rows and the central 1216 columns of an [H, W, ...] array."""
    h, w = image.shape[:2]
    ch, cw = KB_CROP_HW
    if h < ch or w < cw:
        raise ValueError(f"the KITTI benchmark crop needs at least {ch}x{cw} pixels, got {h}x{w}")
    top, left = h - ch, (w - cw) // 2
    return image[top : top + ch, left : left + cw]


def valid_mask(gt_depth, mask, spec):
    """Pixels scored: the dataset's own validity mask ∩ min_depth < d < max_depth ∩ the evaluation crop."""
    gt_depth = np.asarray(gt_depth)
    with np.errstate(invalid="ignore"):
        in_range = (gt_depth > spec.min_depth) & (gt_depth < spec.max_depth)
    return np.asarray(mask, bool) & in_range & evaluation_crop(spec.crop, gt_depth.shape)


def predicted_depth(pred, gt_depth, valid, kind, spec):
    """Turn a raw prediction [H, W] into depth in metres the way the protocol does.

    kind: "disparity" | "depth" | "metric" (see the module docstring); valid: the scored pixels (`valid_mask`).
    Returns depth [H, W] float64, clipped to [max(min_depth, 1e-6), max_depth].
    """
    pred = np.asarray(pred, np.float64)
    if pred.shape != np.shape(gt_depth):
        raise ValueError(f"prediction {pred.shape} and ground truth {np.shape(gt_depth)} differ in size: "
                         "predict at the ground-truth resolution")
    if kind == "disparity":
        depth, _, _ = alignment.align_disparity(pred, gt_depth, valid, spec.min_depth, spec.max_depth)
    elif kind == "depth":
        depth, _, _ = alignment.align_depth(pred, gt_depth, valid, spec.min_depth, spec.max_depth,
                                            spec.alignment_max_resolution)
    elif kind == "metric":
        depth = np.clip(pred, spec.min_depth, spec.max_depth)
    else:
        raise ValueError(f"unknown prediction kind {kind!r}: expected one of {OUTPUT_KINDS}")
    return np.maximum(depth, MIN_PREDICTED_DEPTH)


def score_depth(pred, gt_depth, mask, kind, spec):
    """Per-image depth metrics of a raw prediction under a protocol (caps, crop, alignment, clip, metrics).

    pred: [H, W] model output at the ground-truth resolution; gt_depth: [H, W] metres; mask: [H, W] bool of
    pixels with ground truth. Returns `metrics.depth_metrics` plus "valid_pixels".
    """
    valid = valid_mask(gt_depth, mask, spec)
    if not valid.any():
        raise metrics.EmptyMask("no pixel of this image is valid under the protocol (ground truth outside the depth "
                                "caps or the crop)")
    depth = predicted_depth(pred, gt_depth, valid, kind, spec)
    return {**metrics.depth_metrics(depth, gt_depth, valid), "valid_pixels": int(valid.sum())}
