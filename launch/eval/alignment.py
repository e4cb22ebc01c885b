"""Least-squares scale-and-shift alignment of affine-invariant predictions to ground truth (numpy, float64).

Two published protocols:
- Depth Anything / MiDaS (`align_disparity`): the prediction is disparity; fit s, t so that s·pred + t matches the
  ground-truth disparity 1/d on the valid pixels, clip the aligned disparity to [1/max_depth, 1/min_depth] (so that
  the depth stays inside the dataset's range; MiDaS's evaluation caps depth this way) and invert to depth.
- Marigold (`align_depth`): the prediction is depth; fit s, t against the ground-truth depth, optionally on a
  strided subsample (Marigold's `alignment_max_res`, used for ETH3D), then clip to [min_depth, max_depth].
"""

import math

import numpy as np

# Marigold's floor for aligned disparity when the dataset has no finite depth cap ("avoid 0 disparity")
MIN_DISPARITY = 1e-3


def fit_scale_shift(pred, target, mask):
    """Least-squares (s, t) minimising Σ_mask (s·pred + t − target)², as `numpy.linalg.lstsq` on [pred, 1].

    pred, target: [H, W]; mask: [H, W] bool. Solved in closed form from the 2×2 normal equations in float64. A
    constant prediction (singular system) gets s = 0, t = mean(target): the same aligned map lstsq gives.
    Returns (scale, shift) as Python floats.
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("cannot align: the mask selects no pixel (check the crop and the depth caps)")
    p = np.asarray(pred, np.float64)[mask]
    y = np.asarray(target, np.float64)[mask]
    n = p.size
    p_mean, y_mean = p.mean(), y.mean()
    pc = p - p_mean
    var = np.dot(pc, pc)
    if var <= 1e-12 * max(np.dot(p, p), 1e-300) or n < 2:
        return 0.0, float(y_mean)
    scale = np.dot(pc, y - y_mean) / var
    return float(scale), float(y_mean - scale * p_mean)


def strided_subsample(x, max_resolution):
    """Nearest-neighbour subsample of [H, W] so that max(H', W') ≤ max_resolution (unchanged if already).

    Output size floor(H·f) × floor(W·f) with f = max_resolution / max(H, W); source index floor(i / f), as torch's
    `nn.Upsample(scale_factor=f, mode="nearest")` that Marigold uses.
    """
    x = np.asarray(x)
    h, w = x.shape[:2]
    f = min(max_resolution / h, max_resolution / w)
    if f >= 1:
        return x
    rows = np.minimum(np.floor(np.arange(math.floor(h * f)) / f).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(math.floor(w * f)) / f).astype(np.int64), w - 1)
    return x[rows][:, cols]


def align_depth(pred, gt_depth, mask, min_depth, max_depth, max_resolution=None):
    """Marigold protocol: least squares in depth space, then clip to the dataset range.

    pred: [H, W] affine-invariant depth; gt_depth: [H, W] metres; mask: [H, W] bool of valid pixels.
    max_resolution: fit on a nearest subsample no larger than this (None: all pixels).
    Returns (depth [H, W] float64 metres, scale, shift).
    """
    fit_on = (pred, gt_depth, mask)
    if max_resolution is not None:
        fit_on = tuple(strided_subsample(a, max_resolution) for a in fit_on)
    scale, shift = fit_scale_shift(*fit_on)
    aligned = np.asarray(pred, np.float64) * scale + shift
    return np.clip(aligned, min_depth, max_depth), scale, shift


def align_disparity(pred, gt_depth, mask, min_depth, max_depth):
    """Depth Anything / MiDaS protocol: least squares in disparity space, clip, then compare in depth.

    pred: [H, W] affine-invariant disparity; gt_depth: [H, W] metres (> 0 on `mask`); mask: [H, W] bool.
    The aligned disparity is clipped to [1/max_depth, 1/min_depth] (lower bound `MIN_DISPARITY` when max_depth is
    infinite) before inversion. Returns (depth [H, W] float64 metres, scale, shift).
    """
    mask = np.asarray(mask, bool)
    gt_depth = np.asarray(gt_depth, np.float64)
    gt_disparity = np.zeros_like(gt_depth)
    gt_disparity[mask] = 1.0 / gt_depth[mask]
    scale, shift = fit_scale_shift(pred, gt_disparity, mask)
    aligned = np.asarray(pred, np.float64) * scale + shift
    low = 1.0 / max_depth if math.isfinite(max_depth) else MIN_DISPARITY
    return 1.0 / np.clip(aligned, low, 1.0 / min_depth), scale, shift
