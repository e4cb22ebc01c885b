"""Random-access sources, one per training set, in each set's real directory layout.

Every source has `__len__` and `__getitem__(i) -> dict(image=uint8 [H, W, 3] RGB, depth=float32 [H, W] metres
(planar z; 0 where invalid), valid=bool [H, W], name=str)`, the protocol a Grain `MapDataset.source` needs. `name`
is the path of the sample's depth file relative to the root (synthetic: `synthetic/KIND/SEED/INDEX`). A sample that
cannot be read or is unusable raises `BadSample(name, reason)`, so that the pipeline can count and skip it.
File lists are built once, sorted, when the source is constructed.
"""

import io
from pathlib import Path

import numpy as np

from launch.data import formats, pseudo_store, scenes, synthetic
from launch.images import UnreadableImage, read_rgb

IRS_FOCAL_PX = 480.0  # IRS rig, 960 x 540: fx = fy = 480 (HKBU-HPML/IRS dataloader/SIRSLoader.py, disp2pcd.py)
IRS_BASELINE_M = 0.1  # IRS rig baseline, metres (HKBU-HPML/IRS dataloader/scripts/disp2pcd.py)


class BadSample(Exception):
    """A sample that cannot be used: `name` identifies it (a relative path), `reason` says what is wrong."""

    def __init__(self, name, reason):
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def __str__(self):
        return f"bad sample {self.name}: {self.reason}"


def _list(root, pattern, dataset, layout):
    root = Path(root)
    files = sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no {dataset} samples under {root}: expected files like {layout} "
                                f"(pattern {pattern!r}); point the source at the dataset's root directory")
    return files


def _sample(name, image, depth, valid):
    """Check shapes and masks and assemble the sample dict (depth zeroed where invalid)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadSample(name, f"expected an RGB uint8 image [H, W, 3], found {image.dtype} {list(image.shape)}")
    if depth.ndim != 2:
        raise BadSample(name, f"expected a depth map [H, W], found shape {list(depth.shape)}")
    if depth.shape != image.shape[:2]:
        raise BadSample(name, f"image {list(image.shape[:2])} and depth {list(depth.shape)} differ in size")
    if not np.isfinite(depth).any():
        raise BadSample(name, "depth has no finite value (all NaN / inf)")
    valid = valid & np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise BadSample(name, "no valid depth pixel (empty valid mask)")
    return {"image": image, "depth": np.where(valid, depth, 0.0).astype(np.float32), "valid": valid, "name": name}


class _FileSource:
    """Shared plumbing: the sorted file list, bounds checks and turning read errors into BadSample."""

    def __init__(self, root):
        self.root = Path(root)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        name = self.files[i]
        try:
            return self._read(name)
        except (OSError, ValueError, KeyError) as e:
            raise BadSample(name, f"{type(e).__name__}: {e}") from e

    def __repr__(self):
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} samples)"


class Hypersim(_FileSource):
    """Hypersim in its released layout (root = the directory holding the `ai_VVV_NNN` scenes):

        ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.depth_meters.hdf5   distance to camera centre, m
        ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.render_entity_id.hdf5  optional, -1 = no surface
        ai_001_001/images/scene_cam_00_final_preview/frame.0000.tonemap.jpg          colour, used when present
        ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.color.hdf5              HDR colour otherwise

    Depth is converted to planar z (`formats.hypersim_planar_depth`); invalid where the distance is NaN or the
    render entity id is -1. Without a tonemap.jpg, the HDR colour is tone-mapped like the Hypersim authors do.
    """

    def __init__(self, root):
        super().__init__(root)
        self.files = _list(root, "ai_*/images/scene_cam_*_geometry_hdf5/frame.*.depth_meters.hdf5", "Hypersim",
                           "ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.depth_meters.hdf5")

    def _read(self, name):
        path = self.root / name
        frame = path.name[: -len(".depth_meters.hdf5")]
        cam = path.parent.name[: -len("_geometry_hdf5")]
        distance = formats.read_hdf5(path).astype(np.float32)
        if distance.ndim != 2:
            raise BadSample(name, f"expected depth_meters [H, W], found shape {list(distance.shape)}")
        surface = np.isfinite(distance)
        entity_path = path.parent / f"{frame}.render_entity_id.hdf5"
        if entity_path.exists():
            entity = formats.read_hdf5(entity_path)
            if entity.shape != distance.shape:
                raise BadSample(name, f"render_entity_id {list(entity.shape)} and depth {list(distance.shape)} "
                                      "differ in size")
            surface &= entity != -1
        preview = path.parent.parent / f"{cam}_final_preview" / f"{frame}.tonemap.jpg"
        hdr = path.parent.parent / f"{cam}_final_hdf5" / f"{frame}.color.hdf5"
        if preview.exists():
            image = formats.read_image(preview)
        elif hdr.exists():
            colour = formats.read_hdf5(hdr)
            if colour.shape != distance.shape + (3,):
                raise BadSample(name, f"color.hdf5 {list(colour.shape)} does not match depth "
                                      f"{list(distance.shape)} x 3")
            image = formats.hypersim_tonemap(colour, surface)
        else:
            raise BadSample(name, f"no colour image: neither {preview.relative_to(self.root)} nor "
                                  f"{hdr.relative_to(self.root)} exists")
        return _sample(name, image, formats.hypersim_planar_depth(np.where(surface, distance, np.nan)), surface)


class VirtualKitti2(_FileSource):
    """Virtual KITTI 2 with its rgb and depth archives extracted into one root:

        Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg
        Scene01/clone/frames/depth/Camera_0/depth_00000.png   uint16 centimetres; 65535 (655.35 m) = sky

    Depth = png / 100 m; sky (65535) and 0 are invalid.
    """

    def __init__(self, root):
        super().__init__(root)
        self.files = _list(root, "Scene*/*/frames/depth/Camera_*/depth_*.png", "Virtual KITTI 2",
                           "Scene01/clone/frames/depth/Camera_0/depth_00000.png")

    def _read(self, name):
        path = self.root / name
        rgb = path.parent.parent.parent / "rgb" / path.parent.name / ("rgb_" + path.stem[len("depth_"):] + ".jpg")
        cm = formats.read_png16(path)
        valid = (cm != 65535) & (cm > 0)
        return _sample(name, formats.read_image(rgb), cm.astype(np.float32) / 100.0, valid)


class IRS(_FileSource):
    """IRS (root = `IRSDataset`, holding Home, Office, Restaurant, Store):

        Home/ArchVizInterior03Data/l_00001.png   left image (the disparity's view)
        Home/ArchVizInterior03Data/d_00001.exr   left disparity in pixels, float EXR

    Depth = IRS_BASELINE_M * IRS_FOCAL_PX / disparity; disparity 0, negative or non-finite is invalid. A
    single-channel EXR is read as is; a multi-channel one through its G channel, as the IRS authors' tools do.
    """

    def __init__(self, root):
        super().__init__(root)
        self.files = _list(root, "*/*/d_*.exr", "IRS", "Home/ArchVizInterior03Data/d_00001.exr")

    def _read(self, name):
        path = self.root / name
        channels = formats.read_exr(path)
        if len(channels) == 1:
            disparity = next(iter(channels.values()))
        elif "G" in channels:
            disparity = channels["G"]
        else:
            raise BadSample(name, f"expected one disparity channel or a G channel, found {sorted(channels)}")
        depth, valid = formats.stereo_depth(disparity, IRS_FOCAL_PX, IRS_BASELINE_M)
        image = formats.read_image(path.parent / ("l_" + path.stem[2:] + ".png"))
        return _sample(name, image, depth, valid)


class TartanAir(_FileSource):
    """TartanAir (root holding the environments):

        abandonedfactory/Easy/P000/image_left/000000_left.png
        abandonedfactory/Easy/P000/depth_left/000000_left_depth.npy   float metres; sky is a huge value (~1e4)

    cameras: which of "left", "right" to list. Depth >= max_depth (metres) is sky and invalid.
    """

    def __init__(self, root, cameras=("left",), max_depth=1000.0):
        super().__init__(root)
        self.max_depth = max_depth
        self.files = sorted(f for cam in cameras for f in _list(
            root, f"*/*/P*/depth_{cam}/*_{cam}_depth.npy", "TartanAir",
            f"abandonedfactory/Easy/P000/depth_{cam}/000000_{cam}_depth.npy"))

    def _read(self, name):
        path = self.root / name
        cam = path.parent.name[len("depth_"):]
        depth = np.load(path, allow_pickle=False)
        if depth.dtype.kind != "f":
            raise BadSample(name, f"expected float depth, found {depth.dtype}")
        depth = depth.astype(np.float32)
        image = formats.read_image(path.parent.parent / f"image_{cam}" / (path.name[: -len("_depth.npy")] + ".png"))
        return _sample(name, image, depth, depth < self.max_depth)


class BlendedMVS(_FileSource):
    """BlendedMVS (root holding the scene ids):

        5a3ca9cb270f0c3f6fce3c7e/blended_images/00000000.jpg
        5a3ca9cb270f0c3f6fce3c7e/rendered_depth_maps/00000000.pfm   float32 metres, rows bottom-up; 0 = no depth
    """

    def __init__(self, root):
        super().__init__(root)
        self.files = _list(root, "*/rendered_depth_maps/*.pfm", "BlendedMVS",
                           "5a3ca9cb270f0c3f6fce3c7e/rendered_depth_maps/00000000.pfm")

    def _read(self, name):
        path = self.root / name
        depth = formats.read_pfm(path)
        image = formats.read_image(path.parent.parent / "blended_images" / (path.stem + ".jpg"))
        return _sample(name, image, depth, depth > 0)


class SyntheticScenes:
    """The procedural scenes of `launch.data.synthetic`: sample i is `generate(seed, i, height, width, kind)`.

    Items also carry the targets of every Marigold modality: normals float32 [H, W, 3], albedo float32 [H, W, 3]
    (linear) and shading float32 [H, W]; residual float32 [H, W, 3] = linear colour − albedo × shading, clipped at 0
    (the sky, and rounding of the 8-bit image elsewhere); material float32 [H, W, 3] = (1, 0, 0), roughness 1 and
    metallicity 0 of the Lambertian surfaces the scenes are rendered with; mask bool [H, W] = valid (no sky).
    """

    def __init__(self, num_samples, height, width, seed, kind="mixed"):
        if kind not in scenes.KINDS:
            raise ValueError(f"unknown scene kind {kind!r}; expected one of {scenes.KINDS}")
        self.num_samples, self.height, self.width, self.seed, self.kind = num_samples, height, width, seed, kind

    def __len__(self):
        return self.num_samples

    def __getitem__(self, i):
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range for {self.num_samples} synthetic scenes")
        out = synthetic.generate(self.seed, int(i), self.height, self.width, self.kind)
        linear = np.power(out["image"] / np.float32(255.0), np.float32(2.2))
        out["residual"] = np.maximum(linear - out["albedo"] * out["shading"][..., None], 0).astype(np.float32)
        out["material"] = np.broadcast_to(np.float32([1.0, 0.0, 0.0]), out["albedo"].shape).copy()
        out["mask"] = out["valid"].copy()
        out["name"] = f"synthetic/{self.kind}/{self.seed}/{int(i)}"
        return out

    def __repr__(self):
        return (f"SyntheticScenes({self.num_samples}, {self.height}, {self.width}, seed={self.seed}, "
                f"kind={self.kind!r})")


class PseudoLabeled:
    """Pseudo labels written by `launch/pseudo_label.py` (root = its --output folder, see `launch.data.pseudo_store`).

    Items: {"image": uint8 [H, W, 3] RGB decoded from the source's original bytes, "disparity": float32 [H, W]
    (the teacher's relative disparity at the image's resolution), "name": str (the source image's name)}.
    Random access through Grain's ArrayRecord reader; the run must have finished (its manifest.json exists).
    """

    def __init__(self, root):
        import grain

        self.root = Path(root)
        manifest = pseudo_store.read_manifest(root)
        files = [str(self.root / s["file"]) for s in manifest["shards"] if s["records"]]
        if not files:
            raise ValueError(f"{str(self.root)!r} holds no pseudo-labelled image (every input was skipped)")
        self.records = grain.sources.ArrayRecordDataSource(files)
        if len(self.records) != manifest["records"]:
            raise ValueError(f"{str(self.root)!r}: the shards hold {len(self.records)} records but the manifest "
                             f"lists {manifest['records']}; the folder is damaged, label it again")

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if not 0 <= i < len(self.records):
            raise IndexError(f"record {i} out of range for {len(self.records)} pseudo labels")
        record = pseudo_store.decode_record(self.records[i])
        name = record["name"]
        try:
            image = read_rgb(io.BytesIO(record["image"]), name)
        except UnreadableImage as e:
            raise BadSample(name, str(e)) from e
        disparity = np.asarray(record["disparity"], np.float32)
        if disparity.shape != image.shape[:2]:
            raise BadSample(name, f"disparity {list(disparity.shape)} and image {list(image.shape[:2])} differ")
        return {"image": image, "disparity": disparity, "name": name}

    def __repr__(self):
        return f"PseudoLabeled({str(self.root)!r}, {len(self)} samples)"
