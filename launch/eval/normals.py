"""Surface-normal test sets in the layout Marigold evaluates on (NYUv2, ScanNet, iBims-1, Sintel).

Each frame is `NAME_img.png` + `NAME_normal.npy` ([H, W, 3] float32 unit vectors, zero vectors = no ground truth),
listed in Marigold's `data_split/*_normals/*.txt` (`IMG NORMAL` per line). The ground truth shares the convention
of Marigold's normals output, which Marigold's evaluation compares without conversion.
"""

import glob
import os

import numpy as np

from launch.eval.samples import NormalsSample, default_split, read_split, require_dir
from launch.images import read_rgb

SPLIT_FILES = {"nyu": "nyuv2_test.txt", "scannet": "scannet_test.txt", "ibims": "ibims_test.txt",
               "sintel": "sintel_filtered.txt"}
SINTEL_CROP = 221  # Marigold crops 221 columns off each side of Sintel's 1024-wide frames (→ 582)


def read_frame(root, rgb_path, normals_path):
    """RGB uint8 [H, W, 3] and normals float32 [H, W, 3] of one frame, paths relative to root."""
    rgb = read_rgb(os.path.join(root, rgb_path))
    normals = np.load(os.path.join(root, normals_path)).astype(np.float32)
    if normals.shape != (*rgb.shape[:2], 3):
        raise ValueError(f"{normals_path}: expected normals [{rgb.shape[0]}, {rgb.shape[1]}, 3], got {normals.shape}")
    return rgb, normals


def discover(root):
    rows = []
    for normal in sorted(glob.glob(os.path.join(root, "**", "*_normal.npy"), recursive=True)):
        rgb = normal[: -len("_normal.npy")] + "_img.png"
        if os.path.isfile(rgb):
            rows.append([os.path.relpath(rgb, root), os.path.relpath(normal, root)])
    return rows


class MarigoldNormals:
    """family: "nyu" | "scannet" | "ibims" | "sintel". data_dir: root of the list's paths; split: the list file
    (default: Marigold's list name in data_dir, else every `*_normal.npy` with its `*_img.png` under data_dir).
    Sintel: sky (|n| ≤ 0.1) becomes the camera-facing normal (0, 0, 1) and both sides are cropped, as Marigold."""

    task = "normals"

    def __init__(self, family, data_dir, split=None):
        if family not in SPLIT_FILES:
            raise ValueError(f"unknown normals set {family!r}: expected one of {sorted(SPLIT_FILES)}")
        self.family = family
        self.root = require_dir(data_dir, f"the {family} normals frames (*_img.png, *_normal.npy)")
        split = default_split(data_dir, split, SPLIT_FILES[family])
        self.rows = read_split(split, 2) if split else discover(self.root)
        if not self.rows:
            raise FileNotFoundError(f"no normals frames under {data_dir!r}: expected NAME_img.png beside "
                                    f"NAME_normal.npy, or a split list ({SPLIT_FILES[family]})")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        rgb_path, normals_path = self.rows[i]
        rgb, normals = read_frame(self.root, rgb_path, normals_path)
        if self.family == "sintel":
            sky = np.linalg.norm(normals, axis=-1) <= 0.1
            normals[sky] = (0.0, 0.0, 1.0)
            w = rgb.shape[1]
            rgb, normals = rgb[:, SINTEL_CROP : w - SINTEL_CROP], normals[:, SINTEL_CROP : w - SINTEL_CROP]
        name = os.path.splitext(rgb_path)[0]
        return NormalsSample(name, np.ascontiguousarray(rgb), np.ascontiguousarray(normals),
                             np.linalg.norm(normals, axis=-1) > 0)
