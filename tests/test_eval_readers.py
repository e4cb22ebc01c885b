"""Each benchmark reader on tiny files written here in exactly the dataset's on-disk format."""

import os

import cv2
import h5py
import numpy as np
import pytest
from PIL import Image

from launch.eval import datasets, nyu, protocols
from launch.eval.motorcycle import BASELINE_M, DOFFS_PX, FOCAL_PX

RNG = np.random.default_rng(0)


def _rgb(h, w):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_png_rgb(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rgb).save(path)


def _write_png16(path, values):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), values.astype(np.uint16))


def test_nyu_official_test_split_indices():
    idx = nyu.TEST_INDICES
    assert len(idx) == 654 == len(set(idx)) and list(idx) == sorted(idx)
    assert idx[:10] == (1, 2, 9, 14, 15, 16, 17, 18, 21, 28) and idx[-1] == 1449


def _write_nyu_mat(path, h, w):
    """A MATLAB v7.3 file: HDF5 with a 512-byte user block, arrays stored transposed (column-major)."""
    n = nyu.NUM_LABELLED
    images = RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depths = RNG.uniform(0.5, 9.0, (n, h, w)).astype(np.float32)
    raw = np.where(RNG.uniform(size=depths.shape) > 0.2, depths, 0.0).astype(np.float32)
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_dataset("images", data=images.transpose(0, 3, 2, 1)).attrs["MATLAB_class"] = np.bytes_("uint8")
        f.create_dataset("depths", data=depths.transpose(0, 2, 1)).attrs["MATLAB_class"] = np.bytes_("single")
        f.create_dataset("rawDepths", data=raw.transpose(0, 2, 1)).attrs["MATLAB_class"] = np.bytes_("single")
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")
    return images, depths, raw


def test_nyu_labelled_mat_reads_test_frames_untransposed(tmp_path):
    path = tmp_path / nyu.LABELLED_FILE
    images, depths, raw = _write_nyu_mat(path, 3, 5)
    reader = datasets.open_dataset("nyu", str(tmp_path), protocol="dav2")
    assert len(reader) == 654
    sample = reader[2]  # the third test frame is labelled index 9
    assert sample.name == "nyu_0009"
    np.testing.assert_array_equal(sample.rgb, images[8])
    np.testing.assert_array_equal(sample.depth, depths[8])
    assert sample.rgb.shape == (3, 5, 3) and sample.mask.all()
    marigold = datasets.open_dataset("nyu", str(path), protocol="marigold")[2]
    np.testing.assert_array_equal(marigold.depth, raw[8])
    np.testing.assert_array_equal(marigold.mask, raw[8] > 0)
    train = nyu.NyuLabelled(str(tmp_path), "train")
    assert len(train) == 795 and train[0].name == "nyu_0003"


def test_nyu_labelled_missing_file_names_the_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=nyu.LABELLED_FILE):
        datasets.open_dataset("nyu", str(tmp_path))


def test_nyu_tfds_reader_through_data_source(tmp_path):
    import tensorflow_datasets as tfds

    examples = [{"image": _rgb(480, 640), "depth": RNG.uniform(0, 10, (480, 640)).astype(np.float16)}
                for _ in range(2)]
    examples[1]["depth"][0, :7] = 0

    def data_source(builder, split, **kwargs):
        assert split == "validation"
        return examples

    with tfds.testing.mock_data(as_data_source_fn=data_source):
        reader = datasets.open_dataset("nyu_tfds", str(tmp_path))
        assert len(reader) == 2
        sample = reader[1]
    np.testing.assert_array_equal(sample.rgb, examples[1]["image"])
    assert sample.depth.dtype == np.float32
    np.testing.assert_array_equal(sample.depth, examples[1]["depth"].astype(np.float32))
    assert sample.mask.sum() == 480 * 640 - 7 and sample.name == "nyu_tfds_validation_00001"


def test_kitti_eigen_reads_png256_applies_kb_crop_and_skips_missing_gt(tmp_path):
    rgb_rel = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    depth_rel = "2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png"
    rgb = _rgb(375, 1242)
    raw = RNG.integers(0, 80 * 256, (375, 1242)).astype(np.uint16)
    raw[RNG.uniform(size=raw.shape) > 0.1] = 0  # sparse LiDAR
    _write_png_rgb(str(tmp_path / rgb_rel), rgb)
    _write_png16(tmp_path / depth_rel, raw)
    (tmp_path / "eigen_test_files_with_gt.txt").write_text(
        f"{rgb_rel} {depth_rel} 721.5377\n2011_09_26/x/image_02/data/0000000001.png None 721.5377\n"
    )
    reader = datasets.open_dataset("kitti", str(tmp_path))
    assert len(reader) == 1
    sample = reader[0]
    assert sample.name == os.path.splitext(rgb_rel)[0]
    np.testing.assert_array_equal(sample.rgb, protocols.kb_crop(rgb))
    np.testing.assert_array_equal(sample.depth, protocols.kb_crop(raw).astype(np.float32) / 256.0)
    np.testing.assert_array_equal(sample.mask, protocols.kb_crop(raw) > 0)


def test_kitti_without_split_list_says_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="eigen_test_files_with_gt.txt"):
        datasets.open_dataset("kitti", str(tmp_path))


def test_eth3d_raw_float32_depth_named_jpg_from_list_and_discovery(tmp_path):
    rgb = np.stack([*np.meshgrid(np.arange(8) * 30, np.arange(6) * 40), np.full((6, 8), 128)], -1).astype(np.uint8)
    depth = RNG.uniform(0.5, 30.0, (6, 8)).astype("<f4")
    depth[0, 0] = np.inf
    rgb_rel = "courtyard/images/dslr_images/DSC_0001.JPG"
    depth_rel = "courtyard/ground_truth_depth/dslr_images/DSC_0001.JPG"
    os.makedirs(tmp_path / os.path.dirname(rgb_rel))
    Image.fromarray(rgb).save(tmp_path / rgb_rel, format="JPEG", quality=100, subsampling=0)
    os.makedirs(tmp_path / os.path.dirname(depth_rel))
    depth.tofile(tmp_path / depth_rel)
    found = datasets.open_dataset("eth3d", str(tmp_path))
    assert len(found) == 1
    sample = found[0]
    assert sample.depth.shape == (6, 8) and sample.depth[0, 0] == 0 and not sample.mask[0, 0]
    np.testing.assert_array_equal(sample.depth[sample.mask], depth[np.isfinite(depth)])
    assert np.abs(sample.rgb.astype(int) - rgb).max() <= 3  # lossy JPEG of a smooth image
    (tmp_path / "eth3d_filename_list.txt").write_text(f"{rgb_rel} {depth_rel}\n")
    listed = datasets.open_dataset("eth3d", str(tmp_path))
    np.testing.assert_array_equal(listed[0].depth, sample.depth)
    depth[:3].tofile(tmp_path / depth_rel)
    with pytest.raises(ValueError, match="expected 6x8"):
        listed[0]


def test_scannet_mm_png_with_larger_colour_frame(tmp_path):
    (tmp_path / "scene0001_00" / "color").mkdir(parents=True)
    Image.fromarray(_rgb(12, 16)).save(tmp_path / "scene0001_00" / "color" / "000100.jpg")
    mm = RNG.integers(0, 9000, (6, 8)).astype(np.uint16)
    mm[0] = 0
    _write_png16(tmp_path / "scene0001_00" / "depth" / "000100.png", mm)
    (tmp_path / "scannet_val_sampled_list_800_1.txt").write_text(
        "scene0001_00/color/000100.jpg scene0001_00/depth/000100.png\n"
    )
    sample = datasets.open_dataset("scannet", str(tmp_path))[0]
    assert sample.rgb.shape == (6, 8, 3) and sample.name == "scene0001_00/color/000100"
    np.testing.assert_allclose(sample.depth, mm / 1000.0, rtol=1e-7)
    np.testing.assert_array_equal(sample.mask, mm > 0)


def _write_diode_frame(root, rel_stem, h=4, w=6):
    os.makedirs(os.path.dirname(os.path.join(root, rel_stem)), exist_ok=True)
    rgb = _rgb(h, w)
    Image.fromarray(rgb).save(os.path.join(root, rel_stem + ".png"))
    depth = RNG.uniform(0.6, 50, (h, w, 1)).astype(np.float32)
    mask = (RNG.uniform(size=(h, w)) > 0.3).astype(np.float32)
    normals = RNG.normal(size=(h, w, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    normals[0, 0] = 0.0
    np.save(os.path.join(root, rel_stem + "_depth.npy"), depth)
    np.save(os.path.join(root, rel_stem + "_depth_mask.npy"), mask)
    np.save(os.path.join(root, rel_stem + "_normal.npy"), normals)
    return rgb, depth, mask, normals


def test_diode_depth_mask_and_normals_npy(tmp_path):
    indoor = _write_diode_frame(str(tmp_path), "indoors/scene_00019/scan_00183/00019_00183_indoors_000_010")
    _write_diode_frame(str(tmp_path), "outdoor/scene_00022/scan_00193/00022_00193_outdoor_000_000")
    reader = datasets.open_dataset("diode", str(tmp_path))
    assert len(reader) == 2
    sample = reader[0]
    assert sample.name == "indoors/scene_00019/scan_00183/00019_00183_indoors_000_010"
    np.testing.assert_array_equal(sample.rgb, indoor[0])
    np.testing.assert_array_equal(sample.depth, indoor[1][..., 0])
    np.testing.assert_array_equal(sample.mask, indoor[2] > 0)
    assert len(datasets.open_dataset("diode", str(tmp_path), split="outdoor")) == 1
    normals = datasets.open_dataset("diode_normals", str(tmp_path), split="indoors")[0]
    np.testing.assert_array_equal(normals.normals, indoor[3])
    assert not normals.mask[0, 0] and normals.mask.sum() == 4 * 6 - 1


def _write_dpt(path, depth):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    h, w = depth.shape
    with open(path, "wb") as f:
        np.array([202021.25], "<f4").tofile(f)
        np.array([w, h], "<i4").tofile(f)
        depth.astype("<f4").tofile(f)


def test_sintel_dpt_with_clean_and_final_passes(tmp_path):
    depth = RNG.uniform(0.1, 500.0, (5, 7)).astype(np.float32)
    _write_dpt(str(tmp_path / "training" / "depth" / "alley_1" / "frame_0001.dpt"), depth)
    final, clean = _rgb(5, 7), _rgb(5, 7)
    _write_png_rgb(str(tmp_path / "training" / "final" / "alley_1" / "frame_0001.png"), final)
    _write_png_rgb(str(tmp_path / "training" / "clean" / "alley_1" / "frame_0001.png"), clean)
    sample = datasets.open_dataset("sintel", str(tmp_path))[0]
    assert sample.name == "alley_1/frame_0001" and sample.mask.all()
    np.testing.assert_array_equal(sample.depth, depth)
    np.testing.assert_array_equal(sample.rgb, final)
    np.testing.assert_array_equal(datasets.open_dataset("sintel", str(tmp_path / "training"), "clean")[0].rgb, clean)


def test_sintel_rejects_a_file_without_the_dpt_tag(tmp_path):
    from launch.eval.sintel import read_dpt

    path = tmp_path / "bad.dpt"
    np.zeros(8, "<f4").tofile(path)
    with pytest.raises(ValueError, match="202021.25"):
        read_dpt(str(path))


def test_marigold_layout_normals_from_list(tmp_path):
    normals = RNG.normal(size=(3, 4, 3)).astype(np.float32)
    normals[1, 2] = 0.0
    _write_png_rgb(str(tmp_path / "000008_img.png"), _rgb(3, 4))
    np.save(tmp_path / "000008_normal.npy", normals)
    (tmp_path / "nyuv2_test.txt").write_text("000008_img.png 000008_normal.npy\n")
    for name in ("nyu_normals", "scannet_normals", "ibims_normals"):
        sample = datasets.open_dataset(name, str(tmp_path))[0]
        np.testing.assert_array_equal(sample.normals, normals)
        assert sample.mask.sum() == 11 and not sample.mask[1, 2]


def test_sintel_normals_are_cropped_and_sky_faces_the_camera(tmp_path):
    normals = RNG.normal(size=(2, 450, 3)).astype(np.float32)
    normals[0, 225] = 0.0  # sky
    rgb = _rgb(2, 450)
    _write_png_rgb(str(tmp_path / "alley_2" / "frame_0001_img.png"), rgb)
    np.save(tmp_path / "alley_2" / "frame_0001_normal.npy", normals)
    sample = datasets.open_dataset("sintel_normals", str(tmp_path))[0]
    assert sample.rgb.shape == (2, 8, 3) and sample.normals.shape == (2, 8, 3)
    np.testing.assert_array_equal(sample.rgb, rgb[:, 221:229])
    np.testing.assert_array_equal(sample.normals[0, 4], [0.0, 0.0, 1.0])
    assert sample.mask.all()


def test_motorcycle_depth_from_middlebury_disparity():
    from skimage import data

    _, _, disparity = data.stereo_motorcycle()
    sample = datasets.open_dataset("motorcycle")[0]
    assert sample.rgb.shape == (500, 741, 3) and sample.rgb.dtype == np.uint8
    known = np.isfinite(disparity)
    np.testing.assert_array_equal(sample.mask, known)
    np.testing.assert_allclose(sample.depth[known], BASELINE_M * FOCAL_PX / (disparity[known] + DOFFS_PX), rtol=1e-6)
    # disparity 7.19 … 59.91 px → 0.193 m · 994.978 px / (d + 31.086 px) = 5.02 … 2.11 m
    assert sample.depth[known].min() == pytest.approx(2.11, abs=0.01)
    assert sample.depth[known].max() == pytest.approx(5.02, abs=0.01)


def test_unknown_dataset_and_missing_data_dir_are_explained():
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.open_dataset("middlebury")
    with pytest.raises(ValueError, match="--data-dir is required"):
        datasets.open_dataset("kitti")
