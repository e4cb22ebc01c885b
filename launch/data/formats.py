"""Decoders for the on-disk formats of the teacher's training sets, and their unit conversions.

Every reader raises ValueError (or OSError for unreadable files) naming the file and what was wrong; the dataset
sources turn those into `BadSample`. h5py (Hypersim) and OpenEXR (IRS) are imported lazily: they are the optional
`data` extra, needed only to read those sets.
"""

import re

import numpy as np
from PIL import Image

HYPERSIM_FOCAL_PX = 886.81  # at 1024 x 768, apple/ml-hypersim issue #9; used by Marigold and DAv2 metric_depth
HYPERSIM_WIDTH = 1024


def read_image(path):
    """An 8-bit colour or grey image file (JPEG, PNG, ...) -> uint8 [H, W, 3] RGB."""
    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA", "L", "P", "CMYK", "YCbCr"):
            raise ValueError(f"{path}: expected an 8-bit colour image, found PIL mode {im.mode!r}")
        return np.asarray(im.convert("RGB"))


def read_png16(path):
    """A 16-bit single-channel PNG -> uint16 [H, W] (the stored integers, no unit conversion)."""
    with Image.open(path) as im:
        if im.format != "PNG" or im.mode not in ("I;16", "I;16B", "I"):
            raise ValueError(f"{path}: expected a 16-bit grayscale PNG, found {im.format} with PIL mode {im.mode!r}")
        a = np.asarray(im)
    if a.dtype != np.uint16:
        if a.min() < 0 or a.max() > 65535:
            raise ValueError(f"{path}: 16-bit PNG values outside [0, 65535]")
        a = a.astype(np.uint16)
    return a


_PFM_HEADER = re.compile(rb"^(PF|Pf)\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s")


def read_pfm(path):
    """A PFM file -> float32 [H, W] ("Pf") or [H, W, 3] ("PF"), rows top to bottom.

    PFM stores rows bottom to top; a negative scale means little-endian floats, a positive one big-endian.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    m = _PFM_HEADER.match(data)
    if m is None:
        raise ValueError(f"{path}: not a PFM file (expected a 'PF' or 'Pf' header with width, height and scale)")
    channels = 3 if m.group(1) == b"PF" else 1
    width, height, scale = int(m.group(2)), int(m.group(3)), float(m.group(4))
    dtype = np.dtype("<f4" if scale < 0 else ">f4")
    count = width * height * channels
    body = data[m.end():]
    if len(body) < count * 4:
        raise ValueError(f"{path}: PFM truncated: {width}x{height}x{channels} needs {count * 4} bytes, "
                         f"found {len(body)}")
    a = np.frombuffer(body, dtype=dtype, count=count).astype(np.float32)
    a = a.reshape(height, width, channels)[::-1]
    return np.ascontiguousarray(a[..., 0] if channels == 1 else a)


def write_pfm(path, array):
    """Write float32 [H, W] or [H, W, 3] (rows top to bottom) as a little-endian PFM (rows bottom to top)."""
    a = np.asarray(array, dtype="<f4")
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"write_pfm: expected [H, W] or [H, W, 3], got shape {a.shape}")
    kind = b"PF" if a.ndim == 3 else b"Pf"
    with open(path, "wb") as fh:
        fh.write(kind + b"\n%d %d\n-1.0\n" % (a.shape[1], a.shape[0]))
        fh.write(np.ascontiguousarray(a[::-1]).tobytes())


def read_exr(path):
    """An OpenEXR scanline or tiled image -> {channel name: float32 [H, W]} (half and uint channels converted)."""
    import OpenEXR

    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            return {k: np.asarray(v.pixels, dtype=np.float32) for k, v in f.channels().items()}
    except RuntimeError as e:
        raise ValueError(f"{path}: cannot read as OpenEXR ({e})") from e


def read_hdf5(path, key="dataset"):
    """One dataset of an HDF5 file (Hypersim stores each image as the dataset "dataset") -> numpy array."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise ValueError(f"{path}: HDF5 file has no dataset {key!r} (found {list(f.keys())})")
            return f[key][()]
    except OSError as e:
        raise ValueError(f"{path}: cannot read as HDF5 ({e})") from e


def hypersim_planar_depth(distance):
    """Hypersim `depth_meters` (distance to the camera centre) [H, W] -> planar depth z [H, W], float32 metres.

    z = distance * f / sqrt(f^2 + u^2 + v^2) with (u, v) the pixel-centre offsets from the image centre and
    f = 886.81 px at 1024 px wide, scaled to the actual width (as the Marigold and DAv2 loaders do at 1024 x 768).
    """
    h, w = distance.shape
    f = HYPERSIM_FOCAL_PX * w / HYPERSIM_WIDTH
    u = np.arange(w) + 0.5 - 0.5 * w
    v = np.arange(h) + 0.5 - 0.5 * h
    norm = np.sqrt(f * f + u[None, :] ** 2 + v[:, None] ** 2)
    return (distance.astype(np.float64) * (f / norm)).astype(np.float32)


def hypersim_tonemap(rgb, valid):
    """Hypersim HDR colour [H, W, 3] (linear) -> uint8 [H, W, 3], as the Hypersim authors' tone-mapping.

    apple/ml-hypersim `scene_generate_images_tonemap.py`: brightness = 0.3 R + 0.59 G + 0.11 B; scale so that its
    90th percentile over valid pixels becomes 0.8 after gamma 1/2.2 (scale 0 if that percentile is < 1e-4, 1 if
    no pixel is valid); out = clip((scale * rgb)^(1/2.2), 0, 1). Quantised by truncation, `(x * 255).astype(uint8)`,
    as Marigold's Hypersim preprocessing does. Non-finite colours count as 0.
    """
    rgb = np.nan_to_num(rgb.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    gamma = 1.0 / 2.2
    if not valid.any():
        scale = 1.0
    else:
        brightness = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
        current = np.percentile(brightness[valid], 90)
        scale = 0.0 if current < 1e-4 else np.power(0.8, 1.0 / gamma) / current
    out = np.clip(np.power(np.maximum(scale * rgb, 0.0), gamma), 0.0, 1.0)
    return (out * 255).astype(np.uint8)


def stereo_depth(disparity, focal_px, baseline_m):
    """Disparity [H, W] (pixels) -> (depth = baseline * focal / disparity in metres, valid = finite disparity > 0)."""
    valid = np.isfinite(disparity) & (disparity > 0)
    depth = np.zeros(disparity.shape, np.float32)
    depth[valid] = baseline_m * focal_px / disparity[valid]
    return depth, valid
