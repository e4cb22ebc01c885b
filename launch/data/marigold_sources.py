"""The training sets of Marigold's normals and intrinsics models beyond depth, in their released formats.

Each source has `__len__` and `__getitem__(i) -> dict(image=uint8 [H, W, 3] RGB, name=str, ...)` with the targets the
`marigold` task encodes (see `marigold_jax.targets.encode_target`):
- `HypersimNormals`: normals float32 [H, W, 3] (camera space: x right, y up, z towards the viewer, unit length);
- `HypersimLighting`: albedo float32 [H, W, 3] (linear diffuse reflectance), shading float32 [H, W, 3] (linear
  diffuse illumination), residual float32 [H, W, 3] (linear non-diffuse remainder), colour = albedo * shading +
  residual;
- `InteriorVerse`: albedo, material float32 [H, W, 3] (gamma-encoded; material R roughness, G metallicity, B 0),
  mask bool [H, W], and/or normals, as `targets` asks;
- `SintelNormals`: normals float32 [H, W, 3], centre-cropped as released.
Unreadable or unusable samples raise `BadSample` (see `launch.data.sources`).
"""

import numpy as np

from launch.data import formats
from launch.data.sources import BadSample, _FileSource, _list

_GAMMA = 1.0 / 2.2
SINTEL_CROP = 221  # columns cut on each side: 1024 -> 582 (the released centre crop)


def _unit(normals, name):
    """Normals [H, W, 3] → unit length (float32; zero vectors stay zero, as sklearn's `normalize` leaves them)."""
    if not np.isfinite(normals).all():
        raise BadSample(name, "normals contain NaN or infinite values")
    norm = np.linalg.norm(normals, axis=-1, keepdims=True)
    return (normals / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def _rgb_exr(path):
    """An EXR file → float32 [H, W, 3] from its R, G, B channels (a one-channel file is repeated)."""
    channels = formats.read_exr(path)
    if all(c in channels for c in "RGB"):
        return np.stack([channels[c] for c in "RGB"], axis=-1)
    if len(channels) == 1:
        return np.repeat(next(iter(channels.values()))[..., None], 3, axis=-1)
    raise ValueError(f"{path}: expected R, G, B channels or a single channel, found {sorted(channels)}")


def _gamma(x):
    """Linear [0, 1] (clipped) → gamma 1/2.2, as the released InteriorVerse code encodes images and targets."""
    return np.power(np.clip(x, 0.0, 1.0), _GAMMA).astype(np.float32)


class _Hypersim(_FileSource):
    """Hypersim's released layout (root = the directory holding the `ai_VVV_NNN` scenes); colour from the frame's
    `color.hdf5`, tone-mapped as the Hypersim authors do (`formats.hypersim_tonemap`, entity −1 excluded)."""

    def _colour(self, scene, cam, frame, shape, name):
        final = self.root / scene / "images" / f"scene_{cam}_final_hdf5"
        entity_path = self.root / scene / "images" / f"scene_{cam}_geometry_hdf5" / f"{frame}.render_entity_id.hdf5"
        colour = formats.read_hdf5(final / f"{frame}.color.hdf5")
        if colour.shape != shape:
            raise BadSample(name, f"color.hdf5 {list(colour.shape)} does not match {list(shape)}")
        valid = formats.read_hdf5(entity_path) != -1 if entity_path.exists() else np.ones(shape[:2], bool)
        return formats.hypersim_tonemap(colour, valid)

    @staticmethod
    def _parts(path):
        """(scene, camera, frame) of `.../ai_001_001/images/scene_cam_00_X_hdf5/frame.0000.KIND.hdf5`."""
        scene = path.parent.parent.parent.name
        cam = path.parent.name.split("_")[1] + "_" + path.parent.name.split("_")[2]
        return scene, cam, ".".join(path.name.split(".")[:2])


class HypersimNormals(_Hypersim):
    """Hypersim surface normals as Marigold's released preprocessing makes them:

        ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.normal_cam.hdf5     camera-space normals [H, W, 3]
        ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.normal_world.hdf5   world-space normals
        ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.position.hdf5       world positions [H, W, 3]
        ai_001_001/_detail/cam_00/camera_keyframe_positions.hdf5                    camera position per frame [N, 3]
        ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.color.hdf5             HDR colour

    `normal_cam` is normalised; where the world normal faces away from the camera (n · v < −1e-3, v the unit vector
    from the surface point to the camera) the normal is flipped. Infinite positions (scene ai_051_004) take the value
    of the pixel above (below, in the first row), in reading order, as released. Frames with NaN normals are skipped.
    """

    def __init__(self, root):
        super().__init__(root)
        self.files = _list(root, "ai_*/images/scene_cam_*_geometry_hdf5/frame.*.normal_cam.hdf5", "Hypersim normals",
                           "ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.normal_cam.hdf5")

    def _read(self, name):
        path = self.root / name
        scene, cam, frame = self._parts(path)
        normal_cam = formats.read_hdf5(path).astype(np.float64)
        if normal_cam.ndim != 3 or normal_cam.shape[2] != 3:
            raise BadSample(name, f"expected normal_cam [H, W, 3], found {list(normal_cam.shape)}")
        if np.isnan(normal_cam).any():
            raise BadSample(name, "normal_cam contains NaN (the released preprocessing skips such frames)")
        normal_world = formats.read_hdf5(path.parent / f"{frame}.normal_world.hdf5").astype(np.float64)
        position = formats.read_hdf5(path.parent / f"{frame}.position.hdf5").astype(np.float64)
        keyframes = formats.read_hdf5(self.root / scene / "_detail" / cam / "camera_keyframe_positions.hdf5")
        index = int(frame.split(".")[1])
        if index >= len(keyframes):
            raise BadSample(name, f"camera_keyframe_positions has {len(keyframes)} frames, not frame {index}")
        for h, w, c in zip(*np.nonzero(np.isinf(position))):
            position[h, w, c] = position[h + 1 if h == 0 else h - 1, w, c]
        to_camera = np.asarray(keyframes[index], np.float64) - position
        to_camera /= np.maximum(np.linalg.norm(to_camera, axis=-1, keepdims=True), 1e-12)
        back_facing = (normal_world * to_camera).sum(-1) < -1e-3
        normals = _unit(normal_cam, name)
        normals[back_facing] *= -1
        return {"image": self._colour(scene, cam, frame, normal_cam.shape, name), "normals": normals, "name": name}


class HypersimLighting(_Hypersim):
    """Hypersim's lighting decomposition (Marigold IID lighting), linear HDR with colour = albedo * shading + residual:

        ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.diffuse_reflectance.hdf5    albedo
        ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.diffuse_illumination.hdf5   shading
        ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.residual.hdf5               residual
        ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.color.hdf5                  HDR colour

    Frames with non-finite values are skipped. The task clips albedo to [0, 1] and scales shading and residual by
    their shared 98 % quantile.
    """

    def __init__(self, root):
        super().__init__(root)
        self.files = _list(root, "ai_*/images/scene_cam_*_final_hdf5/frame.*.diffuse_reflectance.hdf5",
                           "Hypersim lighting", "ai_001_001/images/scene_cam_00_final_hdf5/frame.0000."
                           "diffuse_reflectance.hdf5")

    def _read(self, name):
        path = self.root / name
        scene, cam, frame = self._parts(path)
        parts = {"albedo": formats.read_hdf5(path)}
        for key, stem in (("shading", "diffuse_illumination"), ("residual", "residual")):
            parts[key] = formats.read_hdf5(path.parent / f"{frame}.{stem}.hdf5")
        for key, value in parts.items():
            if value.ndim != 3 or value.shape[2] != 3 or value.shape != parts["albedo"].shape:
                raise BadSample(name, f"expected {key} [H, W, 3] like the albedo {list(parts['albedo'].shape)}, "
                                      f"found {list(value.shape)}")
            if not np.isfinite(value).all():
                raise BadSample(name, f"{key} has non-finite values")
        image = self._colour(scene, cam, frame, parts["albedo"].shape, name)
        return {"image": image, "name": name, **{k: v.astype(np.float32) for k, v in parts.items()}}


class InteriorVerse(_FileSource):
    """InteriorVerse (root holding `scenes_85`):

        scenes_85/SCENE/000_im.exr         HDR colour
        scenes_85/SCENE/000_albedo.exr     albedo          (targets "albedo")
        scenes_85/SCENE/000_material.exr   R roughness, G metallicity   ("material")
        scenes_85/SCENE/000_mask.exr       valid where all channels are non-zero   (read with "albedo"/"material")
        scenes_85/SCENE/000_normal.exr     normals, 0 where invalid     ("normals")

    As released: colour clipped to [0, 1], gamma 1/2.2 and quantised to uint8 by truncation (the normals
    preprocessing; the IID loader keeps it in float: a difference of less than 1/255); albedo and material clipped
    and gamma-encoded, material's B channel set to 0; normals normalised, frames with a normal shorter than 0.1
    skipped; frames with NaN colour skipped. targets: which of "albedo", "material", "normals" to read.
    """

    TARGETS = ("albedo", "material", "normals")

    def __init__(self, root, targets=("albedo", "material")):
        super().__init__(root)
        unknown = sorted(set(targets) - set(self.TARGETS))
        if unknown or not targets:
            raise ValueError(f"InteriorVerse targets must be some of {self.TARGETS}, got {list(targets)}")
        self.targets = tuple(targets)
        self.files = _list(root, "scenes_85/*/*_im.exr", "InteriorVerse", "scenes_85/SCENE/000_im.exr")

    def _read(self, name):
        path = self.root / name
        stem = path.name[: -len("_im.exr")]
        sibling = lambda kind: path.parent / f"{stem}_{kind}.exr"
        colour = _rgb_exr(path)
        if np.isnan(colour).any():
            raise BadSample(name, "the colour image contains NaN")
        out = {"image": (_gamma(colour) * 255).astype(np.uint8), "name": name}
        if "albedo" in self.targets:
            out["albedo"] = _gamma(_rgb_exr(sibling("albedo")))
        if "material" in self.targets:
            material = _gamma(_rgb_exr(sibling("material")))
            material[..., 2] = 0.0
            out["material"] = material
        if ("albedo" in self.targets or "material" in self.targets) and sibling("mask").exists():
            out["mask"] = (_rgb_exr(sibling("mask")) != 0).all(axis=-1)
        if "normals" in self.targets:
            normals = _rgb_exr(sibling("normal"))
            if (np.linalg.norm(normals, axis=-1) < 0.1).any():
                raise BadSample(name, "normals shorter than 0.1 (invalid pixels; the released list skips the frame)")
            out["normals"] = _unit(normals, name)
        for key, value in out.items():
            if key != "name" and value.shape[:2] != colour.shape[:2]:
                raise BadSample(name, f"{key} {list(value.shape)} and the image {list(colour.shape)} differ in size")
        return out


class SintelNormals(_FileSource):
    """Sintel normals as the Marigold team distributes them (root holding the scene folders):

        alley_2/frame_0001_img.png      colour, 436 x 1024
        alley_2/frame_0001_normal.npy   normals float [H, W, 3]

    As released: invalid normals (length <= 0.1, e.g. sky) become (0, 0, 1), facing the camera; image and normals are
    centre-cropped to 436 x 582 (221 columns off each side). Normals are not renormalised (the released loader
    does not).
    """

    def __init__(self, root):
        super().__init__(root)
        self.files = _list(root, "*/frame_*_normal.npy", "Sintel normals", "alley_2/frame_0001_normal.npy")

    def _read(self, name):
        path = self.root / name
        normals = np.load(path, allow_pickle=False).astype(np.float32)
        image = formats.read_image(path.parent / (path.name[: -len("_normal.npy")] + "_img.png"))
        if normals.ndim != 3 or normals.shape != image.shape:
            raise BadSample(name, f"expected normals [H, W, 3] like the image {list(image.shape)}, found "
                                  f"{list(normals.shape)}")
        if normals.shape[1] <= 2 * SINTEL_CROP:
            raise BadSample(name, f"expected Sintel frames 1024 wide, found {normals.shape[1]}")
        normals[np.linalg.norm(normals, axis=-1) <= 0.1] = (0.0, 0.0, 1.0)
        crop = slice(SINTEL_CROP, normals.shape[1] - SINTEL_CROP)
        return {"image": np.ascontiguousarray(image[:, crop]), "normals": np.ascontiguousarray(normals[:, crop]),
                "name": name}
