"""Checkpoint formats both ways: official .pth, transformers folders, our folder; clear errors for bad input."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import dav2_jax
from dav2_jax import convert_hf
from oracles import OFFICIAL_CONFIGS, official_dav2, official_model

jax.config.update("jax_default_matmul_precision", "highest")


def _nchw(seed, h=518, w=518):
    return np.random.RandomState(seed).randn(1, 3, h, w).astype(np.float32)


def _ours(model, params, x_nchw):
    return np.asarray(model.apply(params, jnp.asarray(x_nchw.transpose(0, 2, 3, 1))))


def _rel_err(a, b):
    return np.abs(a - b).max() / np.ptp(b)


@pytest.fixture(scope="module")
def official_pth(tmp_path_factory):
    ref = official_model("vits")
    path = str(tmp_path_factory.mktemp("official") / "depth_anything_v2_vits.pth")
    torch.save(ref.state_dict(), path)
    return ref, path


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers DepthAnything (ViT-S) folder with random, non-trivial weights, saved by transformers."""
    config = transformers.DepthAnythingConfig(**{k: v for k, v in convert_hf.hf_config("vits", None).items()
                                                 if k not in ("architectures", "model_type", "backbone_config")},
                                              backbone_config=transformers.Dinov2Config(
                                                  **{k: v for k, v in convert_hf.hf_config("vits", None)[
                                                      "backbone_config"].items() if k != "model_type"}))
    torch.manual_seed(0)
    model = transformers.DepthAnythingForDepthEstimation(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "lambda1" in name:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    path = str(tmp_path_factory.mktemp("hf") / "Depth-Anything-V2-Small-hf")
    model.save_pretrained(path)
    return model, path


def _hf_out(model, x):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()


def test_official_pth_round_trip_loads_strictly_and_gives_identical_output(official_pth, tmp_path):
    ref, path = official_pth
    model, params = dav2_jax.load(path)
    assert (model.encoder, model.max_depth) == ("vits", None)
    out = str(tmp_path / "exported.pth")
    dav2_jax.save(model, params, out, format="official")
    again = official_dav2().DepthAnythingV2(**OFFICIAL_CONFIGS["vits"]).eval()
    again.load_state_dict(torch.load(out, weights_only=True), strict=True)
    x = torch.from_numpy(_nchw(0, 518, 686))
    with torch.no_grad():
        np.testing.assert_array_equal(again(x).numpy(), ref(x).numpy())


def test_metric_checkpoint_range_comes_from_the_file_name(official_pth, tmp_path):
    ref, _ = official_pth
    path = str(tmp_path / "depth_anything_v2_metric_vkitti_vits.pth")
    torch.save(ref.state_dict(), path)
    assert dav2_jax.load(path)[0].max_depth == 80.0
    assert dav2_jax.load(path, max_depth=10.0)[0].max_depth == 10.0
    unnamed = str(tmp_path / "my_metric_model.pth")
    torch.save(ref.state_dict(), unnamed)
    with pytest.raises(ValueError, match="max_depth"):
        dav2_jax.load(unnamed)


def test_training_checkpoint_wrappers_are_accepted(official_pth, tmp_path):
    ref, _ = official_pth
    path = str(tmp_path / "latest.pth")
    torch.save({"model": {"module." + k: v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    model, params = dav2_jax.load(path)
    x = _nchw(1, 140, 196)
    with torch.no_grad():
        assert _rel_err(_ours(model, params, x), ref(torch.from_numpy(x)).numpy()) < 1e-4


def test_hf_folder_matches_transformers_at_518(hf_folder):
    hf_model, path = hf_folder
    model, params = dav2_jax.load(path)
    x = _nchw(2)
    assert _rel_err(_ours(model, params, x), _hf_out(hf_model, x)) < 1e-4


def test_hf_round_trip_reloads_in_transformers_with_identical_output(hf_folder, tmp_path):
    hf_model, path = hf_folder
    model, params = dav2_jax.load(path)
    dav2_jax.save(model, params, str(tmp_path / "again"), format="hf")
    again = transformers.DepthAnythingForDepthEstimation.from_pretrained(str(tmp_path / "again")).eval()
    x = _nchw(3, 518, 686)
    np.testing.assert_array_equal(_hf_out(again, x), _hf_out(hf_model, x))


def test_official_to_hf_export_matches_official_model_at_518(official_pth, tmp_path):
    ref, path = official_pth
    model, params = dav2_jax.load(path)
    dav2_jax.save(model, params, str(tmp_path / "hf"), format="hf")
    hf_model = transformers.DepthAnythingForDepthEstimation.from_pretrained(str(tmp_path / "hf")).eval()
    x = _nchw(4)
    with torch.no_grad():
        assert _rel_err(_hf_out(hf_model, x), ref(torch.from_numpy(x)).numpy()) < 1e-4


def test_metric_hf_export_keeps_range_and_head(tmp_path):
    ref = official_model("vits", max_depth=20.0)
    torch.save(ref.state_dict(), tmp_path / "depth_anything_v2_metric_hypersim_vits.pth")
    model, params = dav2_jax.load(str(tmp_path / "depth_anything_v2_metric_hypersim_vits.pth"))
    dav2_jax.save(model, params, str(tmp_path / "hf"), format="hf")
    hf_model = transformers.DepthAnythingForDepthEstimation.from_pretrained(str(tmp_path / "hf")).eval()
    reloaded, _ = dav2_jax.load(str(tmp_path / "hf"))
    assert reloaded.max_depth == 20.0
    x = _nchw(5)
    with torch.no_grad():
        theirs = ref(torch.from_numpy(x)).numpy()
    assert _rel_err(_hf_out(hf_model, x), theirs) < 1e-4
    assert _rel_err(_ours(model, params, x), theirs) < 1e-4


def test_jax_format_round_trip_is_exact_and_needs_no_torch(official_pth, tmp_path):
    _, path = official_pth
    model, params = dav2_jax.load(path)
    dav2_jax.save(model, params, str(tmp_path / "ours"), format="jax")
    script = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "import dav2_jax, numpy as np, jax\n"
        f"m, p = dav2_jax.load({str(tmp_path / 'ours')!r})\n"
        "print(m.encoder, sum(x.size for x in jax.tree.leaves(p)))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.split() == ["vits", "24785089"]
    reloaded = dav2_jax.load(str(tmp_path / "ours"))[1]
    jax.tree.map(np.testing.assert_array_equal, reloaded, params)


@pytest.mark.parametrize(
    "image,message",
    [
        (np.zeros((32, 32), np.uint8), "grayscale"),
        (np.zeros((32, 32, 4), np.uint8), "RGBA"),
        (np.zeros((32, 32, 3), np.float32), "uint8"),
        (np.zeros((0, 32, 3), np.uint8), "non-empty"),
    ],
)
def test_bad_images_are_rejected_with_a_clear_error(official_pth, image, message):
    model, params = dav2_jax.load(official_pth[1])
    with pytest.raises(ValueError, match=message):
        dav2_jax.infer_image(model, params, image)


def test_checkpoints_of_other_models_are_rejected(tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not a Depth Anything V2 checkpoint"):
        dav2_jax.load(str(tmp_path / "resnet.pth"))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        dav2_jax.load(str(tmp_path / "notes.pth"))
    dinov2 = transformers.Dinov2Model(transformers.Dinov2Config(hidden_size=32, num_hidden_layers=1,
                                                                num_attention_heads=2, intermediate_size=64))
    dinov2.save_pretrained(tmp_path / "dinov2")
    with pytest.raises(ValueError, match="model_type 'dinov2'"):
        dav2_jax.load(str(tmp_path / "dinov2"))
    with pytest.raises(FileNotFoundError):
        dav2_jax.load(str(tmp_path / "missing.pth"))
