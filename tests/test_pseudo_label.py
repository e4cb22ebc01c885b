"""Pseudo-labelling (launch/pseudo_label.py) and its reader `pseudo_labeled`: labels, resumption, sources.

The oracle is `dav2_jax.infer_image` on the decoded image; stored labels are float16, so they must agree within
float16 rounding (half an ulp: 2^-11 relative) plus float32 noise.
"""

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.linen import unbox
from PIL import Image

import dav2_jax
from launch import pseudo_label
from launch.data import pseudo_store, sources, unlabeled

ROOT = Path(__file__).resolve().parents[1]
SIZE = 28  # network short side: small, so each network size compiles quickly
F16_RTOL = 2.0**-10  # float16 rounding (2^-11) with room for float32 differences between batch and single image


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A random-weight ViT-S saved as a dav2_jax folder, and the loaded (model, params)."""
    model = dav2_jax.DepthAnythingV2("vits")
    params = unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))
    path = str(tmp_path_factory.mktemp("teacher") / "vits")
    dav2_jax.save(model, params, path, format="jax")
    return path, dav2_jax.load(path)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A nested folder: four images in two sizes of one network size (28 x 42) and a file that is not an image."""
    root = tmp_path_factory.mktemp("photos")
    (root / "sub").mkdir()
    rng = np.random.RandomState(0)
    for name, (h, w) in {"a.png": (30, 45), "sub/b.jpg": (30, 45), "sub/c.png": (31, 46), "d.png": (30, 45)}.items():
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "sub" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root


def _label(teacher_path, source, output, *extra):
    pseudo_label.main(["--model", teacher_path, "--input", str(source), "--output", str(output),
                       "--input-size", str(SIZE), "--batch-size", "2", "--shard-size", "2", *extra])


def _records(output):
    manifest = pseudo_store.read_manifest(output)
    files = [str(Path(output) / s["file"]) for s in manifest["shards"] if s["records"]]
    return [pseudo_store.decode_record(r) for r in grain.sources.ArrayRecordDataSource(files)]


@pytest.fixture(scope="module")
def labelled_and_log(teacher, photos, tmp_path_factory):
    """The photos labelled in shards of 2, and what the run printed on stderr."""
    output = tmp_path_factory.mktemp("labels") / "out"
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        _label(teacher[0], photos, output)
    return output, log.getvalue()


@pytest.fixture(scope="module")
def labelled(labelled_and_log):
    return labelled_and_log[0]


def test_pseudo_labels_read_back_equal_infer_image_and_keep_the_original_bytes(teacher, photos, labelled):
    model, params = teacher[1]
    reader = sources.PseudoLabeled(labelled)
    assert sorted(reader[i]["name"] for i in range(len(reader))) == ["a.png", "d.png", "sub/b.jpg", "sub/c.png"]
    for i in range(len(reader)):
        item = reader[i]
        original = np.asarray(Image.open(photos / item["name"]).convert("RGB"))
        np.testing.assert_array_equal(item["image"], original)
        assert item["disparity"].dtype == np.float32 and item["disparity"].shape == original.shape[:2]
        expected = dav2_jax.infer_image(model, params, original, SIZE)
        np.testing.assert_allclose(item["disparity"], expected, rtol=F16_RTOL, atol=F16_RTOL * np.abs(expected).max())
    for record in _records(labelled):
        assert record["image"] == (photos / record["name"]).read_bytes()  # no re-encoding
        assert record["disparity"].dtype == np.float16


def test_unreadable_image_is_named_skipped_and_counted(labelled_and_log):
    labelled, log = labelled_and_log
    assert "skipped sub/broken.jpg" in log
    manifest = pseudo_store.read_manifest(labelled)
    assert [s["name"] for s in manifest["skipped"]] == ["sub/broken.jpg"]
    assert manifest["records"] == 4 and sum(s["records"] for s in manifest["shards"]) == 4
    assert len(manifest["shards"]) == 3  # 5 inputs, 2 per shard


def test_flip_is_the_mean_of_the_two_predictions(teacher, photos, tmp_path):
    model, params = teacher[1]
    listed = tmp_path / "list.txt"
    listed.write_text(f"# one image, by absolute path\n{photos / 'a.png'}\n")
    _label(teacher[0], listed, tmp_path / "out", "--flip")
    (item,) = list(sources.PseudoLabeled(tmp_path / "out"))
    image = item["image"]
    expected = 0.5 * (dav2_jax.infer_image(model, params, image, SIZE)
                      + dav2_jax.infer_image(model, params, image[:, ::-1], SIZE)[:, ::-1])
    plain = dav2_jax.infer_image(model, params, image, SIZE)
    tol = F16_RTOL * np.abs(expected).max()
    np.testing.assert_allclose(item["disparity"], expected, rtol=F16_RTOL, atol=tol)
    assert np.abs(plain - expected).max() > 10 * tol  # the flip changes the labels: the test can fail


def test_killed_run_restarted_labels_every_image_exactly_once(teacher, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, str(ROOT / "launch" / "pseudo_label.py"), "--model", teacher[0], "--input",
               "synthetic", "--num-images", "40", "--synthetic-size", "28x42", "--output", str(output),
               "--input-size", str(SIZE), "--batch-size", "2", "--shard-size", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not pseudo_store.shard_done(output, 1) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = [k for k in range(20) if pseudo_store.shard_done(output, k)]
    assert 2 <= len(done) < 20, f"the run was to be killed mid-way; shards done: {done}"
    stamps = {k: pseudo_store.shard_paths(output, k)[0].stat().st_mtime_ns for k in done}
    _label(teacher[0], "synthetic", output, "--num-images", "40", "--synthetic-size", "28x42")
    assert {k: pseudo_store.shard_paths(output, k)[0].stat().st_mtime_ns for k in done} == stamps  # not redone
    names = [r["name"] for r in _records(output)]
    assert names == [f"synthetic/mixed/2/{i}" for i in range(40)]
    assert not list((output / "shards").glob("*.tmp"))


@pytest.mark.slow
def test_two_processes_label_each_image_once_with_the_labels_of_one_process(teacher, tmp_path):
    from test_pod_runtime import _env, launch_two_processes

    def command(output):
        return [sys.executable, str(ROOT / "launch" / "pseudo_label.py"), "--model", teacher[0], "--input",
                "synthetic", "--num-images", "10", "--synthetic-size", "28x42", "--output", str(output),
                "--input-size", str(SIZE), "--batch-size", "2", "--shard-size", "2"]

    one = subprocess.run(command(tmp_path / "one"), env=_env(), capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-2000:]
    procs = launch_two_processes(command(tmp_path / "two"), tmp_path)
    assert [p.wait(timeout=900) for p in procs] == [0, 0], (tmp_path / "process_1.txt").read_text()[-2000:]
    for i in range(2):  # process i labelled shards i, i + 2, ...: 3 shards of 2 images and 2 shards
        assert f"labelled {6 if i == 0 else 4} images" in (tmp_path / f"process_{i}.txt").read_text()
        assert f"on process {i};" in (tmp_path / f"process_{i}.txt").read_text()
    alone, together = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["name"] for r in together] == [f"synthetic/mixed/2/{i}" for i in range(10)]
    for a, b in zip(alone, together):
        assert a["image"] == b["image"]
        np.testing.assert_array_equal(a["disparity"], b["disparity"])


def test_resuming_with_other_settings_is_refused(teacher, labelled, photos):
    with pytest.raises(ValueError, match="input_size: 28 -> 42"):
        pseudo_label.main(["--model", teacher[0], "--input", str(photos), "--output", str(labelled),
                           "--input-size", "42", "--shard-size", "2"])


def test_unfinished_output_is_not_read(tmp_path):
    pseudo_store.check_settings(tmp_path, {"input": "x"})
    with pytest.raises(FileNotFoundError, match="rerun the same"):
        sources.PseudoLabeled(tmp_path)


def test_tfds_source_gives_the_stored_encoded_images(tmp_path):
    import tensorflow_datasets as tfds

    files = []
    for i, (h, w) in enumerate([(5, 7), (6, 4)]):
        files.append(tmp_path / f"im{i}.png")
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(files[-1])

    class TinyPhotos(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"image": tfds.features.Image(), "label": tfds.features.ClassLabel(num_classes=2)}))

        def _split_generators(self, dl_manager):
            return {"validation": self._generate_examples()}

        def _generate_examples(self):
            for i, path in enumerate(files):
                yield i, {"image": str(path), "label": i}

    TinyPhotos(data_dir=str(tmp_path / "tfds"), file_format="array_record").download_and_prepare()
    images = unlabeled.open_unlabeled("tfds:tiny_photos:validation", data_dir=str(tmp_path / "tfds"))
    assert len(images) == 2 and images.name(1) == "tiny_photos/validation/1"
    for i, path in enumerate(files):
        decoded = unlabeled.decode(images.encoded(i), images.name(i))
        np.testing.assert_array_equal(decoded, np.asarray(Image.open(path).convert("RGB")))
