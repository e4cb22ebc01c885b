"""ScanNet depth frames (Marigold's 800-frame validation sample): colour JPG + 16-bit PNG depth in millimetres."""

import os

import numpy as np
from PIL import Image

from launch.eval.samples import DepthSample, default_split, read_png16, read_split, require_dir
from launch.images import read_rgb

SPLIT_FILE = "scannet_val_sampled_list_800_1.txt"


class Scannet:
    """data_dir: root of the split list's paths (`scene0000_00/color/N.jpg scene0000_00/depth/N.png` per line;
    default `data_dir/scannet_val_sampled_list_800_1.txt`, Marigold's split). Depth 0 = missing. A colour frame
    larger than its depth map (raw ScanNet: 1296×968 vs 640×480) is resized to the depth map (bilinear)."""

    family = "scannet"
    task = "depth"

    def __init__(self, data_dir, split=None):
        self.root = require_dir(data_dir, "ScanNet scenes with color/ and depth/ frames")
        split = default_split(data_dir, split, SPLIT_FILE)
        if split is None:
            raise FileNotFoundError(f"no split list: put {SPLIT_FILE} (Marigold's ScanNet list) in --data-dir or pass "
                                    "--split")
        self.rows = read_split(split, 2)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        rgb_path, depth_path = self.rows[i]
        rgb = read_rgb(os.path.join(self.root, rgb_path))
        depth = read_png16(os.path.join(self.root, depth_path)).astype(np.float32) / 1000.0
        if rgb.shape[:2] != depth.shape:
            h, w = depth.shape
            rgb = np.asarray(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        return DepthSample(os.path.splitext(rgb_path)[0], rgb, depth, depth > 0)
