"""Evaluation metrics (numpy): depth errors, surface-normal angular errors, DA-2K pair accuracy.

Every depth metric takes one image: `pred` and `gt` depth [H, W] in metres (or any common unit), `mask` [H, W]
bool of the pixels to score, and averages over those pixels; benchmarks then average the per-image values
(Marigold `src/util/metric.py`, DAv2 `metric_depth/util/metric.py`). Accuracies δk are fractions in [0, 1];
normals "within" shares are percentages, as in Marigold's tables.
"""

import numpy as np

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
NORMALS_METRICS = ("mean", "median", "rmse", "within_11_25", "within_22_5", "within_30")


class EmptyMask(ValueError):
    """An image has no pixel to score (its ground truth lies outside the caps or the crop): skip it, not fail."""


def _valid(pred, gt, mask):
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    mask = np.asarray(mask, bool)
    if not pred.shape == gt.shape == mask.shape:
        raise ValueError(
            f"expected prediction, ground truth and mask of one shape, got {pred.shape}, {gt.shape}, {mask.shape}"
        )
    if not mask.any():
        raise EmptyMask("the mask selects no pixel: nothing to score (check the crop and the depth caps)")
    return pred[mask], gt[mask]


def abs_rel(pred, gt, mask):
    """Mean absolute relative error: mean |d̂ − d| / d."""
    p, g = _valid(pred, gt, mask)
    return float(np.mean(np.abs(p - g) / g))


def sq_rel(pred, gt, mask):
    """Mean squared relative error: mean (d̂ − d)² / d."""
    p, g = _valid(pred, gt, mask)
    return float(np.mean((p - g) ** 2 / g))


def rmse(pred, gt, mask):
    """Root mean squared error: sqrt(mean (d̂ − d)²), in the unit of the depth."""
    p, g = _valid(pred, gt, mask)
    return float(np.sqrt(np.mean((p - g) ** 2)))


def rmse_log(pred, gt, mask):
    """Root mean squared error of natural logarithms: sqrt(mean (ln d̂ − ln d)²)."""
    p, g = _valid(pred, gt, mask)
    return float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)))


def delta_accuracy(pred, gt, mask, k=1):
    """δk: share of pixels with max(d̂/d, d/d̂) < 1.25^k (strict, as Marigold and DAv2)."""
    p, g = _valid(pred, gt, mask)
    return float(np.mean(np.maximum(p / g, g / p) < 1.25**k))


def depth_metrics(pred, gt, mask):
    """All depth metrics of one image, as a dict keyed by `DEPTH_METRICS`.

    pred, gt: [H, W] positive depth; mask: [H, W] bool.
    """
    return {
        "abs_rel": abs_rel(pred, gt, mask),
        "sq_rel": sq_rel(pred, gt, mask),
        "rmse": rmse(pred, gt, mask),
        "rmse_log": rmse_log(pred, gt, mask),
        "delta1": delta_accuracy(pred, gt, mask, 1),
        "delta2": delta_accuracy(pred, gt, mask, 2),
        "delta3": delta_accuracy(pred, gt, mask, 3),
    }


def angular_errors(pred, gt, mask):
    """Angle in degrees between predicted and ground-truth normals at each masked pixel.

    pred, gt: [H, W, 3] normal vectors (any length; normalised here); mask: [H, W] bool. Returns [n] float64.
    """
    pred = np.asarray(pred, np.float64)
    gt = np.asarray(gt, np.float64)
    mask = np.asarray(mask, bool)
    if pred.shape != gt.shape or pred.shape[:-1] != mask.shape or pred.shape[-1] != 3:
        raise ValueError(
            f"expected normals [H, W, 3] and a mask [H, W], got {pred.shape}, {gt.shape} and {mask.shape}"
        )
    if not mask.any():
        raise EmptyMask("the mask selects no pixel: nothing to score")
    p, g = pred[mask], gt[mask]
    cosine = (p * g).sum(-1) / np.maximum(np.linalg.norm(p, axis=-1) * np.linalg.norm(g, axis=-1), 1e-12)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def normals_metrics(pred, gt, mask):
    """Mean, median and RMS angular error (degrees) and % of pixels within 11.25°, 22.5°, 30° (Marigold)."""
    err = angular_errors(pred, gt, mask)
    return {
        "mean": float(np.mean(err)),
        "median": float(np.median(err)),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "within_11_25": float(100.0 * np.mean(err < 11.25)),
        "within_22_5": float(100.0 * np.mean(err < 22.5)),
        "within_30": float(100.0 * np.mean(err < 30.0)),
    }


def pair_correct(pred, pairs, larger_is_closer):
    """DA-2K: for each annotated pair, whether the prediction ranks its closer point as closer.

    pred: [H, W] disparity (`larger_is_closer=True`) or depth (False); pairs: [n, 2, 2] int of ((row, col) of the
    closer point, (row, col) of the farther one). A tie counts as wrong. Returns [n] bool.
    """
    pred = np.asarray(pred)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2, 2)
    h, w = pred.shape
    if pairs.size and (pairs[..., 0].min() < 0 or pairs[..., 0].max() >= h or pairs[..., 1].min() < 0
                       or pairs[..., 1].max() >= w):
        raise ValueError(f"a DA-2K point lies outside the {h}x{w} prediction: expected [row, col] inside it")
    near = pred[pairs[:, 0, 0], pairs[:, 0, 1]]
    far = pred[pairs[:, 1, 0], pairs[:, 1, 1]]
    return near > far if larger_is_closer else near < far


def mean_metrics(per_image):
    """Average a list of per-image metric dicts key by key (the benchmarks' reduction)."""
    if not per_image:
        raise ValueError("no per-image results to average")
    keys = per_image[0].keys()
    return {k: float(np.mean([r[k] for r in per_image])) for k in keys}
