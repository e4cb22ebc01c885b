"""The one image loader and the writers of depth maps used by every CLI."""

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".gif")


class UnreadableImage(ValueError):
    """A file that cannot be decoded as an image."""


def read_rgb(path, name: str | None = None) -> np.ndarray:
    """Decode any Pillow-readable image as RGB uint8 [H, W, 3] (grayscale is replicated, alpha dropped).

    path: a file path or a binary file object; name: what error messages call it (default: the path).
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I"):
                im = Image.fromarray((np.asarray(im, np.float64) / 256).clip(0, 255).astype(np.uint8))
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnreadableImage(f"{name or path}: not a readable image ({e})") from e


def list_inputs(path: str) -> list[str]:
    """A single file, or the image files of a folder (sorted, by extension; not recursive)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path!r}")
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or folder: {path!r}")
    return [path]


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant map gives zeros)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values, dtype=np.float64)


def write_depth(out_dir: str, stem: str, values: np.ndarray, cmap: str = "Spectral_r") -> None:
    """Write `values` [H, W] as STEM.npy (float32, raw), STEM.png (16-bit, min-max) and STEM_color.png.

    cmap: a matplotlib colour map; upstream uses Spectral_r for disparity (near = red) and Spectral for metres.
    """
    import matplotlib

    values = np.asarray(values, np.float32)
    np.save(os.path.join(out_dir, f"{stem}.npy"), values)
    unit = normalise(values)
    Image.fromarray(np.round(unit * 65535).astype(np.uint16)).save(os.path.join(out_dir, f"{stem}.png"))
    rgb = matplotlib.colormaps[cmap](unit)[..., :3]
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(os.path.join(out_dir, f"{stem}_color.png"))
