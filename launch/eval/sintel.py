"""MPI Sintel training set with depth: `.dpt` depth maps beside the clean or final rendering pass."""

import glob
import os

import numpy as np

from launch.eval.samples import DepthSample, require_dir
from launch.images import read_rgb

DPT_TAG = 202021.25
PASSES = ("final", "clean")


def read_dpt(path):
    """A Sintel `.dpt` file: float32 tag 202021.25, int32 width, int32 height, then float32 depth row-major (LE).

    Returns [H, W] float32 depth (Sintel's scene units, treated as metres).
    """
    with open(path, "rb") as f:
        tag = np.fromfile(f, "<f4", 1)
        size = np.fromfile(f, "<i4", 2)
        if tag.size != 1 or tag[0] != np.float32(DPT_TAG) or size.size != 2:
            raise ValueError(f"{path}: not a Sintel .dpt file (expected the tag {DPT_TAG} and a width/height header)")
        width, height = int(size[0]), int(size[1])
        if not (0 < width < 100_000 and 0 < height < 100_000):
            raise ValueError(f"{path}: implausible .dpt size {width}x{height}")
        depth = np.fromfile(f, "<f4", width * height)
    if depth.size != width * height:
        raise ValueError(f"{path}: truncated .dpt, {depth.size} of {width * height} depth values")
    return depth.reshape(height, width)


class Sintel:
    """data_dir: Sintel's `training/` folder (or its parent) holding `depth/SCENE/frame_NNNN.dpt` and
    `{clean,final}/SCENE/frame_NNNN.png`. split: the rendering pass, "final" (default) or "clean"."""

    family = "sintel"
    task = "depth"

    def __init__(self, data_dir, split=None):
        require_dir(data_dir, "Sintel's training/ folder with depth/ and clean/ or final/")
        nested = os.path.join(data_dir, "training")
        self.root = nested if os.path.isdir(nested) else data_dir
        self.pass_name = split or "final"
        if self.pass_name not in PASSES:
            raise ValueError(f"Sintel split must be a rendering pass, one of {PASSES}; got {self.pass_name!r}")
        self.rows = []
        for dpt in sorted(glob.glob(os.path.join(self.root, "depth", "*", "*.dpt"))):
            scene, frame = dpt.split(os.sep)[-2], os.path.splitext(os.path.basename(dpt))[0]
            rgb = os.path.join(self.root, self.pass_name, scene, frame + ".png")
            if os.path.isfile(rgb):
                self.rows.append((f"{scene}/{frame}", rgb, dpt))
        if not self.rows:
            raise FileNotFoundError(f"no Sintel frames under {self.root!r}: expected depth/SCENE/*.dpt with "
                                    f"{self.pass_name}/SCENE/*.png")

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        name, rgb_path, dpt_path = self.rows[i]
        rgb = read_rgb(rgb_path)
        depth = read_dpt(dpt_path)
        if depth.shape != rgb.shape[:2]:
            raise ValueError(f"{dpt_path} is {depth.shape} but {rgb_path} is {rgb.shape[:2]}")
        return DepthSample(name, rgb, depth, np.isfinite(depth) & (depth > 0))
