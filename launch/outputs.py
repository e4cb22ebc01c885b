"""Where the inference CLIs write, and the depth file formats they write.

Outputs mirror each input's path relative to the input root (`photos/a/b.jpg` → `OUT/a/b.npy`). When two inputs
would write the same file (`a.jpg` and `a.png`, or `a.png` and `a_color.jpg`), those inputs keep their
extension in the stem (`a.jpg.npy`, `a.png.npy`). Nothing is written when an output would overwrite an input.

Depth formats (`--save`): `npy` (float32 H×W, the raw output), `png16` (16-bit, min-max normalised to
[0, 65535]), `color` (8-bit RGB through a colour map), and for metric depth `mm` (uint16 millimetres, 0 =
invalid, the KITTI/NYU convention: depths ≤ 0, not finite or beyond 65.535 m are 0) and `pfm` (float32 metres).
"""

import os

import numpy as np
from PIL import Image

from launch.data.formats import write_pfm

DEPTH_SUFFIXES = {"npy": ".npy", "png16": ".png", "color": "_color.png", "mm": "_mm.png", "pfm": ".pfm"}
METRIC_ONLY = ("mm", "pfm")


class OutputConflict(ValueError):
    """The outputs would overwrite an input, or two inputs' outputs cannot be told apart."""


def _names(stem: str, suffixes) -> list[str]:
    return [os.path.normcase(stem + s) for s in suffixes]


def _clashing(stems: list[str], suffixes) -> set[int]:
    owner, clash = {}, set()
    for i, stem in enumerate(stems):
        for name in _names(stem, suffixes):
            if name in owner and owner[name] != i:
                clash.update((i, owner[name]))
            owner[name] = i
    return clash


def plan_stems(inputs, out_dir: str, suffixes) -> list[str]:
    """Output stems (paths under `out_dir` without the suffix) for `inputs` (`launch.images.Input`s).

    suffixes: what each input writes after its stem (".npy", "_color.png", ...). Raises OutputConflict, before
    anything is written, when an output would overwrite an input file or two inputs still clash with extensions.
    """
    stems = [os.path.splitext(item.rel)[0] for item in inputs]
    for i in _clashing(stems, suffixes):
        stems[i] = inputs[i].rel
    clash = sorted(_clashing(stems, suffixes))
    if clash:
        raise OutputConflict(f"inputs {', '.join(inputs[i].path for i in clash[:4])} would write the same output "
                             "files; rename one of them")
    stems = [os.path.join(out_dir, s) for s in stems]
    sources = {os.path.realpath(item.path): item.path for item in inputs}
    for stem in stems:
        for suffix in suffixes:
            source = sources.get(os.path.realpath(stem + suffix))
            if source is not None:
                raise OutputConflict(f"refusing to write {stem + suffix}: it would overwrite the input {source}; "
                                     "choose another --output folder")
    return stems


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to [0, 1] (a constant map gives zeros)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values, dtype=np.float64)


def colorize(values: np.ndarray, cmap: str) -> np.ndarray:
    """values [H, W] → RGB uint8 [H, W, 3] through matplotlib's `cmap` after min-max normalisation."""
    import matplotlib

    return np.round(matplotlib.colormaps[cmap](normalise(values))[..., :3] * 255).astype(np.uint8)


def millimetres(metres: np.ndarray) -> np.ndarray:
    """Metres [H, W] → uint16 millimetres, 0 where the depth is not finite, ≤ 0 or beyond 65.535 m."""
    mm = np.round(np.asarray(metres, np.float64) * 1000)
    valid = np.isfinite(mm) & (mm > 0) & (mm <= 65535)
    return np.where(valid, mm, 0).astype(np.uint16)


def save_png(path: str, pixels: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(pixels).save(path)


def save_npy(path: str, values: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.save(path, values)


def write_depth(stem: str, values: np.ndarray, kinds, cmap: str = "Spectral_r") -> None:
    """Write `values` [H, W] as the `kinds` of the module docstring: STEM.npy, STEM.png, STEM_color.png,
    STEM_mm.png, STEM.pfm. cmap: upstream uses Spectral_r for disparity (near = red), Spectral for metres."""
    values = np.asarray(values, np.float32)
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    writers = {
        "npy": lambda path: save_npy(path, values),
        "png16": lambda path: save_png(path, np.round(normalise(values) * 65535).astype(np.uint16)),
        "color": lambda path: save_png(path, colorize(values, cmap)),
        "mm": lambda path: save_png(path, millimetres(values)),
        "pfm": lambda path: write_pfm(path, values),
    }
    for kind in kinds:
        writers[kind](stem + DEPTH_SUFFIXES[kind])
