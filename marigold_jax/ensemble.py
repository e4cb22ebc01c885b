"""Test-time ensembling of Marigold predictions, as diffusers' Marigold pipelines do it (host-side numpy/scipy).

All arrays are NHWC float32 with the ensemble members on the leading axis. Medians are PyTorch's: the lower of the
two middle values for an even number of members; standard deviations are unbiased.

Depth alignment reproduces diffusers' objective and optimiser: per-member scale (and shift) minimising the sum over
member pairs of the RMS difference plus a pull of the ensembled range towards [0, 1], by `scipy.optimize.minimize`
(BFGS, finite-difference gradient) from the min/max initialisation, with diffusers' `max_iter` and `tol`. The
objective is evaluated in float32 as diffusers does; its finite-difference gradient therefore sees float32 rounding,
which makes the fit sensitive to the last bits of the members (1e-7 relative perturbations of the members move
diffusers' own result by up to a few tens of percent of the range on random inputs). Results equal diffusers'
exactly only for bit-identical objective values.
"""

import itertools

import numpy as np
import scipy.optimize

from marigold_jax import image_processing


def lower_median(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """PyTorch's `torch.median(x, dim).values`: for an even count, the lower middle value."""
    return np.take(np.sort(x, axis=axis), (x.shape[axis] - 1) // 2, axis=axis)


def _reduce(x: np.ndarray, reduction: str, output_uncertainty: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if reduction == "mean":
        prediction = x.mean(axis=0, keepdims=True)
        uncertainty = x.std(axis=0, ddof=1, keepdims=True) if output_uncertainty else None
    elif reduction == "median":
        prediction = lower_median(x)[None]
        uncertainty = lower_median(np.abs(x - prediction))[None] if output_uncertainty else None
    else:
        raise ValueError(f"expected reduction 'median' or 'mean', got {reduction!r}")
    return prediction, uncertainty


def _align(depth: np.ndarray, param: np.ndarray, shift_invariant: bool) -> np.ndarray:
    e = depth.shape[0]
    if shift_invariant:
        s, t = np.split(param.astype(np.float32), 2)
        return depth * s.reshape(e, 1, 1, 1) + t.reshape(e, 1, 1, 1)
    return depth * param.astype(np.float32).reshape(e, 1, 1, 1)


def depth_alignment_init(depth: np.ndarray, shift_invariant: bool = True) -> np.ndarray:
    """Initial per-member parameters, float64: scales (and shifts) mapping each member's [min, max] to [0, 1]."""
    flat = depth.reshape(depth.shape[0], -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    if shift_invariant:
        s = np.float32(1.0) / np.maximum(hi - lo, np.float32(1e-6))
        return np.concatenate([s, -s * lo]).astype(np.float64)
    return (np.float32(1.0) / np.maximum(hi, np.float32(1e-6))).astype(np.float64)


def depth_alignment_cost(
    param: np.ndarray,
    depth: np.ndarray,
    shift_invariant: bool = True,
    reduction: str = "median",
    regularizer_strength: float = 0.02,
) -> float:
    """diffusers' alignment objective for members `depth` [E, h, w, 1] at `param` (scales, then shifts)."""
    aligned = _align(depth, param, shift_invariant)
    cost = 0.0
    for i, j in itertools.combinations(range(depth.shape[0]), 2):
        diff = aligned[i] - aligned[j]
        cost += float(np.sqrt(np.mean(diff**2)))
    if regularizer_strength > 0:
        prediction, _ = _reduce(aligned, reduction, False)
        err_near = float(np.abs(prediction.min()))
        err_far = float(np.abs(np.float32(1.0) - prediction.max()))
        cost += (err_near + err_far) * regularizer_strength
    return cost


def fit_depth_alignment(
    depth: np.ndarray,
    shift_invariant: bool = True,
    reduction: str = "median",
    regularizer_strength: float = 0.02,
    max_iter: int = 2,
    tol: float = 1e-3,
    max_res: int | None = 1024,
    objective=depth_alignment_cost,
) -> np.ndarray:
    """Per-member scales (and shifts), float64 [E] or [2E], fitted as diffusers does on members [E, H, W, 1].

    The fit runs on members resized (nearest-exact) to a long side of at most `max_res`.
    """
    depth = np.asarray(depth, np.float32)
    if max_res is not None and max(depth.shape[1:3]) > max_res:
        depth = np.asarray(image_processing.resize_to_max_edge(depth, max_res, "nearest-exact"))
    result = scipy.optimize.minimize(
        objective,
        depth_alignment_init(depth, shift_invariant),
        args=(depth, shift_invariant, reduction, regularizer_strength),
        method="BFGS",
        tol=tol,
        options={"maxiter": max_iter, "disp": False},
    )
    return result.x


def ensemble_depth(
    depth: np.ndarray,
    scale_invariant: bool = True,
    shift_invariant: bool = True,
    output_uncertainty: bool = False,
    reduction: str = "median",
    regularizer_strength: float = 0.02,
    max_iter: int = 2,
    tol: float = 1e-3,
    max_res: int | None = 1024,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Ensemble affine- (or scale-) invariant depth members [E, H, W, 1] into ([1, H, W, 1], uncertainty or None).

    Members are aligned (see module docstring), reduced by median (uncertainty: median absolute deviation) or mean
    (uncertainty: std), then min-max normalised to [0, 1] (scale-invariant only: divided by the max); the
    uncertainty is divided by the same range.
    """
    depth = np.asarray(depth, np.float32)
    if depth.ndim != 4 or depth.shape[-1] != 1:
        raise ValueError(f"expected depth members of shape [E, H, W, 1], got {list(depth.shape)}")
    if not scale_invariant:
        raise ValueError(
            "expected a scale-invariant (optionally also shift-invariant) depth model; ensembling of absolute or "
            "shift-only predictions is not defined by Marigold (diffusers refuses it too)"
        )
    if reduction not in ("median", "mean"):
        raise ValueError(f"expected reduction 'median' or 'mean', got {reduction!r}")
    param = fit_depth_alignment(depth, shift_invariant, reduction, regularizer_strength, max_iter, tol, max_res)
    prediction, uncertainty = _reduce(_align(depth, param, shift_invariant), reduction, output_uncertainty)
    lo = prediction.min() if shift_invariant else np.float32(0.0)
    span = np.maximum(prediction.max() - lo, np.float32(1e-6))
    prediction = (prediction - lo) / span
    if uncertainty is not None:
        uncertainty = uncertainty / span
    return prediction, uncertainty


def normalize_normals(normals: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Unit-length normals along the last axis (lengths clamped below at `eps`)."""
    norm = np.sqrt(np.sum(normals * normals, axis=-1, keepdims=True))
    return normals / np.maximum(norm, np.float32(eps))


def ensemble_normals(
    normals: np.ndarray, output_uncertainty: bool = False, reduction: str = "closest"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Ensemble unit normals [E, H, W, 3] into ([1, H, W, 3], uncertainty [1, H, W, 1] or None).

    `closest`: per pixel, the member most aligned with the normalised mean; `mean`: the normalised mean itself.
    Uncertainty: mean angle between the members and the mean direction, divided by pi.
    """
    normals = np.asarray(normals, np.float32)
    if normals.ndim != 4 or normals.shape[-1] != 3:
        raise ValueError(f"expected normals members of shape [E, H, W, 3], got {list(normals.shape)}")
    if reduction not in ("closest", "mean"):
        raise ValueError(f"expected reduction 'closest' or 'mean', got {reduction!r}")
    mean = normalize_normals(normals.mean(axis=0, keepdims=True))
    cos = np.clip(np.sum(mean * normals, axis=-1, keepdims=True), -1, 1)
    uncertainty = np.arccos(cos).mean(axis=0, keepdims=True) / np.float32(np.pi) if output_uncertainty else None
    if reduction == "mean":
        return mean, uncertainty
    closest = np.argmax(cos, axis=0)[None]
    return np.take_along_axis(normals, np.broadcast_to(closest, (1, *normals.shape[1:])), axis=0), uncertainty


def ensemble_intrinsics(
    targets: np.ndarray, output_uncertainty: bool = False, reduction: str = "median"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Ensemble intrinsic targets [E, T, H, W, 3] into ([T, H, W, 3], uncertainty [T, H, W, 3] or None).

    Median (uncertainty: median absolute deviation) or mean (uncertainty: std) per pixel and channel.
    """
    targets = np.asarray(targets, np.float32)
    if targets.ndim != 5 or targets.shape[-1] != 3:
        raise ValueError(f"expected intrinsics members of shape [E, T, H, W, 3], got {list(targets.shape)}")
    prediction, uncertainty = _reduce(targets, reduction, output_uncertainty)
    return prediction[0], None if uncertainty is None else uncertainty[0]
