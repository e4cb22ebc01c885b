"""Readers of Marigold's normals and intrinsics training sets, on tiny files written in each set's released format,
against the released preprocessing restated here; and the generated scenes as a source of every modality."""

import numpy as np
import pytest
from test_data_formats import _exr, _h5, _img

from launch import tasks
from launch.data import formats
from launch.data.marigold_sources import HypersimLighting, HypersimNormals, InteriorVerse, SintelNormals
from launch.data.sources import BadSample, SyntheticScenes
from marigold_jax import targets

RNG = np.random.default_rng(3)
H, W = 6, 8


def _unit(n):
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _hypersim_frame(root, frame, normal_world, position, camera):
    geo = root / "ai_001_001/images/scene_cam_00_geometry_hdf5"
    normal_cam = RNG.normal(size=(H, W, 3)).astype(np.float16)
    _h5(geo / f"frame.{frame:04d}.normal_cam.hdf5", normal_cam)
    _h5(geo / f"frame.{frame:04d}.normal_world.hdf5", normal_world.astype(np.float16))
    _h5(geo / f"frame.{frame:04d}.position.hdf5", position.astype(np.float16))
    entity = np.ones((H, W), np.int32)
    entity[0, 0] = -1
    _h5(geo / f"frame.{frame:04d}.render_entity_id.hdf5", entity)
    colour = RNG.uniform(0, 3, (H, W, 3)).astype(np.float16)
    _h5(root / f"ai_001_001/images/scene_cam_00_final_hdf5/frame.{frame:04d}.color.hdf5", colour)
    return normal_cam.astype(np.float64), colour, entity != -1


def test_hypersim_normals_are_unit_camera_normals_flipped_where_the_world_normal_faces_away(tmp_path):
    cameras = np.array([[0.0, 0.0, 5.0], [1.0, 2.0, 3.0]])
    _h5(tmp_path / "ai_001_001/_detail/cam_00/camera_keyframe_positions.hdf5", cameras)
    position = RNG.uniform(-2, 2, (H, W, 3))
    position[2, 3, 1] = np.inf  # as in scene ai_051_004: taken from the pixel above
    position[0, 5, 0] = -np.inf  # first row: from the pixel below
    world = _unit(RNG.normal(size=(H, W, 3)))
    normal_cam, colour, valid = _hypersim_frame(tmp_path, 1, world, position, cameras)
    sample = HypersimNormals(tmp_path)[0]
    assert sample["name"] == "ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0001.normal_cam.hdf5"

    stored = position.astype(np.float16).astype(np.float64)  # the released rule, restated
    stored[2, 3, 1], stored[0, 5, 0] = stored[1, 3, 1], stored[1, 5, 0]
    view = _unit(cameras[1] - stored)
    flip = (world.astype(np.float16).astype(np.float64) * view).sum(-1) < -1e-3
    assert 0 < flip.sum() < H * W
    want = _unit(normal_cam) * np.where(flip, -1.0, 1.0)[..., None]
    np.testing.assert_allclose(sample["normals"], want, atol=4 * np.finfo(np.float32).eps)
    np.testing.assert_array_equal(sample["image"], formats.hypersim_tonemap(colour, valid))
    target, target_valid = targets.encode_target(sample, "normals")
    assert target.shape == (H, W, 3) and target_valid.all()


def test_hypersim_normals_with_nan_are_skipped_as_released(tmp_path):
    _h5(tmp_path / "ai_001_001/_detail/cam_00/camera_keyframe_positions.hdf5", np.zeros((1, 3)))
    _hypersim_frame(tmp_path, 0, _unit(RNG.normal(size=(H, W, 3))), np.ones((H, W, 3)), None)
    geo = tmp_path / "ai_001_001/images/scene_cam_00_geometry_hdf5"
    broken = np.ones((H, W, 3), np.float16)
    broken[1, 1, 1] = np.nan
    _h5(geo / "frame.0000.normal_cam.hdf5", broken)
    with pytest.raises(BadSample, match="NaN"):
        HypersimNormals(tmp_path)[0]


def test_hypersim_lighting_reads_albedo_shading_residual_and_tonemapped_colour(tmp_path):
    final = tmp_path / "ai_002_003/images/scene_cam_01_final_hdf5"
    parts = {k: RNG.uniform(0, 2, (H, W, 3)).astype(np.float16) for k in ("albedo", "shading", "residual")}
    for key, stem in (("albedo", "diffuse_reflectance"), ("shading", "diffuse_illumination"),
                      ("residual", "residual")):
        _h5(final / f"frame.0007.{stem}.hdf5", parts[key])
    colour = (parts["albedo"] * parts["shading"] + parts["residual"]).astype(np.float16)
    _h5(final / "frame.0007.color.hdf5", colour)
    source = tasks.build_source("hypersim", {"reader": "hypersim_lighting", "root": str(tmp_path)})
    assert isinstance(source, HypersimLighting) and len(source) == 1
    sample = source[0]
    for key, value in parts.items():
        np.testing.assert_array_equal(sample[key], value.astype(np.float32))
    np.testing.assert_array_equal(sample["image"], formats.hypersim_tonemap(colour, np.ones((H, W), bool)))
    target, _ = targets.encode_target(sample, "iid_lighting")
    assert target.shape == (H, W, 9) and target.min() >= -1 and target.max() <= 1
    parts["residual"][0, 0, 0] = np.inf
    _h5(final / "frame.0007.residual.hdf5", parts["residual"])
    with pytest.raises(BadSample, match="residual has non-finite values"):
        source[0]


def _interiorverse(root, scene="L3D124", stem="000", normals=None):
    folder = root / "scenes_85" / scene
    rgb = lambda a: {c: np.ascontiguousarray(a[..., i]).astype(np.float32) for i, c in enumerate("RGB")}
    data = {"im": RNG.uniform(0, 1.3, (H, W, 3)), "albedo": RNG.uniform(0, 1.2, (H, W, 3)),
            "material": RNG.uniform(0, 1, (H, W, 3)), "mask": np.ones((H, W, 3))}
    data["mask"][2, 2] = 0
    data["normal"] = _unit(RNG.normal(size=(H, W, 3))) * 2 if normals is None else normals
    for kind, value in data.items():
        _exr(folder / f"{stem}_{kind}.exr", rgb(value))
    return {k: v.astype(np.float32) for k, v in data.items()}


def test_interiorverse_reads_gamma_encoded_image_albedo_material_mask_and_normals(tmp_path):
    data = _interiorverse(tmp_path)
    sample = InteriorVerse(tmp_path, targets=("albedo", "material", "normals"))[0]
    gamma = lambda x: np.clip(x, 0, 1) ** (1 / 2.2)  # the released conversions, restated
    np.testing.assert_array_equal(sample["image"], (gamma(data["im"]) * 255).astype(np.uint8))
    np.testing.assert_allclose(sample["albedo"], gamma(data["albedo"]), rtol=1e-6)
    material = gamma(data["material"])
    material[..., 2] = 0
    np.testing.assert_allclose(sample["material"], material, rtol=1e-6)
    np.testing.assert_array_equal(sample["mask"], (data["mask"] != 0).all(-1))
    np.testing.assert_allclose(sample["normals"], _unit(data["normal"]), rtol=1e-6)
    target, valid = targets.encode_target(sample, "iid_appearance")
    assert target.shape == (H, W, 6) and valid.sum() == H * W - 1
    assert set(InteriorVerse(tmp_path, targets=("normals",))[0]) == {"image", "normals", "name"}


def test_interiorverse_frames_with_invalid_normals_are_skipped_and_targets_are_checked(tmp_path):
    normals = _unit(RNG.normal(size=(H, W, 3)))
    normals[1, 1] = 0.05
    _interiorverse(tmp_path, normals=normals)
    with pytest.raises(BadSample, match="shorter than 0.1"):
        InteriorVerse(tmp_path, targets=("normals",))[0]
    with pytest.raises(ValueError, match="targets must be some of"):
        InteriorVerse(tmp_path, targets=("depth",))


def test_sintel_normals_are_centre_cropped_and_invalid_ones_face_the_camera(tmp_path):
    normals = _unit(RNG.normal(size=(4, 1024, 3))).astype(np.float32)
    normals[1, 300] = 0.0  # sky
    (tmp_path / "alley_2").mkdir()
    np.save(tmp_path / "alley_2" / "frame_0001_normal.npy", normals)
    image = _img(tmp_path / "alley_2" / "frame_0001_img.png", 4, 1024)
    sample = SintelNormals(tmp_path)[0]
    assert sample["image"].shape == (4, 582, 3) and sample["normals"].shape == (4, 582, 3)
    np.testing.assert_array_equal(sample["image"], image[:, 221:803])
    want = normals[:, 221:803].copy()
    want[1, 300 - 221] = (0, 0, 1)
    np.testing.assert_array_equal(sample["normals"], want)


@pytest.mark.parametrize("modality", targets.MODALITIES)
def test_generated_scenes_are_a_source_of_every_modality(modality):
    sample = SyntheticScenes(2, 16, 16, seed=5)[1]
    target, valid = targets.encode_target(sample, modality)
    assert target.shape == (16, 16, 3 * len(targets.TARGET_NAMES[modality])) and valid.any()
    assert np.isfinite(target).all() and target.min() >= -1 and target.max() <= 1
    linear = (sample["image"] / 255.0) ** 2.2
    reconstructed = sample["albedo"] * sample["shading"][..., None] + sample["residual"]
    surface = sample["valid"]  # colour = albedo x shading + residual up to the rounding of the 8-bit image
    assert np.abs(reconstructed - linear)[surface].max() <= 2.2 / 255
