"""Resampling with the exact semantics of the PyTorch/OpenCV originals, as separable weight matrices.

Every resize here is `out = Wh @ x @ Ww.T` over the two spatial axes, with (out, in) weight matrices built in
NumPy float64 from static sizes. That makes the kernels exact (no approximation of the upstream rules), cheap to
apply inside `jit` (two small matmuls) and usable on host arrays too.
"""

import functools

import numpy as np


def _cubic(t, a=-0.75):
    """Keys cubic convolution kernel with a = -0.75 (PyTorch `bicubic`, OpenCV `INTER_CUBIC`)."""
    t = np.abs(t)
    return np.where(
        t <= 1,
        ((a + 2) * t - (a + 3)) * t * t + 1,
        np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0),
    )


@functools.lru_cache(maxsize=256)
def cubic_matrix(in_size: int, out_size: int, scale: float | None = None) -> np.ndarray:
    """(out_size, in_size) float64 weights of a half-pixel cubic resize with replicated borders, no antialias.

    `scale` is the output/input ratio used to map coordinates (`src = (dst + 0.5) / scale - 0.5`); it defaults to
    out_size / in_size (OpenCV `INTER_CUBIC` and PyTorch `size=`). PyTorch's `scale_factor=` passes it explicitly.
    """
    scale = out_size / in_size if scale is None else scale
    src = (np.arange(out_size) + 0.5) / scale - 0.5
    base = np.floor(src)
    frac = src - base
    w = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    for k in range(-1, 3):
        idx = np.clip(base + k, 0, in_size - 1).astype(np.int64)
        np.add.at(w, (rows, idx), _cubic(frac - k))
    return w


def _taps(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A weight matrix (out, in) as (indices, weights) [out, k] of its k ≤ in non-zero entries per row."""
    rows, cols = np.nonzero(w)
    counts = np.bincount(rows, minlength=w.shape[0])
    k = max(int(counts.max(initial=0)), 1)
    position = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    index, weight = np.zeros((w.shape[0], k), np.int64), np.zeros((w.shape[0], k), w.dtype)
    index[rows, position] = cols
    weight[rows, position] = w[rows, cols]
    return index, weight


def _apply(w: np.ndarray, x: np.ndarray, axis: int, dtype) -> np.ndarray:
    """`w` (out, in) applied along `axis` of x, summing only w's non-zero taps (4 per row for a cubic kernel)."""
    index, weight = _taps(w)
    shape = [1] * x.ndim
    shape[axis] = w.shape[0]
    out = np.zeros([w.shape[0] if a == axis else n for a, n in enumerate(x.shape)], dtype)
    for k in range(index.shape[1]):
        out += weight[:, k].astype(dtype).reshape(shape) * np.take(x, index[:, k], axis=axis)
    return out


def resize_host(x: np.ndarray, wh: np.ndarray, ww: np.ndarray) -> np.ndarray:
    """Resize a host array x [H, W, C] with `wh` (H', H) and `ww` (W', W) → [H', W', C], in x's dtype (float64
    for integer x). Applied as gathers of the non-zero taps, so a 12-megapixel photo costs a few passes over it,
    not a dense matmul."""
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
    return _apply(ww, _apply(wh, x, 0, dtype), 1, dtype)
