"""DIODE validation set (indoors 325 + outdoor 446 frames): RGB PNG, depth / mask / normals as `.npy`."""

import glob
import os

import numpy as np

from launch.eval.normals import read_frame
from launch.eval.samples import DepthSample, NormalsSample, read_split, require_dir
from launch.images import read_rgb

SUBSETS = ("indoors", "outdoor")


def _rows(data_dir, split, suffixes):
    """Relative paths [rgb, *others] for each frame: from a split list file, or found under data_dir.

    split: None (all frames), "indoors" / "outdoor" (one subset), or a list file (Marigold format).
    """
    if split is not None and split not in SUBSETS:
        return read_split(split, 1 + len(suffixes))
    rows = []
    for rgb in sorted(glob.glob(os.path.join(data_dir, "**", "*.png"), recursive=True)):
        stem = os.path.splitext(rgb)[0]
        others = [stem + s for s in suffixes]
        if all(os.path.isfile(o) for o in others):
            rel = [os.path.relpath(p, data_dir) for p in [rgb, *others]]
            if split is None or rel[0].split(os.sep)[0] == split:
                rows.append(rel)
    if not rows:
        raise FileNotFoundError(f"no DIODE frames under {data_dir!r}: expected NAME.png beside "
                                f"{', '.join('NAME' + s for s in suffixes)}")
    return rows


class DiodeDepth:
    """data_dir: the `val` folder (or the root of a split list's paths). Depth `NAME_depth.npy` [H, W, 1] float32
    metres, validity `NAME_depth_mask.npy` [H, W] (1 = valid). split: see `_rows`."""

    family = "diode"
    task = "depth"

    def __init__(self, data_dir, split=None):
        self.root = require_dir(data_dir, "the DIODE val/ folder (indoors/, outdoor/)")
        self.rows = _rows(self.root, split, ("_depth.npy", "_depth_mask.npy"))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        rgb_path, depth_path, mask_path = self.rows[i]
        rgb = read_rgb(os.path.join(self.root, rgb_path))
        depth = np.load(os.path.join(self.root, depth_path)).astype(np.float32).reshape(rgb.shape[:2])
        mask = np.load(os.path.join(self.root, mask_path)).reshape(rgb.shape[:2]) > 0
        return DepthSample(os.path.splitext(rgb_path)[0], rgb, depth, mask)


class DiodeNormals:
    """DIODE surface normals `NAME_normal.npy` [H, W, 3] float32 unit vectors; zero vectors have no ground truth."""

    family = "diode"
    task = "normals"

    def __init__(self, data_dir, split=None):
        self.root = require_dir(data_dir, "the DIODE val/ folder (indoors/, outdoor/)")
        self.rows = _rows(self.root, split, ("_normal.npy",))

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        rgb_path, normals_path = self.rows[i]
        rgb, normals = read_frame(self.root, rgb_path, normals_path)
        return NormalsSample(os.path.splitext(rgb_path)[0], rgb, normals, np.linalg.norm(normals, axis=-1) > 0)
