"""The released training augmentations per modality, host-side numpy on uint8 RGB [H, W, 3] and target rasters.

- every modality: horizontal flip with probability `flip_p` (0.5) of every raster; a flipped normal map has its x
  component negated. (The released IID dataset drops its augmented rasters, a missing `return`; the flip is applied
  here, as the authors meant.)
- normals, in this order, before any resize: Gaussian blur (p 0.3, kernel 33, sigma ~ U(0, 4)) and motion blur
  (p 0.3, odd kernel size in 3..11, a horizontal line rotated by U(0, 360) degrees with nearest sampling, normalised
  to sum 1, zero padding), both only on 768-row images (Hypersim before its resize), then colour jitter (p 0.3:
  brightness, contrast, saturation factors U[0.5, 1.5], hue shift U[-0.2, 0.2], in random order, on [0, 1] floats).
  Each blur truncates back to integers, as the released `.int()` does.
"""

import numpy as np

from marigold_jax import targets as targets_lib

NORMALS_DEFAULTS = dict(gaussian_blur_p=0.3, gaussian_blur_sigma=4.0, motion_blur_p=0.3, motion_blur_kernel_size=11,
                        color_jitter_p=0.3, jitter=(0.5, 0.5, 0.5, 0.2), blur_rows=768)


def hflip(image, target, valid, normals):
    """Mirror image [H, W, 3], target [H, W, K] and valid [H, W]; negate target channel 0 when `normals`."""
    target = target[:, ::-1].copy()
    if normals:
        target[..., 0] = -target[..., 0]
    return image[:, ::-1].copy(), target, valid[:, ::-1].copy()


def gaussian_kernel(size, sigma):
    """1-D Gaussian kernel [size] (torchvision's: pdf at -(size-1)/2 .. (size-1)/2, normalised), float32."""
    x = np.linspace(-(size - 1) / 2.0, (size - 1) / 2.0, size, dtype=np.float32)
    k = np.exp(-0.5 * (x / np.float32(sigma)) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image, sigma, size=33):
    """Separable Gaussian blur with reflect padding of uint8 [H, W, 3] → uint8 (rounded, as torchvision does for
    integer images)."""
    k = gaussian_kernel(size, sigma)
    pad = size // 2
    x = np.pad(image.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    x = sum(k[i] * x[i : i + image.shape[0]] for i in range(size))
    x = sum(k[i] * x[:, i : i + image.shape[1]] for i in range(size))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def motion_kernel(size, angle_deg):
    """A horizontal line of ones through the centre of a size x size kernel, rotated counter-clockwise by
    `angle_deg` about the centre with nearest sampling, normalised to sum 1 → float32 [size, size]."""
    c = (size - 1) / 2.0
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    a = np.deg2rad(angle_deg)
    # inverse rotation of each output pixel into the unrotated kernel (y axis pointing down)
    sx = np.cos(a) * (x - c) - np.sin(a) * (y - c) + c
    sy = np.sin(a) * (x - c) + np.cos(a) * (y - c) + c
    ix, iy = np.round(sx).astype(int), np.round(sy).astype(int)
    inside = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size)
    kernel = (inside & (iy == size // 2)).astype(np.float32)
    if kernel.sum() == 0:
        kernel[size // 2, size // 2] = 1.0
    return kernel / kernel.sum()


def motion_blur(image, kernel):
    """Per-channel correlation of uint8 [H, W, 3] with `kernel` [k, k], zero padding, truncated to integers."""
    k = kernel.shape[0]
    pad = k // 2
    x = np.pad(image.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)))
    h, w = image.shape[:2]
    out = sum(kernel[i, j] * x[i : i + h, j : j + w] for i in range(k) for j in range(k))
    return np.clip(np.trunc(out), 0, 255).astype(np.uint8)


def _gray(x):
    return 0.2989 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]


def _hue_shift(x, shift):
    """Rotate the hue of RGB floats [H, W, 3] in [0, 1] by `shift` turns (HSV round trip)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    maxc, minc = x.max(-1), x.min(-1)
    v, delta = maxc, maxc - minc
    s = np.where(maxc > 0, delta / np.where(maxc > 0, maxc, 1), 0)
    d = np.where(delta > 0, delta, 1)
    h = np.where(maxc == r, (g - b) / d, np.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    h = (h + shift) % 1.0
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(int) % 6
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    out = [np.choose(i, [c[ch] for c in choices]) for ch in range(3)]
    return np.stack(out, axis=-1)


def color_jitter(image, brightness, contrast, saturation, hue, order):
    """Colour jitter of uint8 [H, W, 3] with the given factors and hue shift, applied in `order` (a permutation of
    0..3: brightness, contrast, saturation, hue) on [0, 1] floats, then × 255 truncated to uint8."""
    x = image.astype(np.float32) / 255.0
    for op in order:
        if op == 0:
            x = np.clip(x * brightness, 0, 1)
        elif op == 1:
            x = np.clip(contrast * x + (1 - contrast) * _gray(x).mean(), 0, 1)
        elif op == 2:
            x = np.clip(saturation * x + (1 - saturation) * _gray(x)[..., None], 0, 1)
        else:
            x = _hue_shift(x, hue)
    return np.clip(np.trunc(x * 255.0), 0, 255).astype(np.uint8)


def augment(image, target, valid, modality, rng, flip_p=0.5, normals_options=None):
    """One training example's augmentation: (image uint8 [H, W, 3], target [H, W, 3T], valid [H, W]) → same.

    rng: np.random.Generator; normals_options: overrides of NORMALS_DEFAULTS (normals only).
    """
    targets_lib.check_modality(modality)
    normals = modality == "normals"
    if rng.random() < flip_p:
        image, target, valid = hflip(image, target, valid, normals)
    if not normals:
        return image, target, valid
    o = {**NORMALS_DEFAULTS, **(normals_options or {})}
    blur_ok = image.shape[0] == o["blur_rows"]
    if rng.random() < o["gaussian_blur_p"] and blur_ok:
        image = gaussian_blur(image, max(rng.uniform(0.0, o["gaussian_blur_sigma"]), 1e-3))
    if rng.random() < o["motion_blur_p"] and blur_ok:
        size = int(rng.choice(np.arange(3, o["motion_blur_kernel_size"] + 1, 2)))
        image = motion_blur(image, motion_kernel(size, rng.uniform(0.0, 360.0)))
    if rng.random() < o["color_jitter_p"]:
        b, c, s, h = o["jitter"]
        image = color_jitter(image, rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s),
                             rng.uniform(-h, h), rng.permutation(4))
    return image, target, valid
