"""DINOv2 initialisation of the encoder: official .pth and transformers folders load into our ViT, which then gives
transformers' Dinov2Model features; the official DINOv2 class fixes the .pth key names; clear errors otherwise."""

import json
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import traverse_util
from safetensors.numpy import save_file

from dav2_jax import convert_hf
from dav2_jax.convert_dinov2 import init_encoder, load_dinov2, read_state_dict
from dav2_jax.model import DepthAnythingV2
from dav2_jax.vit import DinoVisionTransformer
from oracles import official_dav2

jax.config.update("jax_default_matmul_precision", "highest")


def _official_dinov2():
    """The official `depth_anything_v2.dinov2` module (DINOv2's own `DinoVisionTransformer`)."""
    return sys.modules[official_dav2().DINOv2.__module__]


def _randomise_(model, seed):
    """Non-trivial LayerScale, norms and biases (init gives 1.0, 1 and 0), and a random mask token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 or "lambda1" in name or "mask_token" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if "norm" in name and "weight" in name else 0.0))


def _dinov2_config(**kw):
    return transformers.Dinov2Config(image_size=518, patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6, **kw)


def _flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(nn.unbox(tree)).items()}


def _assert_same_params(a, b):
    a, b = _flat(a), _flat(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))


def _pixels(seed):
    return np.random.RandomState(seed).randn(1, 3, 518, 518).astype(np.float32)


@pytest.fixture(scope="module")
def hf_vits(tmp_path_factory):
    """A transformers Dinov2Model of ViT-S size (facebook/dinov2-small's config) with random weights, saved."""
    torch.manual_seed(0)
    model = transformers.Dinov2Model(_dinov2_config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6))
    _randomise_(model.eval(), 1)
    path = str(tmp_path_factory.mktemp("hf") / "dinov2-small")
    model.save_pretrained(path)
    return model, path


@pytest.fixture(scope="module")
def official_vits(hf_vits):
    """The official DINOv2 ViT-S/14 (hub configuration) holding the same weights, loaded strictly."""
    hf = {"backbone." + k: v.numpy() for k, v in hf_vits[0].state_dict().items()}
    state = {k[len("pretrained."):]: torch.from_numpy(v) for k, v in convert_hf.hf_to_official(hf).items()}
    model = _official_dinov2().DINOv2("vits")
    model.load_state_dict(state, strict=True)
    return model.eval()


def test_hf_folder_gives_transformers_dinov2_features_at_518(hf_vits):
    model, path = hf_vits
    encoder, params = load_dinov2(path)
    assert encoder == "vits"
    x = _pixels(0)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).last_hidden_state[:, 1:].numpy()
    forward = jax.jit(lambda p, images: DinoVisionTransformer("vits").apply({"params": p}, images, taps=(11,)))
    (ours,) = forward(params, jnp.asarray(x.transpose(0, 2, 3, 1)))
    ours = np.asarray(ours).reshape(ref.shape)
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"normed patch tokens vs transformers Dinov2Model: max abs err / max |ref| = {err:.2e}")
    assert err <= 1e-4


def test_official_pth_loads_to_the_params_of_the_hf_folder(hf_vits, official_vits, tmp_path):
    x = _pixels(1)
    with torch.no_grad():
        hf = hf_vits[0](pixel_values=torch.from_numpy(x)).last_hidden_state[:, 1:].numpy()
        official = official_vits.forward_features(torch.from_numpy(x))["x_norm_patchtokens"].numpy()
    assert np.abs(official - hf).max() / np.abs(hf).max() <= 1e-5  # the two oracles hold the same network
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official_vits.state_dict(), path)
    encoder, params = load_dinov2(str(path))
    assert encoder == "vits"
    _assert_same_params(params, load_dinov2(hf_vits[1])[1])


def test_training_checkpoint_with_block_chunks_loads_to_the_same_params(hf_vits, official_vits, tmp_path):
    chunked = _official_dinov2().vit_small(patch_size=14, img_size=518, init_values=1.0, block_chunks=4)
    plain = official_vits.state_dict()
    chunked.load_state_dict({k: plain[re.sub(r"^blocks\.\d+\.(?=\d)", "blocks.", k)]
                             for k in chunked.state_dict()}, strict=True)
    state = {"backbone." + k: v for k, v in chunked.state_dict().items()}
    assert "backbone.blocks.1.3.norm1.weight" in state  # chunk 1 holds blocks 3-5 under their global indices
    state["dino_head.last_layer.weight_g"] = torch.ones(8, 1)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": state}, path)
    _assert_same_params(load_dinov2(str(path))[1], load_dinov2(hf_vits[1])[1])


def test_hf_giant_swiglu_names_map_to_the_official_fused_swiglu(tmp_path):
    """facebook/dinov2-giant stores its SwiGLU as weights_in / weights_out; a narrow two-block copy stands in."""
    torch.manual_seed(2)
    hf = transformers.Dinov2Model(_dinov2_config(hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                                                 use_swiglu_ffn=True))
    _randomise_(hf.eval(), 3)
    hf.save_pretrained(tmp_path / "dinov2-giant-like")
    state = read_state_dict(str(tmp_path / "dinov2-giant-like"))
    assert "blocks.0.mlp.w12.weight" in state
    official = _official_dinov2().DinoVisionTransformer(
        img_size=518, patch_size=14, embed_dim=48, depth=2, num_heads=3, init_values=1.0, ffn_layer="swiglufused",
        block_chunks=0)
    official.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    x = torch.from_numpy(_pixels(2))
    with torch.no_grad():
        ref = hf.eval()(pixel_values=x).last_hidden_state[:, 1:].numpy()
        out = official.eval().forward_features(x)["x_norm_patchtokens"].numpy()
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-5


def test_init_encoder_replaces_the_encoder_and_keeps_the_head_and_axis_names(hf_vits):
    # DepthAnythingV2("vits").init's boxed tree, filled with random numbers (running init takes half a minute here)
    shapes = jax.eval_shape(DepthAnythingV2("vits").init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)), shapes)
    out = init_encoder(variables, hf_vits[1])
    _assert_same_params(out["params"]["pretrained"], load_dinov2(hf_vits[1])[1])
    _assert_same_params(out["params"]["depth_head"], variables["params"]["depth_head"])
    before = traverse_util.flatten_dict(variables["params"]["pretrained"])
    after = traverse_util.flatten_dict(out["params"]["pretrained"])
    for k, box in before.items():
        assert isinstance(after[k], nn.LogicallyPartitioned) and after[k].names == box.names, k
    inner = init_encoder(nn.unbox(variables)["params"], hf_vits[1])  # the tree the training task holds
    assert inner.keys() == {"pretrained", "depth_head"}
    _assert_same_params(inner, out["params"])


def test_init_encoder_rejects_a_checkpoint_of_another_size(hf_vits):
    vitb = jax.eval_shape(DepthAnythingV2("vitb").init, jax.random.key(0), jnp.zeros((1, 28, 28, 3)))
    with pytest.raises(ValueError, match="holds DINOv2 vits .* the model's encoder is vitb"):
        init_encoder(vitb, hf_vits[1])
    with pytest.raises(ValueError, match="'pretrained' \\(encoder\\) subtree"):
        init_encoder({"params": {"encoder": {}}}, hf_vits[1])


def test_register_variants_are_refused(tmp_path):
    reg = _official_dinov2().DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=384, depth=1, num_heads=6,
                                                   init_values=1.0, block_chunks=0, num_register_tokens=4)
    torch.save(reg.state_dict(), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    with pytest.raises(ValueError, match="register tokens is not supported"):
        load_dinov2(str(tmp_path / "dinov2_vits14_reg4_pretrain.pth"))
    hf = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=518, patch_size=14))
    hf.save_pretrained(tmp_path / "dinov2-with-registers-small")
    with pytest.raises(ValueError, match="register tokens is not supported"):
        load_dinov2(str(tmp_path / "dinov2-with-registers-small"))


def test_other_checkpoints_are_rejected_with_a_clear_error(official_vits, tmp_path):
    torch.save({"pretrained.pos_embed": torch.zeros(1, 1370, 384), "depth_head.projects.0.bias": torch.zeros(48)},
               tmp_path / "depth_anything_v2_vits.pth")
    with pytest.raises(ValueError, match="is a Depth Anything V2 checkpoint, not a DINOv2 one"):
        load_dinov2(str(tmp_path / "depth_anything_v2_vits.pth"))
    (tmp_path / "dav2-hf").mkdir()
    (tmp_path / "dav2-hf" / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    with pytest.raises(ValueError, match="model_type 'depth_anything', expected 'dinov2'.*dav2_jax.load"):
        load_dinov2(str(tmp_path / "dav2-hf"))
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not a DINOv2 checkpoint: expected the key 'pos_embed'"):
        load_dinov2(str(tmp_path / "resnet.pth"))
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_dinov2(str(tmp_path / "notes.pth"))
    with pytest.raises(FileNotFoundError):
        load_dinov2(str(tmp_path / "missing.pth"))

    state = {k: v.numpy() for k, v in official_vits.state_dict().items()}
    save_file({**state, "pos_embed": np.zeros((1, 257, 384), np.float32)}, tmp_path / "dinov2_224.safetensors")
    with pytest.raises(ValueError, match=r"position embedding of shape \(1, 257, 384\), expected \(1, 1370, 384\)"):
        load_dinov2(str(tmp_path / "dinov2_224.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("blocks.11.")}, tmp_path / "short.safetensors")
    with pytest.raises(ValueError, match="not a DINOv2 vits .*12 blocks.*missing keys"):
        load_dinov2(str(tmp_path / "short.safetensors"))
    save_file({"pos_embed": np.zeros((1, 1370, 32), np.float32)}, tmp_path / "narrow.safetensors")
    with pytest.raises(ValueError, match="DINOv2 of width 32"):
        load_dinov2(str(tmp_path / "narrow.safetensors"))
