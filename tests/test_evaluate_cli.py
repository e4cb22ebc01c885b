"""`launch/evaluate.py` end to end on the offline motorcycle scene, with a random-weight DAv2 model saved by
`dav2_jax.save`, plus oracle predictors that make the scores known (perfect → AbsRel 0, δ1 1)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import dav2_jax
from launch import evaluate
from launch.eval import datasets, predictors, protocols

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INPUT_SIZE = 70  # network input short side: keeps the ViT-S forward pass cheap on CPU


@pytest.fixture(scope="module")
def dav2_checkpoint(tmp_path_factory):
    model = dav2_jax.DepthAnythingV2("vits")
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 70, 98, 3)))
    path = str(tmp_path_factory.mktemp("model") / "dav2_vits_random")
    dav2_jax.save(model, params, path, format="jax")
    return path


def test_cli_scores_motorcycle_like_direct_metrics_and_resumes(dav2_checkpoint, tmp_path, monkeypatch):
    output = tmp_path / "motorcycle.json"
    cmd = [sys.executable, os.path.join(REPO, "launch", "evaluate.py"), "--model", dav2_checkpoint,
           "--dataset", "motorcycle", "--input-size", str(INPUT_SIZE), "--output", str(output)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| abs_rel |" in done.stdout and "1 images scored" in done.stdout

    result = json.loads(output.read_text())
    assert result["run"]["protocol"] == "dav2" and result["run"]["kind"] == "disparity"
    assert result["run"]["spec"] == {"min_depth": 1e-3, "max_depth": 10.0, "crop": None,
                                     "alignment_max_resolution": None}
    (record,) = result["per_image"]
    assert record["name"] == "motorcycle"

    sample = datasets.open_dataset("motorcycle")[0]
    model, params = dav2_jax.load(dav2_checkpoint)
    disparity = dav2_jax.infer_image(model, params, sample.rgb, input_size=INPUT_SIZE)
    want = protocols.score_depth(disparity, sample.depth, sample.mask, "disparity",
                                 protocols.depth_spec("dav2", "motorcycle"))
    assert record["index"] == 0 and record["valid_pixels"] == want["valid_pixels"] == int(sample.mask.sum())
    assert {k: record[k] for k in want} == want
    assert result["summary"] == {k: want[k] for k in result["summary"]}
    assert (tmp_path / "motorcycle.md").read_text().startswith("# motorcycle — dav2 protocol")

    def no_prediction(self, rgb):
        raise AssertionError("a resumed run must not predict images already in the per-image log")

    monkeypatch.setattr(predictors.Dav2Predictor, "predict", no_prediction)
    again = evaluate.main(["--model", dav2_checkpoint, "--dataset", "motorcycle", "--input-size", str(INPUT_SIZE),
                           "--output", str(output)])
    assert again == pytest.approx(result["summary"])
    with pytest.raises(ValueError, match="another run"):
        evaluate.main(["--model", dav2_checkpoint, "--dataset", "motorcycle", "--input-size", str(INPUT_SIZE),
                       "--protocol", "marigold", "--output", str(output)])


class Oracle:
    """A predictor returning the ground truth of the sample it is shown, in the chosen output kind."""

    family = "dav2"
    settings = {}

    def __init__(self, kind, truth):
        self.kind = kind
        self.truth = truth

    def predict(self, rgb):
        return self.truth(rgb)


def _oracle(monkeypatch, kind, truth):
    monkeypatch.setattr(predictors, "load_predictor", lambda *a, **k: Oracle(kind, truth))


@pytest.mark.parametrize("kind", ["disparity", "depth", "metric"])
def test_ground_truth_prediction_scores_perfectly(kind, tmp_path, monkeypatch):
    sample = datasets.open_dataset("motorcycle")[0]
    depth = sample.depth.astype(np.float64)
    disparity = np.where(sample.mask, 1.0 / np.where(sample.mask, depth, 1.0), 0.0)
    truth = {"disparity": 3.0 * disparity + 0.2, "depth": 0.5 * depth - 0.1, "metric": depth}[kind]
    _oracle(monkeypatch, kind, lambda rgb: truth)
    summary = evaluate.main(["--model", str(tmp_path), "--dataset", "motorcycle", "--protocol", "marigold",
                             "--output", str(tmp_path / f"{kind}.json")])
    assert summary["abs_rel"] == pytest.approx(0.0, abs=1e-9)
    assert summary["rmse"] == pytest.approx(0.0, abs=1e-8)
    assert summary["delta1"] == 1.0


def test_normals_and_da2k_benchmarks_through_the_cli(tmp_path, monkeypatch):
    normals = np.random.default_rng(0).normal(size=(4, 5, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "000001_img.png")
    np.save(tmp_path / "000001_normal.npy", normals)
    _oracle(monkeypatch, "normals", lambda rgb: normals)
    summary = evaluate.main(["--model", str(tmp_path), "--dataset", "nyu_normals", "--data-dir", str(tmp_path),
                             "--output", str(tmp_path / "normals.json")])
    assert summary["mean"] == pytest.approx(0.0, abs=1e-3) and summary["within_11_25"] == 100.0

    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    pairs = [{"point1": [0, 0], "point2": [3, 4], "closer_point": "point1"},
             {"point1": [0, 0], "point2": [3, 4], "closer_point": "point2"}]
    (tmp_path / "annotations.json").write_text(json.dumps({"images/a.png": pairs}))
    _oracle(monkeypatch, "disparity", lambda rgb: np.arange(20.0).reshape(4, 5)[::-1])
    summary = evaluate.main(["--model", str(tmp_path), "--dataset", "da2k", "--data-dir", str(tmp_path),
                             "--output", str(tmp_path / "da2k.json")])
    assert summary == {"accuracy": 50.0, "pairs": 2}


def test_images_without_valid_pixels_are_skipped_and_reported(tmp_path, monkeypatch):
    sample = datasets.open_dataset("motorcycle")[0]
    _oracle(monkeypatch, "metric", lambda rgb: sample.depth)
    monkeypatch.setitem(protocols.DEPTH_SPECS["dav2"], "motorcycle", protocols.DepthSpec(20.0, 30.0))
    with pytest.raises(ValueError, match="no image could be scored"):
        evaluate.main(["--model", str(tmp_path), "--dataset", "motorcycle", "--output", str(tmp_path / "r.json")])
    log = [json.loads(line) for line in (tmp_path / "r.per_image.jsonl").read_text().splitlines()]
    assert "no pixel" in log[1]["skipped"]


def test_resume_scores_only_missing_images_and_survives_a_cut_line(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((2, 3, 3), ord(name), np.uint8)).save(tmp_path / f"{name}_img.png")
        np.save(tmp_path / f"{name}_normal.npy", np.tile(np.float32([0, 0, 1]), (2, 3, 1)))
    seen = []

    def normals(rgb):
        seen.append(chr(rgb[0, 0, 0]))
        return np.tile(np.float32([0, 0, 1]), (2, 3, 1))

    _oracle(monkeypatch, "normals", normals)
    args = ["--model", str(tmp_path), "--dataset", "nyu_normals", "--data-dir", str(tmp_path),
            "--output", str(tmp_path / "n.json")]
    evaluate.main(args + ["--limit", "1"])
    with open(tmp_path / "n.per_image.jsonl", "a") as f:
        f.write('{"index": 1, "name": "b_im')  # killed while writing the second image
    evaluate.main(args)
    assert seen == ["a", "b", "c"]
    log = [json.loads(line) for line in (tmp_path / "n.per_image.jsonl").read_text().splitlines()]
    assert [r["index"] for r in log[1:]] == [0, 1, 2]
    assert len(json.loads((tmp_path / "n.json").read_text())["per_image"]) == 3
