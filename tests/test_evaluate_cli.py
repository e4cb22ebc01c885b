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
from launch.eval import datasets, metrics, predictors, protocols

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


def _tiny_marigold_folder(path, normals):
    """A random-weight diffusers Marigold depth or normals pipeline at the smallest size that keeps its structure."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, MarigoldDepthPipeline, MarigoldNormalsPipeline
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(4, 4, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=4, latent_channels=4,
        mid_block_add_attention=False,
    )
    unet = UNet2DConditionModel(
        in_channels=8, out_channels=4, block_out_channels=(16,), down_block_types=("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",), layers_per_block=1, attention_head_dim=2, cross_attention_dim=16,
        norm_num_groups=4, use_linear_projection=True,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=False, steps_offset=1,
        timestep_spacing="trailing",
    )
    cls, config = ((MarigoldNormalsPipeline, dict(prediction_type="normals")) if normals
                   else (MarigoldDepthPipeline, dict(prediction_type="depth")))
    pipe = cls(unet=unet.eval(), vae=vae.eval(), scheduler=scheduler, text_encoder=text_encoder.eval(),
               tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=8), default_denoising_steps=1,
               default_processing_resolution=32, **config)
    pipe.save_pretrained(path)
    return path


def test_cli_scores_a_marigold_depth_checkpoint_like_direct_metrics(tmp_path):
    import marigold_jax

    folder = _tiny_marigold_folder(str(tmp_path / "marigold-depth"), normals=False)
    args = ["--model", folder, "--dataset", "motorcycle", "--processing-resolution", "48", "--ensemble", "2",
            "--output", str(tmp_path / "m.json")]
    summary = evaluate.main(args)
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["run"]["protocol"] == "marigold" and result["run"]["kind"] == "depth"
    assert result["run"]["settings"] == {"num_inference_steps": 1, "ensemble_size": 2, "processing_resolution": 48,
                                         "seed": predictors.MARIGOLD_SEED}

    sample = datasets.open_dataset("motorcycle")[0]
    out = marigold_jax.load(folder).predict_depth(sample.rgb, match_input_resolution=True, **result["run"]["settings"])
    want = protocols.score_depth(out.prediction[0, ..., 0], sample.depth, sample.mask, "depth",
                                 protocols.depth_spec("marigold", "motorcycle"))
    assert {k: result["per_image"][0][k] for k in want} == want
    assert summary == {k: want[k] for k in summary}


def test_cli_scores_a_marigold_normals_checkpoint_like_direct_metrics(tmp_path):
    import marigold_jax

    folder = _tiny_marigold_folder(str(tmp_path / "marigold-normals"), normals=True)
    normals = np.random.default_rng(1).normal(size=(20, 28, 3)).astype(np.float32)
    rgb = np.random.default_rng(2).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "000005_img.png")
    np.save(tmp_path / "000005_normal.npy", normals)
    summary = evaluate.main(["--model", folder, "--dataset", "nyu_normals", "--data-dir", str(tmp_path),
                             "--output", str(tmp_path / "n.json")])
    settings = json.loads((tmp_path / "n.json").read_text())["run"]["settings"]
    assert settings["num_inference_steps"] == 1 and settings["processing_resolution"] == 640
    out = marigold_jax.load(folder).predict_normals(rgb, match_input_resolution=True, **settings)
    assert summary == metrics.normals_metrics(out.prediction[0], normals, np.ones((20, 28), bool))
