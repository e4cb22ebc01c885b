"""ETH3D high-resolution multi-view training scenes: DSLR JPGs + raw float32 depth maps."""

import glob
import os

import numpy as np

from launch.eval.samples import DepthSample, default_split, read_split, require_dir
from launch.images import read_rgb

SPLIT_FILE = "eth3d_filename_list.txt"


def read_depth(path, shape):
    """An ETH3D depth map: raw little-endian float32, row-major, no header (6048×4032 files named `*.JPG`).

    shape: (H, W) of the matching image. inf (no ground truth) is returned as 0. Returns [H, W] float32 metres.
    """
    data = np.fromfile(path, dtype="<f4")
    if data.size != shape[0] * shape[1]:
        raise ValueError(f"{path}: {data.size} float32 values, expected {shape[0]}x{shape[1]} (the image's size) for "
                         "an ETH3D raw depth map")
    depth = data.reshape(shape).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0
    return depth


def discover(root):
    """(rgb, depth) pairs of the official layout: `SCENE/images/dslr_images/X.JPG` beside
    `SCENE/ground_truth_depth/dslr_images/X.JPG`."""
    rows = []
    pattern = os.path.join(root, "**", "ground_truth_depth", "dslr_images", "*.JPG")
    for depth in sorted(glob.glob(pattern, recursive=True)):
        scene = os.path.dirname(os.path.dirname(os.path.dirname(depth)))
        rgb = os.path.join(scene, "images", "dslr_images", os.path.basename(depth))
        if os.path.isfile(rgb):
            rows.append([os.path.relpath(rgb, root), os.path.relpath(depth, root)])
    return rows


class Eth3d:
    """data_dir: the root of the split list's paths (Marigold's `eth3d_filename_list.txt`: `RGB DEPTH` per line,
    taken from data_dir if present or from `split`), or of the official layout (all images with depth found)."""

    family = "eth3d"
    task = "depth"

    def __init__(self, data_dir, split=None):
        self.root = require_dir(data_dir, "ETH3D DSLR images and ground_truth_depth maps")
        split = default_split(data_dir, split, SPLIT_FILE)
        self.rows = read_split(split, 2) if split else discover(self.root)
        if not self.rows:
            raise FileNotFoundError(f"no ETH3D images with depth under {data_dir!r}: expected "
                                    "SCENE/images/dslr_images/*.JPG beside SCENE/ground_truth_depth/dslr_images/*.JPG "
                                    f"or a split list ({SPLIT_FILE})")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        rgb_path, depth_path = self.rows[i]
        rgb = read_rgb(os.path.join(self.root, rgb_path))
        depth = read_depth(os.path.join(self.root, depth_path), rgb.shape[:2])
        return DepthSample(os.path.splitext(rgb_path)[0], rgb, depth, depth > 0)
