"""NYU Depth V2 readers: the labelled `.mat` (official 654-image test split) and TFDS `nyu_depth_v2`."""

import os

import numpy as np

from launch.eval.nyu_split import TEST_INDICES
from launch.eval.samples import DepthSample

LABELLED_FILE = "nyu_depth_v2_labeled.mat"
NUM_LABELLED = 1449


class NyuLabelled:
    """`nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5; MATLAB's column-major arrays read transposed).

    HDF5 layout: `images` [N, 3, W, H] uint8, `depths` [N, W, H] float32 metres (hole-filled), `rawDepths`
    [N, W, H] (projected Kinect depth, 0 where missing). data_dir: the folder holding the file, or the file.
    split: "test" (default, the official 654) or "train" (the other 795). depth_key: "depths" or "rawDepths".
    """

    family = "nyu"
    task = "depth"

    def __init__(self, data_dir, split=None, depth_key="depths"):
        path = data_dir if os.path.isfile(data_dir) else os.path.join(data_dir, LABELLED_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} not found: --data-dir must hold {LABELLED_FILE} (the NYUv2 labelled "
                                    "dataset) or be that file")
        if depth_key not in ("depths", "rawDepths"):
            raise ValueError(f"depth_key must be 'depths' or 'rawDepths', got {depth_key!r}")
        split = split or "test"
        test = TEST_INDICES
        if split == "test":
            self.indices = test
        elif split == "train":
            self.indices = tuple(sorted(set(range(1, NUM_LABELLED + 1)) - set(test)))
        else:
            raise ValueError(f"NYUv2 labelled split must be 'test' or 'train', got {split!r}")
        self.path = path
        self.depth_key = depth_key
        self._file = None

    def __len__(self):
        return len(self.indices)

    def _h5(self):
        if self._file is None:
            try:
                import h5py
            except ImportError as e:
                raise ImportError("reading the NYUv2 .mat needs h5py: pip install 'dav2-marigold-jax[data]'") from e
            self._file = h5py.File(self.path, "r")
            for key in ("images", self.depth_key):
                if key not in self._file:
                    raise ValueError(f"{self.path}: no {key!r} array; expected the NYUv2 labelled .mat (v7.3)")
        return self._file

    def __getitem__(self, i):
        index = self.indices[i]
        f = self._h5()
        rgb = np.ascontiguousarray(np.transpose(f["images"][index - 1], (2, 1, 0)))
        depth = np.ascontiguousarray(np.asarray(f[self.depth_key][index - 1], np.float32).T)
        return DepthSample(f"nyu_{index:04d}", rgb, depth, depth > 0)


class NyuTfds:
    """TFDS `nyu_depth_v2` (FastDepth's 480×640 frames; `image` uint8, `depth` float16 metres) via `tfds.data_source`.

    Its "validation" split (default) holds the 654 official test frames, "train" 47,584 video frames. data_dir: the
    TFDS data directory (None: TFDS's default). The dataset must be prepared (ArrayRecord files).
    """

    family = "nyu"
    task = "depth"

    def __init__(self, data_dir=None, split=None):
        import tensorflow_datasets as tfds

        self.split = split or "validation"
        self.source = tfds.data_source("nyu_depth_v2", split=self.split, data_dir=data_dir)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        example = self.source[i]
        depth = np.asarray(example["depth"], np.float32)
        rgb = np.asarray(example["image"], np.uint8)
        return DepthSample(f"nyu_tfds_{self.split}_{i:05d}", rgb, depth, depth > 0)
