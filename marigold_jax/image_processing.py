"""Marigold's image pre- and post-processing, equal to diffusers' `MarigoldImageProcessor`.

Resizing follows `torch.nn.functional.interpolate` (`align_corners=False`) for every mode Marigold exposes —
`nearest`, `nearest-exact`, `bilinear`, `bicubic`, `area` — with PyTorch's antialiased kernels for bilinear and
bicubic down-sampling. Each resize is separable: one [out, in] weight matrix per axis, built on the host in float32
exactly as PyTorch computes its indices and weights, applied as two matmuls (so it runs inside `jit` on any backend).
Images are NHWC float32.
"""

import functools
import jax
import jax.numpy as jnp
import numpy as np

RESAMPLE_METHODS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def check_rgb_uint8(image) -> np.ndarray:
    """An RGB uint8 image [H, W, 3], a batch [N, H, W, 3] or a list of equal-size images, as [N, H, W, 3] uint8."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("expected at least one image, got an empty list")
        arrays = [check_rgb_uint8(x) for x in image]
        sizes = {a.shape[1:3] for a in arrays}
        if len(sizes) != 1:
            raise ValueError(
                f"expected images of one size [H, W], got sizes {sorted(sizes)}; resize them or call once per size"
            )
        return np.concatenate(arrays)
    if hasattr(image, "mode") and hasattr(image, "size"):
        if image.mode != "RGB":
            raise ValueError(
                f"expected an RGB image, got a PIL image in mode {image.mode!r}; convert it with .convert('RGB')"
            )
        image = np.asarray(image)
    array = np.asarray(image)
    shape = "[" + ", ".join(map(str, array.shape)) + "]"
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-1] != 3:
        raise ValueError(
            f"expected an RGB uint8 image of shape [H, W, 3] or a batch [N, H, W, 3], got {array.dtype} {shape}; "
            "convert grayscale/RGBA images to RGB and floats in [0, 1] with (x * 255).round().astype(np.uint8)"
        )
    if min(array.shape[-3:-1]) == 0:
        raise ValueError(f"expected a non-empty image, got shape {shape}")
    return array[None] if array.ndim == 3 else array


def to_unit_range(images: np.ndarray) -> jnp.ndarray:
    """uint8 [N, H, W, 3] -> float32 in [-1, 1] (x / 255 * 2 - 1, in diffusers' order of operations)."""
    return jnp.asarray(images).astype(jnp.float32) / 255.0 * 2.0 - 1.0


def max_edge_size(height: int, width: int, max_edge: int) -> tuple[int, int]:
    """(h, w) with the long side equal to `max_edge`, rounded down as diffusers does."""
    longest = max(height, width)
    h, w = height * max_edge // longest, width * max_edge // longest
    if h == 0 or w == 0:
        raise ValueError(
            f"extreme aspect ratio: a {width}x{height} image has a side of 0 pixels at long side {max_edge}"
        )
    return h, w


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    a = np.float32(a)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0)).astype(np.float32)


def _aa_weights(in_size: int, out_size: int, mode: str) -> np.ndarray:
    # PyTorch's _upsample_{bilinear,bicubic}2d_aa: a PIL-style filter widened by the down-sampling factor.
    scale = np.float32(in_size) / np.float32(out_size)
    interp_size = 2 if mode == "bilinear" else 4
    support = np.float32(interp_size * 0.5) * (scale if scale >= 1 else np.float32(1))
    invscale = np.float32(1) / scale if scale >= 1 else np.float32(1)
    out = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        center = scale * np.float32(i + 0.5)
        lo = max(int(center - support + np.float32(0.5)), 0)
        hi = min(int(center + support + np.float32(0.5)), in_size)
        x = (np.arange(lo, hi, dtype=np.float32) - center + np.float32(0.5)) * invscale
        if mode == "bilinear":
            w = np.maximum(np.float32(1) - np.abs(x), np.float32(0))
        else:
            # PyTorch's antialiased bicubic uses Keys' a = -0.5 (the plain bicubic uses -0.75).
            w = _cubic(x, -0.5)
        total = w.sum(dtype=np.float32)
        out[i, lo:hi] = w / total if total != 0 else w
    return out


def _plain_weights(in_size: int, out_size: int, mode: str) -> np.ndarray:
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size)
    out = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    if mode == "nearest":
        if out_size == in_size:
            src = dst
        elif out_size == 2 * in_size:
            src = dst >> 1
        else:
            src = np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), in_size - 1)
        out[rows, src] = 1
    elif mode == "nearest-exact":
        src = np.floor(((dst + 0.5) * scale).astype(np.float32)).astype(np.int64)
        out[rows, np.minimum(src, in_size - 1)] = 1
    elif mode == "bilinear":
        if out_size == in_size:
            return np.eye(in_size, dtype=np.float32)
        real = np.maximum(scale * (dst.astype(np.float32) + np.float32(0.5)) - np.float32(0.5), np.float32(0))
        i0 = np.minimum(np.floor(real).astype(np.int64), in_size - 1)
        lam = np.clip(real - i0.astype(np.float32), 0, 1).astype(np.float32)
        i1 = i0 + (i0 < in_size - 1)
        np.add.at(out, (rows, i0), np.float32(1) - lam)
        np.add.at(out, (rows, i1), lam)
    elif mode == "bicubic":
        real = scale * (dst.astype(np.float32) + np.float32(0.5)) - np.float32(0.5)
        i0 = np.floor(real).astype(np.int64)
        t = (real - i0.astype(np.float32)).astype(np.float32)
        for k in range(4):
            w = _cubic(t + np.float32(1 - k), -0.75)
            np.add.at(out, (rows, np.clip(i0 - 1 + k, 0, in_size - 1)), w)
    elif mode == "area":
        start = np.floor(np.float32(dst * in_size) / np.float32(out_size)).astype(np.int64)
        end = np.ceil(np.float32((dst + 1) * in_size) / np.float32(out_size)).astype(np.int64)
        for i in range(out_size):
            out[i, start[i] : end[i]] = np.float32(1) / np.float32(end[i] - start[i])
    else:
        raise ValueError(f"expected a resample method in {RESAMPLE_METHODS}, got {mode!r}")
    return out


@functools.lru_cache(maxsize=64)
def interpolation_matrix(in_size: int, out_size: int, mode: str, antialias: bool) -> np.ndarray:
    """The [out_size, in_size] float32 matrix of `F.interpolate(mode, align_corners=False, antialias)` on one axis."""
    if mode not in RESAMPLE_METHODS:
        raise ValueError(f"expected a resample method in {RESAMPLE_METHODS}, got {mode!r}")
    if antialias and mode in ("bilinear", "bicubic"):
        return _aa_weights(in_size, out_size, mode)
    return _plain_weights(in_size, out_size, mode)


@functools.partial(jax.jit, static_argnames=("size", "mode", "antialias"))
def resize(images: jnp.ndarray, size: tuple[int, int], mode: str, antialias: bool = False) -> jnp.ndarray:
    """Resize NHWC images to `size` = (h, w) as `F.interpolate(mode, antialias)` would (antialias: bilinear/bicubic)."""
    n, h, w, c = images.shape
    if (h, w) == tuple(size):
        return images
    mh = interpolation_matrix(h, int(size[0]), mode, antialias)
    mw = interpolation_matrix(w, int(size[1]), mode, antialias)
    hi = jax.lax.Precision.HIGHEST
    out = jnp.einsum("oh,nhwc->nowc", mh, images, precision=hi)
    return jnp.einsum("pw,nowc->nopc", mw, out, precision=hi)


def resize_to_max_edge(images: jnp.ndarray, max_edge: int, mode: str) -> jnp.ndarray:
    """Resize NHWC images so the long side is `max_edge` (aspect kept, sides rounded down), antialiased."""
    return resize(images, max_edge_size(images.shape[1], images.shape[2], max_edge), mode, True)


def pad_to_multiple(images: jnp.ndarray, align: int) -> tuple[jnp.ndarray, tuple[int, int]]:
    """Replicate-pad NHWC images at the bottom and right to multiples of `align`; returns (padded, (ph, pw))."""
    ph, pw = -images.shape[1] % align, -images.shape[2] % align
    return jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge"), (ph, pw)


def unpad(images: jnp.ndarray, padding: tuple[int, int]) -> jnp.ndarray:
    """Remove bottom/right `padding` = (ph, pw) from NHWC images."""
    ph, pw = padding
    return images[:, : images.shape[1] - ph, : images.shape[2] - pw]


@functools.partial(jax.jit, static_argnames=("processing_resolution", "resample_method", "align"))
def _preprocess(images: jnp.ndarray, processing_resolution: int, resample_method: str, align: int) -> jnp.ndarray:
    x = to_unit_range(images)
    if processing_resolution > 0:
        x = resize_to_max_edge(x, processing_resolution, resample_method)
    return pad_to_multiple(x, align)[0]


def preprocess(
    images: np.ndarray, processing_resolution: int, resample_method: str, align: int = 8
) -> tuple[jnp.ndarray, tuple[int, int]]:
    """uint8 [N, H, W, 3] -> ([-1, 1] float32 [N, PPH, PPW, 3], padding (ph, pw)).

    Long side resized to `processing_resolution` (0 keeps the native size), then replicate-padded to multiples of
    `align` (the VAE's down-sampling factor).
    """
    h, w = images.shape[1:3]
    if processing_resolution > 0:
        h, w = max_edge_size(h, w, processing_resolution)
    return _preprocess(images, processing_resolution, resample_method, align), (-h % align, -w % align)
