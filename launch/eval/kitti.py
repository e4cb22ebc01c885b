"""KITTI Eigen test split: KITTI raw RGB frames + the annotated depth maps (16-bit PNG, metres = value / 256)."""

import os

import numpy as np

from launch.eval import protocols
from launch.eval.samples import DepthSample, default_split, read_png16, read_split, require_dir
from launch.images import read_rgb

SPLIT_FILE = "eigen_test_files_with_gt.txt"


class KittiEigen:
    """The 652 Eigen test frames that have ground truth (697 listed; lines whose depth is "None" are skipped).

    data_dir: root that the split list's paths are relative to, e.g. `2011_09_26/..._sync/image_02/data/X.png`
    (raw RGB) and `..._sync/proj_depth/groundtruth/image_02/X.png` (annotated depth). split: the list file
    (BTS/Marigold format: `RGB DEPTH FOCAL` per line; default `data_dir/eigen_test_files_with_gt.txt`).
    kb_crop: crop RGB and depth to the 352×1216 KITTI benchmark window first (Marigold, ZoeDepth).
    Depth 0 = no LiDAR point (invalid).
    """

    family = "kitti"
    task = "depth"

    def __init__(self, data_dir, split=None, kb_crop=True):
        self.root = require_dir(data_dir, "the KITTI raw frames and the annotated depth maps")
        split = default_split(data_dir, split, SPLIT_FILE)
        if split is None:
            raise FileNotFoundError(f"no split list: put {SPLIT_FILE} (the Eigen test list with ground truth, "
                                    "BTS/Marigold format) in --data-dir or pass --split")
        self.rows = [r for r in read_split(split, 2) if r[1] != "None"]
        self.kb_crop = kb_crop

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        rgb_path, depth_path = self.rows[i]
        rgb = read_rgb(os.path.join(self.root, rgb_path))
        depth = read_png16(os.path.join(self.root, depth_path)).astype(np.float32) / 256.0
        if rgb.shape[:2] != depth.shape:
            raise ValueError(f"{rgb_path} is {rgb.shape[:2]} but its depth {depth_path} is {depth.shape}")
        if self.kb_crop:
            rgb, depth = protocols.kb_crop(rgb), protocols.kb_crop(depth)
        return DepthSample(os.path.splitext(rgb_path)[0], np.ascontiguousarray(rgb), np.ascontiguousarray(depth),
                           depth > 0)
