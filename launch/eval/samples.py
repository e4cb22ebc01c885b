"""What the benchmark readers return, and the file reading they share.

Readers are sequences: `len(reader)`, `reader[i]` → one sample, read lazily from disk. Each has `family` (the key
of its protocol settings, e.g. "nyu") and `task` ("depth", "normals" or "pairs").
"""

import dataclasses
import os

import numpy as np
from PIL import Image


@dataclasses.dataclass
class DepthSample:
    """name: unique id (used to resume); rgb: [H, W, 3] uint8; depth: [H, W] float32 metres; mask: [H, W] bool."""

    name: str
    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass
class NormalsSample:
    """rgb: [H, W, 3] uint8; normals: [H, W, 3] float32 unit vectors (camera frame); mask: [H, W] bool."""

    name: str
    rgb: np.ndarray
    normals: np.ndarray
    mask: np.ndarray


@dataclasses.dataclass
class PairsSample:
    """rgb: [H, W, 3] uint8; pairs: [n, 2, 2] int64, ((row, col) of the closer point, (row, col) of the farther)."""

    name: str
    rgb: np.ndarray
    pairs: np.ndarray


def read_png16(path):
    """A 16-bit single-channel PNG as [H, W] uint16 (KITTI, ScanNet and NYU-style depth maps)."""
    with Image.open(path) as image:
        array = np.asarray(image)
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32, np.uint8):
        raise ValueError(f"{path}: expected a single-channel 16-bit PNG depth map, got {array.dtype} {array.shape}")
    return array.astype(np.uint16)


def read_split(path, columns):
    """A split list (Marigold / BTS format): one sample per line, whitespace-separated relative paths.

    Returns the rows with at least `columns` fields, each cut to `columns`; blank lines are skipped.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"split list {path!r} not found: pass --split with the list file")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < columns:
                raise ValueError(f"{path}:{number}: expected {columns} whitespace-separated fields, got {line!r}")
            rows.append(fields[:columns])
    return rows


def default_split(data_dir, split, file_name):
    """The split list to use: `split` if given, else `data_dir/file_name` if present, else None."""
    if split is not None:
        return split
    candidate = os.path.join(data_dir, file_name)
    return candidate if os.path.isfile(candidate) else None


def require_dir(data_dir, what):
    """Fail early, with what the directory should hold, when `data_dir` is missing."""
    if data_dir is None or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir!r} is not a directory: expected {what}")
    return data_dir
