"""Per-source crops and resizes of the training rasters, as Marigold's released loaders shape each data set.

A source entry of `config.data.sources` may carry
- `crop=(H, W)`: every raster of a raw sample cut to H x W, bottom-aligned and horizontally centred (the KITTI
  benchmark crop, 352 x 1216, of Virtual KITTI 2), before the task prepares it (so depth is normalised over the crop);
- `resize=(H, W)` with `resize_method` "nearest" | "bilinear": every raster of the *prepared* example resized to
  H x W, after the task's target normalisation and augmentation, as released (Hypersim depth: nearest on every raster,
  colour included; Hypersim and Sintel normals, intrinsics: bilinear). Boolean rasters (masks) are always resized
  nearest. A raster is an array whose first two dimensions are the image's [H, W].

Nearest is the pixel-centre rule (torchvision's NEAREST_EXACT, PIL's NEAREST): output pixel i reads input pixel
floor((i + 0.5) * in / out). Bilinear is PIL's (and torchvision's antialiased) triangle filter, whose support widens
by in / out when shrinking, so a downscale averages every input pixel it covers.
"""

import numpy as np

from launch.data.sources import BadSample

METHODS = ("nearest", "bilinear")


def _rasters(sample, key="image"):
    """Keys of `sample` whose values are arrays sharing the first two dimensions of sample[key]."""
    hw = np.shape(sample[key])[:2]
    return [k for k, v in sample.items() if isinstance(v, np.ndarray) and v.ndim >= 2 and v.shape[:2] == hw]


def bottom_centre_crop(sample, height, width):
    """Every raster of `sample` cut to [height, width]: the bottom rows, horizontally centred (KITTI's benchmark crop:
    top = H - height, left = (W - width) // 2). Raises BadSample when the image is smaller than the crop."""
    h, w = np.shape(sample["image"])[:2]
    if h < height or w < width:
        raise BadSample(sample.get("name", "?"), f"image {h} x {w} is smaller than the crop {height} x {width}")
    top, left = h - height, (w - width) // 2
    out = dict(sample)
    for key in _rasters(sample):
        out[key] = np.ascontiguousarray(sample[key][top:top + height, left:left + width])
    return out


def nearest_indices(size_in, size_out):
    """Input index read by each of `size_out` output pixels: floor((i + 0.5) * size_in / size_out), int [size_out]."""
    return np.minimum(np.floor((np.arange(size_out) + 0.5) * size_in / size_out).astype(np.int64), size_in - 1)


def bilinear_weights(size_in, size_out):
    """float64 [size_out, size_in]: row i holds the normalised triangle-filter weights of output pixel i, centred at
    (i + 0.5) * scale in input coordinates, of support max(scale, 1) pixels each side (scale = size_in / size_out)."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centres = (np.arange(size_out) + 0.5) * scale
    distance = (np.arange(size_in)[None, :] + 0.5 - centres[:, None]) / support
    weights = np.maximum(0.0, 1.0 - np.abs(distance))
    return weights / weights.sum(axis=1, keepdims=True)


def resize(array, height, width, method):
    """array [H, W, ...] → [height, width, ...] by `method` ("nearest" | "bilinear"); bool arrays always nearest.

    Bilinear computes in float64 and returns float32."""
    if method not in METHODS:
        raise ValueError(f"resize_method must be one of {METHODS}, got {method!r}")
    array = np.asarray(array)
    h, w = array.shape[:2]
    if method == "nearest" or array.dtype == bool:
        return np.ascontiguousarray(array[nearest_indices(h, height)][:, nearest_indices(w, width)])
    out = np.einsum("ih,hw...->iw...", bilinear_weights(h, height), array.astype(np.float64))
    return np.einsum("jw,iw...->ij...", bilinear_weights(w, width), out).astype(np.float32)


def resize_example(example, height, width, method):
    """Every raster of a prepared example (rasters: see `_rasters`) resized to [height, width]."""
    out = dict(example)
    for key in _rasters(example):
        out[key] = resize(example[key], height, width, method)
    return out


SHAPING_FIELDS = ("crop", "resize", "resize_method")


class Cropped:
    """A source whose samples are `bottom_centre_crop`ped to `size` = (H, W) (same protocol as the source)."""

    def __init__(self, source, size):
        self.source = source
        self.size = tuple(int(s) for s in size)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return bottom_centre_crop(self.source[index], *self.size)

    def __repr__(self):
        return f"Cropped({self.source!r}, {self.size[0]} x {self.size[1]})"


class Resized:
    """`prepare(sample, rng)` followed by `resize_example` to `size` = (H, W) with `method` (picklable, for Grain
    worker processes)."""

    def __init__(self, prepare, size, method):
        if method not in METHODS:
            raise ValueError(f"resize_method must be one of {METHODS}, got {method!r}")
        self.prepare = prepare
        self.size = tuple(int(s) for s in size)
        self.method = method

    def __call__(self, sample, rng):
        return resize_example(self.prepare(sample, rng), *self.size, self.method)
