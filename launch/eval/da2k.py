"""DA-2K (Depth Anything V2's relative-depth benchmark): images + `annotations.json` of annotated point pairs."""

import json
import os

import numpy as np

from launch.eval.samples import PairsSample, require_dir
from launch.images import read_rgb

ANNOTATIONS = "annotations.json"


def read_annotations(path):
    """`{image_path: [{"point1": [row, col], "point2": [row, col], "closer_point": "point1"|"point2"}, ...]}`.

    Returns {image_path: pairs [n, 2, 2] int64} with the closer point first.
    """
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image paths to lists of point pairs")
    out = {}
    for image, entries in data.items():
        pairs = []
        for entry in entries:
            closer = entry.get("closer_point")
            if closer not in ("point1", "point2"):
                raise ValueError(f"{path}: {image}: closer_point must be 'point1' or 'point2', got {closer!r}")
            farther = "point2" if closer == "point1" else "point1"
            pairs.append([entry[closer], entry[farther]])
        out[image] = np.asarray(pairs, np.int64).reshape(-1, 2, 2)
    return out


class Da2k:
    """data_dir: the DA-2K folder (annotations.json and the images/ it names). split: another annotations file."""

    family = "da2k"
    task = "pairs"

    def __init__(self, data_dir, split=None):
        self.root = require_dir(data_dir, f"DA-2K ({ANNOTATIONS} and images/)")
        path = split or os.path.join(self.root, ANNOTATIONS)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} not found: DA-2K's {ANNOTATIONS} must be in --data-dir")
        self.annotations = read_annotations(path)
        self.images = sorted(self.annotations)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        image = self.images[i]
        rgb = read_rgb(os.path.join(self.root, image))
        return PairsSample(os.path.splitext(image)[0], rgb, self.annotations[image])
