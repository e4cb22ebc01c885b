"""Readers of the teacher's training sets, on tiny files written here in each set's real format and layout."""

import pickle

import cv2
import h5py
import numpy as np
import OpenEXR
import pytest
from PIL import Image

from launch.data import formats
from launch.data.sources import IRS, BadSample, BlendedMVS, Hypersim, TartanAir, VirtualKitti2

RNG = np.random.default_rng(0)


def _pfm_bytes(a, little=True):
    """PFM exactly as the format defines it: header, then float32 rows from the bottom row up."""
    kind = b"PF" if a.ndim == 3 else b"Pf"
    head = kind + b"\n%d %d\n%s\n" % (a.shape[1], a.shape[0], b"-1.0" if little else b"1.0")
    return head + np.ascontiguousarray(a[::-1]).astype("<f4" if little else ">f4").tobytes()


def _h5(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=array, compression="gzip")


def _exr(path, channels):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    OpenEXR.File(header, channels).write(str(path))


def _img(path, h, w):
    """A random RGB image saved at path (the extension picks PNG or JPEG) -> its decoded pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
    return np.asarray(Image.open(path).convert("RGB"))  # what any decoder gives back (JPEG is lossy)


# ---------------------------------------------------------------- decoders


def test_read_pfm_flips_bottom_up_rows_and_honours_endianness(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3) * 1.5 - 2
    for little in (True, False):
        p = tmp_path / f"g{little}.pfm"
        p.write_bytes(_pfm_bytes(a, little))
        out = formats.read_pfm(p)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, a)
    rgb = RNG.random((4, 5, 3), dtype=np.float32)
    (tmp_path / "c.pfm").write_bytes(_pfm_bytes(rgb))
    np.testing.assert_array_equal(formats.read_pfm(tmp_path / "c.pfm"), rgb)


def test_write_pfm_writes_the_standard_bytes(tmp_path):
    a = RNG.random((3, 4), dtype=np.float32)
    formats.write_pfm(tmp_path / "a.pfm", a)
    assert (tmp_path / "a.pfm").read_bytes() == _pfm_bytes(a)
    np.testing.assert_array_equal(formats.read_pfm(tmp_path / "a.pfm"), a)


def test_read_pfm_rejects_garbage_and_truncated_files(tmp_path):
    (tmp_path / "g.pfm").write_bytes(b"P6\n3 2\n255\n" + bytes(18))
    with pytest.raises(ValueError, match="not a PFM"):
        formats.read_pfm(tmp_path / "g.pfm")
    (tmp_path / "t.pfm").write_bytes(_pfm_bytes(np.ones((4, 4), np.float32))[:-5])
    with pytest.raises(ValueError, match="truncated"):
        formats.read_pfm(tmp_path / "t.pfm")


def test_read_png16_returns_the_stored_integers(tmp_path):
    a = np.array([[0, 1, 255, 256], [1234, 40000, 65534, 65535]], dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), a)
    out = formats.read_png16(tmp_path / "d.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, a)
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "8bit.png")
    with pytest.raises(ValueError, match="16-bit grayscale PNG"):
        formats.read_png16(tmp_path / "8bit.png")


def test_read_exr_returns_float32_channels(tmp_path):
    disp = RNG.random((3, 5)).astype(np.float16)
    _exr(tmp_path / "g.exr", {"G": disp})
    rgb = RNG.random((3, 5, 3), dtype=np.float32)
    _exr(tmp_path / "rgb.exr", {"RGB": rgb})
    g = formats.read_exr(tmp_path / "g.exr")
    assert list(g) == ["G"] and g["G"].dtype == np.float32
    np.testing.assert_array_equal(g["G"], disp.astype(np.float32))
    c = formats.read_exr(tmp_path / "rgb.exr")
    for i, k in enumerate("RGB"):
        np.testing.assert_array_equal(c[k], rgb[..., i])
    (tmp_path / "bad.exr").write_bytes(b"not an exr" * 5)
    with pytest.raises(ValueError, match="OpenEXR"):
        formats.read_exr(tmp_path / "bad.exr")


def test_hypersim_planar_depth_of_a_fronto_parallel_wall_is_constant():
    h, w, z = 48, 64, 3.25
    f = 886.81 * w / 1024
    u, v = np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2
    distance = z * np.sqrt(f**2 + u[None] ** 2 + v[:, None] ** 2) / f
    np.testing.assert_allclose(formats.hypersim_planar_depth(distance), z, rtol=1e-6)


def test_hypersim_planar_depth_equals_the_upstream_conversion_at_full_size():
    distance = RNG.uniform(0.5, 20, (768, 1024)).astype(np.float16)
    x = np.linspace(-511.5, 511.5, 1024).reshape(1, 1024).repeat(768, 0)  # upstream: linspace(-W/2 + .5, W/2 - .5)
    y = np.linspace(-383.5, 383.5, 768).reshape(768, 1).repeat(1024, 1)
    upstream = distance / np.linalg.norm(np.stack([x, y, np.full_like(x, 886.81)], 2), 2, 2) * 886.81
    np.testing.assert_allclose(formats.hypersim_planar_depth(distance), upstream, rtol=1e-6)


def test_hypersim_tonemap_puts_the_90th_percentile_brightness_at_0_8():
    grey = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 2.0, 3.0, 50.0])
    valid = np.ones(12, bool)
    valid[-1] = False  # an invalid (sky / no-entity) pixel must not move the percentile
    rgb = np.repeat(grey[None, :, None], 3, axis=2)  # R = G = B, so brightness = grey (weights sum to 1)
    out = formats.hypersim_tonemap(rgb, valid[None])
    # 11 valid values: np.percentile(.., 90) sits exactly on the 10th smallest, 2.0; so out = 0.8 (g / 2)^(1/2.2)
    expected = 255 * np.minimum(0.8 * (grey / 2.0) ** (1 / 2.2), 1.0)
    assert out.dtype == np.uint8
    assert np.all(out[0, :, 0] <= expected + 1e-9) and np.all(out[0, :, 0] > expected - 1)
    np.testing.assert_array_equal(out[0, :, 0], out[0, :, 2])
    assert out[0, -1, 0] == 255
    np.testing.assert_array_equal(formats.hypersim_tonemap(np.full((2, 2, 3), 1e-6), np.ones((2, 2), bool)), 0)


# ---------------------------------------------------------------- sources in the real layouts


def test_hypersim_source_reads_depth_meters_and_colour(tmp_path):
    h, w = 12, 16
    geo = tmp_path / "ai_001_001/images/scene_cam_00_geometry_hdf5"
    dist = [RNG.uniform(1, 9, (h, w)).astype(np.float16) for _ in range(2)]
    dist[0][0, :3] = np.nan
    entity = np.ones((h, w), np.int32)
    entity[5, 5:9] = -1
    for i in range(2):
        _h5(geo / f"frame.000{i}.depth_meters.hdf5", dist[i])
        _h5(geo / f"frame.000{i}.render_entity_id.hdf5", entity)
    colour = RNG.uniform(0, 4, (h, w, 3)).astype(np.float16)
    _h5(tmp_path / "ai_001_001/images/scene_cam_00_final_hdf5/frame.0000.color.hdf5", colour)
    jpg = _img(tmp_path / "ai_001_001/images/scene_cam_00_final_preview/frame.0001.tonemap.jpg", h, w)
    src = Hypersim(tmp_path)
    assert len(src) == 2
    s0, s1 = src[0], src[1]
    assert s0["name"] == "ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.depth_meters.hdf5"
    valid = np.isfinite(dist[0].astype(np.float32)) & (entity != -1)
    np.testing.assert_array_equal(s0["valid"], valid)
    planar = formats.hypersim_planar_depth(dist[0].astype(np.float32))
    np.testing.assert_array_equal(s0["depth"][valid], planar[valid])
    assert np.all(s0["depth"][~valid] == 0) and s0["depth"].dtype == np.float32
    np.testing.assert_array_equal(s0["image"], formats.hypersim_tonemap(colour, valid))
    np.testing.assert_array_equal(s1["image"], jpg)  # the tonemap.jpg wins when it exists


def test_virtual_kitti2_source_reads_centimetres_and_masks_sky(tmp_path):
    depth_dir = tmp_path / "Scene01/clone/frames/depth/Camera_0"
    depth_dir.mkdir(parents=True)
    cm = RNG.integers(100, 8000, (10, 14)).astype(np.uint16)
    cm[:3] = 65535  # sky
    cv2.imwrite(str(depth_dir / "depth_00007.png"), cm)
    rgb = _img(tmp_path / "Scene01/clone/frames/rgb/Camera_0/rgb_00007.jpg", 10, 14)
    s = VirtualKitti2(tmp_path)[0]
    assert s["name"] == "Scene01/clone/frames/depth/Camera_0/depth_00007.png"
    np.testing.assert_array_equal(s["valid"], cm != 65535)
    np.testing.assert_array_equal(s["depth"][3:], cm[3:].astype(np.float32) / 100)
    assert np.all(s["depth"][:3] == 0)
    np.testing.assert_array_equal(s["image"], rgb)


def test_irs_source_converts_exr_disparity_with_the_rig_constants(tmp_path):
    scene = tmp_path / "Home/ArchVizInterior03Data"
    disp = RNG.uniform(2, 90, (9, 16)).astype(np.float32)
    disp[0, 0], disp[0, 1], disp[0, 2] = 0.0, np.inf, -3.0
    _exr(scene / "d_00001.exr", {"G": disp})
    _exr(scene / "d_00008.exr", {"RGB": np.stack([np.ones_like(disp), disp, np.full_like(disp, 7.0)], -1)})
    rgb = [_img(scene / f"l_0000{i}.png", 9, 16) for i in (1, 8)]
    src = IRS(tmp_path)
    assert [src.files[0], src.files[1]] == ["Home/ArchVizInterior03Data/d_00001.exr",
                                             "Home/ArchVizInterior03Data/d_00008.exr"]
    valid = np.isfinite(disp) & (disp > 0)
    for i in range(2):
        s = src[i]
        np.testing.assert_array_equal(s["valid"], valid)
        np.testing.assert_allclose(s["depth"][valid], 0.1 * 480.0 / disp[valid], rtol=1e-6)
        assert np.all(s["depth"][~valid] == 0)
        np.testing.assert_array_equal(s["image"], rgb[i])


def test_tartanair_source_reads_npy_metres_and_caps_the_sky(tmp_path):
    traj = tmp_path / "abandonedfactory/Easy/P000"
    depth = RNG.uniform(0.5, 300, (6, 8)).astype(np.float32)
    depth[0] = 10000.0  # sky
    (traj / "depth_left").mkdir(parents=True)
    np.save(traj / "depth_left/000003_left_depth.npy", depth)
    rgb = _img(traj / "image_left/000003_left.png", 6, 8)
    s = TartanAir(tmp_path)[0]
    assert s["name"] == "abandonedfactory/Easy/P000/depth_left/000003_left_depth.npy"
    np.testing.assert_array_equal(s["valid"], depth < 1000)
    np.testing.assert_array_equal(s["depth"][1:], depth[1:])
    np.testing.assert_array_equal(s["image"], rgb)


def test_blendedmvs_source_reads_bottom_up_pfm(tmp_path):
    scene = tmp_path / "5a3ca9cb270f0c3f6fce3c7e"
    depth = RNG.uniform(100, 900, (6, 8)).astype(np.float32)
    depth[:, :2] = 0.0
    (scene / "rendered_depth_maps").mkdir(parents=True)
    (scene / "rendered_depth_maps/00000012.pfm").write_bytes(_pfm_bytes(depth))
    rgb = _img(scene / "blended_images/00000012.jpg", 6, 8)
    _img(scene / "blended_images/00000012_masked.jpg", 6, 8)
    src = BlendedMVS(tmp_path)
    assert len(src) == 1
    s = src[0]
    np.testing.assert_array_equal(s["valid"], depth > 0)
    np.testing.assert_array_equal(s["depth"], depth)
    np.testing.assert_array_equal(s["image"], rgb)


# ---------------------------------------------------------------- bad samples


def _bad(src, i=0):
    with pytest.raises(BadSample) as e:
        src[i]
    return e.value


def test_corrupt_files_raise_bad_sample_with_the_file_name(tmp_path):
    d = tmp_path / "vk/Scene02/fog/frames/depth/Camera_1"
    d.mkdir(parents=True)
    (d / "depth_00000.png").write_bytes(b"\x89PNG garbage")
    _img(tmp_path / "vk/Scene02/fog/frames/rgb/Camera_1/rgb_00000.jpg", 4, 4)
    e = _bad(VirtualKitti2(tmp_path / "vk"))
    assert e.name == "Scene02/fog/frames/depth/Camera_1/depth_00000.png" and "depth_00000.png" in str(e)
    irs = tmp_path / "irs/Store/Shop1"
    irs.mkdir(parents=True)
    (irs / "d_00002.exr").write_bytes(b"corrupt" * 9)
    _img(irs / "l_00002.png", 4, 4)
    assert "OpenEXR" in _bad(IRS(tmp_path / "irs")).reason
    bmvs = tmp_path / "bmvs/abc/rendered_depth_maps"
    bmvs.mkdir(parents=True)
    (bmvs / "00000000.pfm").write_bytes(_pfm_bytes(np.ones((4, 4), np.float32))[:-7])
    _img(tmp_path / "bmvs/abc/blended_images/00000000.jpg", 4, 4)
    assert "truncated" in _bad(BlendedMVS(tmp_path / "bmvs")).reason
    ta = tmp_path / "ta/env/Hard/P001"
    (ta / "depth_left").mkdir(parents=True)
    (ta / "depth_left/000000_left_depth.npy").write_bytes(b"\x93NUMPY broken")
    _img(ta / "image_left/000000_left.png", 4, 4)
    assert _bad(TartanAir(tmp_path / "ta")).name == "env/Hard/P001/depth_left/000000_left_depth.npy"


def test_wrong_shape_missing_image_nan_depth_and_empty_mask_raise_bad_sample(tmp_path):
    traj = tmp_path / "ta/env/Easy/P000"
    (traj / "depth_left").mkdir(parents=True)
    np.save(traj / "depth_left/000000_left_depth.npy", np.ones((6, 8), np.float32))
    _img(traj / "image_left/000000_left.png", 6, 9)  # one column too many
    np.save(traj / "depth_left/000001_left_depth.npy", np.ones((6, 8), np.float32))  # no image file
    np.save(traj / "depth_left/000002_left_depth.npy", np.full((6, 8), 5e4, np.float32))  # all sky
    _img(traj / "image_left/000002_left.png", 6, 8)
    np.save(traj / "depth_left/000003_left_depth.npy", np.ones((6, 8), np.int32))  # not metres
    _img(traj / "image_left/000003_left.png", 6, 8)
    src = TartanAir(tmp_path / "ta")
    assert "differ in size" in _bad(src, 0).reason
    assert "000001_left.png" in _bad(src, 1).reason
    assert "empty valid mask" in _bad(src, 2).reason
    assert "expected float depth" in _bad(src, 3).reason
    geo = tmp_path / "hs/ai_002_003/images/scene_cam_01_geometry_hdf5"
    _h5(geo / "frame.0004.depth_meters.hdf5", np.full((4, 6), np.nan, np.float16))
    _h5(tmp_path / "hs/ai_002_003/images/scene_cam_01_final_hdf5/frame.0004.color.hdf5",
        np.ones((4, 6, 3), np.float16))
    _h5(geo / "frame.0005.depth_meters.hdf5", np.ones((4, 6), np.float16))  # no colour at all
    hs = Hypersim(tmp_path / "hs")
    e = _bad(hs, 0)
    assert e.name == "ai_002_003/images/scene_cam_01_geometry_hdf5/frame.0004.depth_meters.hdf5"
    assert "no finite value" in e.reason
    assert "no colour image" in _bad(hs, 1).reason
    vk = tmp_path / "vk/Scene01/clone/frames/depth/Camera_0"
    vk.mkdir(parents=True)
    cv2.imwrite(str(vk / "depth_00000.png"), np.full((4, 4), 65535, np.uint16))  # sky everywhere
    _img(tmp_path / "vk/Scene01/clone/frames/rgb/Camera_0/rgb_00000.jpg", 4, 4)
    assert "empty valid mask" in _bad(VirtualKitti2(tmp_path / "vk")).reason


def test_bad_sample_survives_pickling_for_worker_processes():
    e = pickle.loads(pickle.dumps(BadSample("a/b.png", "corrupt")))
    assert (e.name, e.reason, str(e)) == ("a/b.png", "corrupt", "bad sample a/b.png: corrupt")


def test_a_root_without_the_layout_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="Scene01/clone/frames/depth/Camera_0"):
        VirtualKitti2(tmp_path)
