"""Depth Anything V2 training losses (MiDaS / Depth Anything V1 definitions, DAv2 paper §5 "Details").

All depth losses take batched maps `[B, H, W]` of **disparity** (affine-invariant inverse depth) and a bool
validity mask `[B, H, W]`; they are pure `jax.numpy`, jit-able and differentiable in the prediction.

Reduction (the circulated MiDaS reference has two; we pick one): every loss term is first averaged over the
valid pixels of each image, then averaged over the images of the batch that have at least one valid pixel
("image-based" reduction). An image without valid pixels contributes nothing; a batch without any gives 0.
L_ssi is the plain mean absolute difference (MiDaS's 1/(2|M|) factor is a constant and is dropped).
"""

import fractions

import jax
import jax.numpy as jnp

GRADIENT_SCALES = 4
_MIN_SCALE = 1e-6


def masked_median(x, mask):
    """Median over the valid pixels of each image.

    x: [B, H, W] float; mask: [B, H, W] bool. Returns [B] (the mean of the two middle values for an even count,
    as `numpy.median`; 0 for an image without valid pixels).
    """
    b = x.shape[0]
    flat = jnp.where(mask, x, jnp.inf).reshape(b, -1)
    count = mask.reshape(b, -1).sum(axis=1)
    # The order carries no gradient: only the one or two middle pixels do, selected from `flat` by position.
    # Differentiating the sort (or a gather from `flat`) instead scatters the gradient through the permutation, on
    # TPU a scatter over the whole batch of maps that the compiler offloads and cannot cost. Same value, same
    # gradient (a stable order, as the sort's).
    order = jnp.argsort(jax.lax.stop_gradient(flat), axis=1, stable=True)
    middle = jnp.stack([jnp.maximum((count - 1) // 2, 0), jnp.maximum(count // 2, 0)], axis=1)
    picked = jnp.arange(flat.shape[1]) == jnp.take_along_axis(order, middle, axis=1)[:, :, None]  # [B, 2, H·W]
    lower, upper = jnp.where(picked, flat[:, None, :], 0.0).sum(axis=2).T
    lower = jnp.where(count > 0, lower, 0.0)
    upper = jnp.where(count > 0, upper, 0.0)
    return 0.5 * (lower + upper)


def normalize_disparity(x, mask):
    """Per-image robust normalisation x̂ = (x − t) / s over the valid pixels.

    t = median of x over the mask, s = mean absolute deviation from t over the mask (clamped at 1e-6, as MiDaS).
    x: [B, H, W] float; mask: [B, H, W] bool. Returns x̂ [B, H, W] float32. Invalid pixels are read as 0 first,
    so NaN/inf there (unknown ground truth) reach neither the value nor the gradient; keep them masked downstream.
    """
    x = jnp.where(mask, x.astype(jnp.float32), 0.0)
    t = masked_median(x, mask)
    centred = x - t[:, None, None]
    count = mask.sum(axis=(1, 2))
    s = jnp.where(mask, jnp.abs(centred), 0.0).sum(axis=(1, 2)) / jnp.maximum(count, 1)
    return centred / jnp.maximum(s, _MIN_SCALE)[:, None, None]


def _image_mean(per_image, has_pixels):
    """Mean of per-image values over the images that have valid pixels; 0 when none has."""
    n = has_pixels.sum()
    return jnp.where(has_pixels, per_image, 0.0).sum() / jnp.maximum(n, 1)


def _per_image_mean(values, mask):
    """Per-image mean of `values` over `mask` ([B, H, W] → [B]) and whether each image has valid pixels."""
    count = mask.sum(axis=(1, 2))
    total = jnp.where(mask, values, 0.0).sum(axis=(1, 2))
    return total / jnp.maximum(count, 1), count > 0


def ssi_loss(pred, target, mask):
    """Scale-and-shift-invariant loss L_ssi = mean over valid pixels of |d̂ − d̂*|, then mean over images.

    pred, target: [B, H, W] disparity; mask: [B, H, W] bool. Returns a float32 scalar.
    """
    residual = normalize_disparity(pred, mask) - normalize_disparity(target, mask)
    per_image, has_pixels = _per_image_mean(jnp.abs(residual), mask)
    return _image_mean(per_image, has_pixels)


def _gradient_term(residual, mask):
    """Σ(|∂x R| + |∂y R|) / |M| per image ([B]), a difference counting only if both neighbours are valid."""
    valid_x = mask[:, :, 1:] & mask[:, :, :-1]
    valid_y = mask[:, 1:, :] & mask[:, :-1, :]
    grad_x = jnp.where(valid_x, jnp.abs(residual[:, :, 1:] - residual[:, :, :-1]), 0.0).sum(axis=(1, 2))
    grad_y = jnp.where(valid_y, jnp.abs(residual[:, 1:, :] - residual[:, :-1, :]), 0.0).sum(axis=(1, 2))
    count = mask.sum(axis=(1, 2))
    return (grad_x + grad_y) / jnp.maximum(count, 1)


def _gradient_matching(residual, mask, scales):
    """Multi-scale gradient matching of a residual R = d̂ − d̂*: Σ_k over stride-2^k subsamplings; [B]."""
    total = jnp.zeros(residual.shape[0], jnp.float32)
    for k in range(scales):
        step = 2**k
        total = total + _gradient_term(residual[:, ::step, ::step], mask[:, ::step, ::step])
    return total


def gradient_matching_loss(pred, target, mask, scales=GRADIENT_SCALES):
    """Multi-scale gradient-matching loss L_gm on the normalised residual R = d̂ − d̂*.

    L_gm = Σ_{k<scales} (1/|M_k|) Σ (|∂x R_k| + |∂y R_k|) with R_k, M_k taken every 2^k-th row and column
    (starting at 0); a finite difference counts only if both of its pixels are valid. Mean over images.
    pred, target: [B, H, W] disparity; mask: [B, H, W] bool. Returns a float32 scalar.
    """
    residual = normalize_disparity(pred, mask) - normalize_disparity(target, mask)
    return _image_mean(_gradient_matching(residual, mask, scales), mask.sum(axis=(1, 2)) > 0)


def _trim_count(count, trim):
    """floor(trim · count) in exact integer arithmetic (a float product can land just below an integer)."""
    frac = fractions.Fraction(trim).limit_denominator(1000)
    num, den = frac.numerator, frac.denominator
    return (count // den) * num + ((count % den) * num) // den


def trim_mask(residual, mask, trim):
    """Drop, per image, the floor(trim·|M|) valid pixels with the largest |residual| from the mask.

    residual: [B, H, W] float; mask: [B, H, W] bool; trim: static fraction in [0, 1). Ties are broken by pixel
    order, so exactly that many pixels are dropped. Returns the trimmed mask [B, H, W] bool.
    """
    b = residual.shape[0]
    magnitude = jnp.where(mask, jnp.abs(jax.lax.stop_gradient(residual)), -jnp.inf).reshape(b, -1)
    order = jnp.argsort(-magnitude, axis=1, stable=True)
    rank = jnp.argsort(order, axis=1, stable=True)
    dropped = _trim_count(mask.reshape(b, -1).sum(axis=1), trim)
    return mask & (rank >= dropped[:, None]).reshape(mask.shape)


def depth_loss(pred, target, mask, gm_weight=2.0, trim=0.0, scales=GRADIENT_SCALES):
    """The DAv2 depth loss L = L_ssi + gm_weight · L_gm (paper: 1 : 2).

    The normalisation (median / MAD) uses every valid pixel; with `trim` > 0 (0.1 for the student's pseudo
    labels, DAv2 §5) the floor(trim·|M|) valid pixels of each image with the largest |d̂ − d̂*| are then left out
    of both terms. pred, target: [B, H, W] disparity; mask: [B, H, W] bool; `trim` and `scales` are static.
    Returns (loss, {"ssi": L_ssi, "gm": L_gm}) as float32 scalars.
    """
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"expected trim, the fraction of largest per-pixel losses ignored, in [0, 1); got {trim}")
    residual = normalize_disparity(pred, mask) - normalize_disparity(target, mask)
    kept = trim_mask(residual, mask, trim) if trim > 0.0 else mask
    has_pixels = kept.sum(axis=(1, 2)) > 0
    per_image_ssi, _ = _per_image_mean(jnp.abs(residual), kept)
    ssi = _image_mean(per_image_ssi, has_pixels)
    gm = _image_mean(_gradient_matching(residual, kept, scales), has_pixels)
    return ssi + gm_weight * gm, {"ssi": ssi, "gm": gm}


def feature_alignment_loss(student, teacher, margin=0.85):
    """Depth Anything V1 feature alignment: 1 − mean cosine similarity of student and frozen-teacher features.

    student, teacher: [..., C] patch features (e.g. [B, N, C] tokens or [B, h, w, C]); the teacher gets no
    gradient. Features whose cosine already exceeds `margin` (0.85 in V1) are left out of the mean, taken over
    all remaining features of the batch; 0 when none remains. Returns a float32 scalar.
    """
    student = student.astype(jnp.float32)
    teacher = jax.lax.stop_gradient(teacher.astype(jnp.float32))
    dot = (student * teacher).sum(axis=-1)
    # clamp the squared norms, not the norms: the gradient of a norm at a zero vector is NaN
    norms = jnp.sqrt(jnp.maximum((student**2).sum(axis=-1), 1e-16) * jnp.maximum((teacher**2).sum(axis=-1), 1e-16))
    cosine = dot / norms
    included = jax.lax.stop_gradient(cosine) <= margin
    n = included.sum()
    return jnp.where(n > 0, 1.0 - jnp.where(included, cosine, 0.0).sum() / jnp.maximum(n, 1), 0.0)


def silog_loss(pred, target, mask, lambd=0.5):
    """Scale-invariant log loss of the released metric fine-tuning code (`metric_depth/util/loss.py`).

    g = log d* − log d over every valid pixel of the batch (pooled, not per image);
    L = sqrt(mean(g²) − λ·mean(g)²)
    with λ = 0.5 and no ×10 factor (unlike ZoeDepth / AdaBins). pred, target: [B, H, W] metres (> 0 where valid);
    mask: [B, H, W] bool. Invalid pixels are read as 1 before the log, so they reach neither value nor gradient.
    Returns a float32 scalar (0 for an empty mask).
    """
    mask = mask & (target > 0) & (pred > 0)
    g = jnp.where(mask, jnp.log(jnp.where(mask, target, 1.0)) - jnp.log(jnp.where(mask, pred, 1.0)), 0.0)
    n = jnp.maximum(mask.sum(), 1)
    mean_sq = (g**2).sum() / n
    mean = g.sum() / n
    # clamp the radicand: sqrt's gradient at 0 is infinite (a perfect prediction)
    return jnp.sqrt(jnp.maximum(mean_sq - lambd * mean**2, 1e-12)).astype(jnp.float32)
