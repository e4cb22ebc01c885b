"""The Depth Anything V2 command lines as a user runs them: infer.py and convert.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import dav2_jax
from oracles import official_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch", script), *args],
                          capture_output=True, text=True, cwd=ROOT)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    ref = official_model("vits")
    path = str(tmp_path_factory.mktemp("ckpt") / "depth_anything_v2_vits.pth")
    torch.save(ref.state_dict(), path)
    return ref, path


def test_infer_folder_writes_outputs_skips_unreadable_files_and_matches_official(checkpoint, tmp_path):
    ref, path = checkpoint
    photos = tmp_path / "photos"
    photos.mkdir()
    coffee = skimage.data.coffee()
    Image.fromarray(coffee).save(photos / "coffee.png")
    Image.fromarray(coffee[:, ::-1]).save(photos / "mirrored.png")
    Image.fromarray(skimage.data.camera()).save(photos / "camera.jpg")  # grayscale file: replicated to RGB
    (photos / "broken.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    run = _cli("infer.py", "--model", path, "--input", str(photos), "--output", str(out),
               "--input-size", "280", "--batch-size", "2")
    assert run.returncode == 0, run.stderr
    assert "broken.jpg" in run.stderr and "1 unreadable" in run.stdout and "wrote 3 of 4" in run.stdout
    depth = np.load(out / "coffee.npy")
    theirs = ref.infer_image(np.ascontiguousarray(coffee[..., ::-1]), 280)
    assert depth.dtype == np.float32 and depth.shape == coffee.shape[:2]
    assert np.abs(depth - theirs).max() <= 1e-4 * np.ptp(theirs)
    png = np.asarray(Image.open(out / "coffee.png"))
    assert png.dtype == np.uint16 and png.min() == 0 and png.max() == 65535
    np.testing.assert_array_equal(png, np.round((depth - depth.min()) / np.ptp(depth) * 65535).astype(np.uint16))
    color = np.asarray(Image.open(out / "coffee_color.png"))
    assert color.shape == coffee.shape and color.dtype == np.uint8
    assert (out / "camera.npy").exists() and not (out / "broken.npy").exists()


def test_infer_fails_when_nothing_could_be_processed(checkpoint, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    run = _cli("infer.py", "--model", checkpoint[1], "--input", str(tmp_path / "broken.png"),
               "--output", str(tmp_path / "out"))
    assert run.returncode != 0 and "broken.png" in run.stderr


def test_convert_chain_official_jax_hf_official_is_lossless(checkpoint, tmp_path):
    ref, path = checkpoint
    steps = [("jax", tmp_path / "jax"), ("hf", tmp_path / "hf"), ("official", tmp_path / "back.pth")]
    source = path
    for fmt, target in steps:
        run = _cli("convert.py", "--input", source, "--output", str(target), "--to", fmt)
        assert run.returncode == 0, run.stderr
        source = str(target)
    back = torch.load(source, weights_only=True)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)
    model, _ = dav2_jax.load(str(tmp_path / "hf"))
    assert model.encoder == "vits"
