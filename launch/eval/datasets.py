"""Benchmark names → readers (`python launch/evaluate.py --dataset NAME`)."""

from launch.eval.da2k import Da2k
from launch.eval.diode import DiodeDepth, DiodeNormals
from launch.eval.eth3d import Eth3d
from launch.eval.kitti import KittiEigen
from launch.eval.motorcycle import Motorcycle
from launch.eval.normals import MarigoldNormals
from launch.eval.nyu import NyuLabelled, NyuTfds
from launch.eval.scannet import Scannet
from launch.eval.sintel import Sintel


def _nyu(data_dir, split, protocol):
    # Marigold scores its depth_*.png, stored beside a separate filled_*.png, i.e. the raw Kinect depth;
    # the MiDaS / Depth Anything line of work uses the labelled, hole-filled `depths`
    return NyuLabelled(data_dir, split, depth_key="rawDepths" if protocol == "marigold" else "depths")


DATASETS = {
    "nyu": _nyu,
    "nyu_tfds": lambda data_dir, split, protocol: NyuTfds(data_dir, split),
    "kitti": lambda data_dir, split, protocol: KittiEigen(data_dir, split),
    "eth3d": lambda data_dir, split, protocol: Eth3d(data_dir, split),
    "scannet": lambda data_dir, split, protocol: Scannet(data_dir, split),
    "diode": lambda data_dir, split, protocol: DiodeDepth(data_dir, split),
    "sintel": lambda data_dir, split, protocol: Sintel(data_dir, split),
    "da2k": lambda data_dir, split, protocol: Da2k(data_dir, split),
    "nyu_normals": lambda data_dir, split, protocol: MarigoldNormals("nyu", data_dir, split),
    "scannet_normals": lambda data_dir, split, protocol: MarigoldNormals("scannet", data_dir, split),
    "ibims_normals": lambda data_dir, split, protocol: MarigoldNormals("ibims", data_dir, split),
    "sintel_normals": lambda data_dir, split, protocol: MarigoldNormals("sintel", data_dir, split),
    "diode_normals": lambda data_dir, split, protocol: DiodeNormals(data_dir, split),
    "motorcycle": lambda data_dir, split, protocol: Motorcycle(),
}
NO_DATA_DIR = ("motorcycle", "nyu_tfds")


def open_dataset(name, data_dir=None, split=None, protocol="dav2"):
    """The reader of benchmark `name` over the files in `data_dir`.

    split: a split list file or a dataset-specific split name (see each reader); protocol: "dav2" or "marigold"
    where the protocol changes what is read (NYUv2: hole-filled vs raw depth).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {sorted(DATASETS)}")
    if data_dir is None and name not in NO_DATA_DIR:
        raise ValueError(f"--data-dir is required for {name!r} (only {NO_DATA_DIR} need none)")
    return DATASETS[name](data_dir, split, protocol)
