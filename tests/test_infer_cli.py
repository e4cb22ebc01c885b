"""`launch/infer.py` with a Depth Anything V2 checkpoint as users run it: phone photos, many sizes, devices, caching.

Runs in this process where it can (`infer.main`), so that the few programs compiled for the 140-pixel input are
shared between tests; fresh processes only where the behaviour is about a process (cache, device count).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

import dav2_jax
from dav2_jax import preprocess
from launch import infer
from test_dav2_cli import checkpoint  # noqa: F401 (the official ViT-S with random weights, as a .pth)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 140  # network short side: small, and a multiple of 14


def _official(ref, rgb):
    return ref.infer_image(np.ascontiguousarray(rgb[..., ::-1]), SIZE)


def _run(*argv):
    return infer.main([*argv, "--input-size", str(SIZE), "--compilation-cache", "off"])


def test_a_phone_jpeg_with_exif_orientation_6_gives_the_official_depth_of_the_upright_image(checkpoint, tmp_path):
    ref, path = checkpoint
    coffee = skimage.data.coffee()[::4, ::4]  # 100 x 150
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held upright: viewers turn the stored pixels 90° clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(coffee))).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    with Image.open(tmp_path / "phone.jpg") as im:
        upright = np.rot90(np.asarray(im.convert("RGB")), k=-1)  # the decoded stored pixels, turned as viewers do
    assert _run("--model", path, "--input", str(tmp_path / "phone.jpg"), "--output", str(tmp_path / "out")) == 0
    depth = np.load(tmp_path / "out" / "phone.npy")
    theirs = _official(ref, upright)
    assert depth.shape == coffee.shape[:2]
    assert np.abs(depth - theirs).max() <= 1e-4 * np.ptp(theirs)


def test_ten_image_sizes_compile_one_program_per_network_size(checkpoint, tmp_path):
    ref, path = checkpoint
    photo = skimage.data.astronaut()
    shapes = [(3 * k, 4 * k) for k in (10, 13, 17, 25, 40)] + [(4 * k, 3 * k) for k in (11, 14, 20, 30, 50)]
    (tmp_path / "in").mkdir()
    for i, (h, w) in enumerate(shapes):
        Image.fromarray(photo).resize((w, h), Image.BICUBIC).save(tmp_path / "in" / f"{i}.png")
    networks = {preprocess.network_size(h, w, SIZE) for h, w in shapes}
    assert len(networks) == 2
    before = preprocess.forward._cache_size()
    assert _run("--model", path, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                "--batch-size", "3") == 0
    assert preprocess.forward._cache_size() - before <= len(networks)
    for i in (0, 9):  # one per bucket; 9 ran padded in the bucket's last, partial batch
        rgb = np.asarray(Image.open(tmp_path / "in" / f"{i}.png"))
        theirs = _official(ref, rgb)
        assert np.abs(np.load(tmp_path / "out" / f"{i}.npy") - theirs).max() <= 1e-4 * np.ptp(theirs)


def test_flags_of_the_other_family_and_unknown_outputs_are_errors(checkpoint, tmp_path):
    Image.fromarray(skimage.data.coffee()[::8, ::8]).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match="--ensemble, --seed only apply to the other family"):
        _run("--model", checkpoint[1], "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--ensemble", "3",
             "--seed", "1")
    with pytest.raises(SystemExit, match="mm needs a metric model"):
        _run("--model", checkpoint[1], "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--save", "npy,mm")
    with pytest.raises(SystemExit, match="overwrite the input"):
        _run("--model", checkpoint[1], "--input", str(tmp_path), "--output", str(tmp_path))
    with pytest.raises(SystemExit, match="--tiled-size must be a multiple of 14 above --input-size 140"):
        _run("--model", checkpoint[1], "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--tiled-size", "150")
    assert sorted(os.listdir(tmp_path)) == ["a.png"]


_COUNTING = textwrap.dedent("""
    import json, sys
    import jax
    from jax import monitoring
    events = []  # a program is compiled when it is asked for and not found in the persistent cache
    monitoring.register_event_duration_secs_listener(lambda name, secs, **kw: events.append(name))
    monitoring.register_event_listener(lambda name, **kw: events.append(name))
    from launch import infer
    code = infer.main(sys.argv[1:])
    compiles = events.count("/jax/core/compile/backend_compile_duration") - events.count(
        "/jax/compilation_cache/cache_hits")
    print(json.dumps({"code": code, "compiles": compiles, "devices": jax.device_count()}))
""")


def _process(argv, devices=1):
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"}
    run = subprocess.run([sys.executable, "-c", _COUNTING, *argv], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_second_run_of_the_same_command_compiles_nothing(checkpoint, tmp_path):
    Image.fromarray(skimage.data.coffee()[::8, ::8]).save(tmp_path / "a.png")
    argv = ["--model", checkpoint[1], "--input", str(tmp_path / "a.png"), "--input-size", "28",
            "--compilation-cache", str(tmp_path / "cache")]
    first = _process([*argv, "--output", str(tmp_path / "one")])
    second = _process([*argv, "--output", str(tmp_path / "two")])
    assert first["code"] == 0 and first["compiles"] > 0
    assert second["code"] == 0 and second["compiles"] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "one" / "a.npy"), np.load(tmp_path / "two" / "a.npy"))


@pytest.mark.slow
def test_two_devices_give_the_outputs_of_one(checkpoint, tmp_path):
    """Slow: a second Python process with two simulated CPU devices compiles the network again."""
    coffee = skimage.data.coffee()[::8, ::8]
    for i in range(3):
        Image.fromarray(np.roll(coffee, 7 * i, axis=1)).save(tmp_path / f"{i}.png")
    run = _process(["--model", checkpoint[1], "--input", str(tmp_path), "--output", str(tmp_path / "out"),
                    "--input-size", str(SIZE), "--compilation-cache", "off", "--batch-size", "2"], devices=2)
    assert run["code"] == 0 and run["devices"] == 2
    model, params = dav2_jax.load(checkpoint[1], attention_impl="heads_first")
    for i in range(3):
        mine = dav2_jax.infer_image(model, params, np.asarray(Image.open(tmp_path / f"{i}.png")), SIZE)
        # the same float32 program on another batch split: rounding of differently blocked sums only
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{i}.npy"), mine, rtol=0,
                                   atol=1e-5 * np.ptp(mine))
