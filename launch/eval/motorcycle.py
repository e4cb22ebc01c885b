"""A real labelled scene that ships offline: scikit-image's Middlebury 2014 "motorcycle" (quarter resolution)."""

import numpy as np

from launch.eval.samples import DepthSample

# calibration of the 4× down-sampled pair, from `skimage.data.stereo_motorcycle`'s documentation
FOCAL_PX = 994.978
DOFFS_PX = 31.086  # x-difference of the principal points
BASELINE_M = 0.193001


def disparity_to_depth(disparity):
    """Middlebury: Z = baseline · f / (d + doffs), metres; unknown (inf/NaN) disparity → 0 (invalid)."""
    disparity = np.asarray(disparity, np.float64)
    known = np.isfinite(disparity)
    depth = np.zeros(disparity.shape, np.float32)
    depth[known] = BASELINE_M * FOCAL_PX / (disparity[known] + DOFFS_PX)
    return depth


class Motorcycle:
    """One sample: the left image (500×741) and its ground-truth depth from the ground-truth disparity."""

    family = "motorcycle"
    task = "depth"

    def __init__(self):
        try:
            from skimage import data
        except ImportError as e:
            raise ImportError("the motorcycle scene comes with scikit-image: pip install scikit-image") from e

        left, _, disparity = data.stereo_motorcycle()
        depth = disparity_to_depth(disparity)
        self.sample = DepthSample("motorcycle", np.asarray(left, np.uint8), depth, depth > 0)

    def __len__(self):
        return 1

    def __getitem__(self, i):
        if i != 0:
            raise IndexError(f"the motorcycle dataset has one sample, asked for index {i}")
        return self.sample
