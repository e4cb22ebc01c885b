"""What users pass to the inference CLIs and what they get back, without a model: reading, listing, naming, formats."""

import os

import numpy as np
import pytest
from PIL import Image

from launch import images, outputs
from launch.data.formats import read_pfm


def test_sixteen_bit_grey_is_scaled_to_eight_bits_and_replicated(tmp_path):
    values = np.array([[0, 257, 65535], [1000, 30000, 65278]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    rgb = images.read_rgb(str(tmp_path / "deep.png"))
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.round(values / 257).astype(np.uint8))
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_palette_images_are_expanded_to_their_colours(tmp_path):
    palette = [255, 0, 0, 0, 128, 255, 10, 20, 30] + [0] * (256 * 3 - 9)
    im = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="P")
    im.putpalette(palette)
    im.save(tmp_path / "palette.png")
    rgb = images.read_rgb(str(tmp_path / "palette.png"))
    np.testing.assert_array_equal(rgb, [[[255, 0, 0], [0, 128, 255]], [[10, 20, 30], [0, 128, 255]]])


def test_exif_orientation_turns_the_image_upright_and_the_header_size_agrees(tmp_path):
    stored = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    rgb = images.read_rgb(str(tmp_path / "phone.png"))
    np.testing.assert_array_equal(rgb, np.rot90(stored, k=-1))
    assert images.image_size(str(tmp_path / "phone.png")) == (3, 2)


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)


def test_folders_recursive_folders_lists_and_globs_name_inputs_relative_to_their_root(tmp_path):
    _touch(tmp_path / "photos", "a.jpg", "trip/b.png", "trip/day2/c.png")
    (tmp_path / "photos" / "notes.md").write_text("not an image")
    root = tmp_path / "photos"
    assert [i.rel for i in images.list_inputs(str(root))] == ["a.jpg"]
    assert [i.rel for i in images.list_inputs(str(root), recursive=True)] == [
        "a.jpg", os.path.join("trip", "b.png"), os.path.join("trip", "day2", "c.png")]
    (root / "list.txt").write_text("# holiday\ntrip/b.png\n\ntrip/day2/c.png\n")
    assert [i.rel for i in images.list_inputs(str(root / "list.txt"))] == ["b.png", os.path.join("day2", "c.png")]
    assert [i.rel for i in images.list_inputs(str(root / "**" / "*.png"))] == [
        os.path.join("trip", "b.png"), os.path.join("trip", "day2", "c.png")]
    only_sub = tmp_path / "only_sub"
    _touch(only_sub, "sub/x.png")
    with pytest.raises(FileNotFoundError, match="--recursive"):
        images.list_inputs(str(only_sub))
    (root / "bad.txt").write_text("trip/missing.png\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        images.list_inputs(str(root / "bad.txt"))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        images.list_inputs(str(root / "*.gif"))


def test_outputs_mirror_inputs_and_keep_the_extension_only_where_names_collide(tmp_path):
    _touch(tmp_path / "in", "a.jpg", "a.png", "b.png", "b_color.jpg", "sub/c.png")
    inputs = images.list_inputs(str(tmp_path / "in"), recursive=True)
    suffixes = [".npy", ".png", "_color.png"]
    stems = outputs.plan_stems(inputs, str(tmp_path / "out"), suffixes)
    rel = [os.path.relpath(s, tmp_path / "out") for s in stems]
    assert rel == ["a.jpg", "a.png", "b.png", "b_color.jpg", os.path.join("sub", "c")]
    written = [s + x for s in rel for x in suffixes]
    assert len(set(written)) == len(written)


def test_writing_over_an_input_is_refused_before_anything_is_written(tmp_path):
    _touch(tmp_path, "photo.png", "other.jpg")
    inputs = images.list_inputs(str(tmp_path))
    with pytest.raises(outputs.OutputConflict, match="overwrite the input .*photo.png"):
        outputs.plan_stems(inputs, str(tmp_path), [".npy", ".png"])
    assert sorted(os.listdir(tmp_path)) == ["other.jpg", "photo.png"]


def test_mm_and_pfm_keep_the_metres(tmp_path):
    rng = np.random.default_rng(0)
    metres = rng.uniform(0.3, 60.0, (5, 7)).astype(np.float32)
    metres[0, 0], metres[0, 1], metres[0, 2], metres[0, 3] = 0.0, np.nan, 70.0, -1.0
    stem = str(tmp_path / "deep" / "d")
    outputs.write_depth(stem, metres, ["mm", "pfm", "npy"], "Spectral")
    mm = np.asarray(Image.open(stem + "_mm.png"))
    assert mm.dtype == np.uint16
    valid = np.isfinite(metres) & (metres > 0) & (metres <= 65.535)
    assert not valid[0, :4].any() and (mm[~valid] == 0).all()
    assert np.abs(mm[valid] / 1000.0 - metres[valid]).max() <= 0.0005 + 60.0 * np.finfo(np.float32).eps
    np.testing.assert_array_equal(read_pfm(stem + ".pfm"), metres)
    np.testing.assert_array_equal(np.load(stem + ".npy"), metres)
