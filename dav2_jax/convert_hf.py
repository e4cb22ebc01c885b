"""Hugging Face `transformers` DepthAnything state dicts and configs <-> the official key layout.

We write the hub ("legacy") names, which every transformers version loads; we read both those and the names
transformers ≥ 5 uses in memory (`q_proj`/`o_proj`, `gate_proj`/`up_proj`/`down_proj`). Position embeddings are
identical, but transformers resizes them differently at input sizes other than 518 × 518 (size-based bicubic,
no +0.1 offset), so the two implementations agree exactly only at 518 × 518.
"""

import re

import numpy as np

from dav2_jax.model import HEADS
from dav2_jax.vit import ENCODERS

_BLOCK = "backbone.encoder.layer.{0}."
_RULES = [  # (official regex, HF template); block-level rules get the block index as {0}
    (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
    (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
    (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
    (r"pretrained\.patch_embed\.proj\.(weight|bias)", "backbone.embeddings.patch_embeddings.projection.{0}"),
    (r"pretrained\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", _BLOCK + "{1}.{2}"),
    (r"pretrained\.blocks\.(\d+)\.attn\.proj\.(weight|bias)", _BLOCK + "attention.output.dense.{1}"),
    (r"pretrained\.blocks\.(\d+)\.ls1\.gamma", _BLOCK + "layer_scale1.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.ls2\.gamma", _BLOCK + "layer_scale2.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", _BLOCK + "mlp.{1}.{2}"),
    (r"pretrained\.blocks\.(\d+)\.mlp\.w12\.(weight|bias)", _BLOCK + "mlp.weights_in.{1}"),
    (r"pretrained\.blocks\.(\d+)\.mlp\.w3\.(weight|bias)", _BLOCK + "mlp.weights_out.{1}"),
    (r"pretrained\.norm\.(weight|bias)", "backbone.layernorm.{0}"),
    (r"depth_head\.projects\.(\d)\.(weight|bias)", "neck.reassemble_stage.layers.{0}.projection.{1}"),
    (r"depth_head\.resize_layers\.(\d)\.(weight|bias)", "neck.reassemble_stage.layers.{0}.resize.{1}"),
    (r"depth_head\.scratch\.layer(\d)_rn\.weight", "neck.convs.{k_minus_1}.weight"),
    (r"depth_head\.scratch\.refinenet(\d)\.out_conv\.(weight|bias)", "neck.fusion_stage.layers.{four_minus_k}.projection.{1}"),
    (r"depth_head\.scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.(weight|bias)",
     "neck.fusion_stage.layers.{four_minus_k}.residual_layer{1}.convolution{2}.{3}"),
    (r"depth_head\.scratch\.output_conv1\.(weight|bias)", "head.conv1.{0}"),
    (r"depth_head\.scratch\.output_conv2\.0\.(weight|bias)", "head.conv2.{0}"),
    (r"depth_head\.scratch\.output_conv2\.2\.(weight|bias)", "head.conv3.{0}"),
]
_QKV = re.compile(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)")


def _hf_name(key: str) -> str:
    for pattern, template in _RULES:
        m = re.fullmatch(pattern, key)
        if m:
            g = m.groups()
            k = int(g[0]) if g and g[0].isdigit() else 0
            return template.format(*g, k_minus_1=k - 1, four_minus_k=4 - k)
    raise ValueError(f"no Hugging Face name for official key {key!r}")


def official_to_hf(state_dict: dict) -> dict[str, np.ndarray]:
    """Official DAv2 state dict → transformers hub state dict (q/k/v split out of the fused qkv)."""
    out = {}
    for key, value in state_dict.items():
        m = _QKV.fullmatch(key)
        if m:
            block, leaf = m.groups()
            for name, part in zip(("query", "key", "value"), np.split(np.asarray(value), 3, axis=0)):
                out[_BLOCK.format(block) + f"attention.attention.{name}.{leaf}"] = np.ascontiguousarray(part)
        else:
            out[_hf_name(key)] = np.asarray(value)
    return out


_V5_TO_HUB = [  # transformers ≥ 5 in-memory names → hub names
    (r"(.*)\.attention\.q_proj\.(weight|bias)", r"\1.attention.attention.query.\2"),
    (r"(.*)\.attention\.k_proj\.(weight|bias)", r"\1.attention.attention.key.\2"),
    (r"(.*)\.attention\.v_proj\.(weight|bias)", r"\1.attention.attention.value.\2"),
    (r"(.*)\.attention\.o_proj\.(weight|bias)", r"\1.attention.output.dense.\2"),
    (r"(.*)\.mlp\.down_proj\.(weight|bias)", r"\1.mlp.weights_out.\2"),
]


def _to_hub_names(hf: dict) -> dict:
    out = {}
    for key, value in hf.items():
        for pattern, repl in _V5_TO_HUB:
            if re.fullmatch(pattern, key):
                key = re.sub(pattern, repl, key)
                break
        out[key] = value
    for gate in [k for k in out if ".mlp.gate_proj." in k]:
        up = gate.replace("gate_proj", "up_proj")
        out[gate.replace("gate_proj", "weights_in")] = np.concatenate([out.pop(gate), out.pop(up)], axis=0)
    return out


def hf_to_official(hf: dict) -> dict[str, np.ndarray]:
    """transformers DepthAnything state dict (hub or v5 names) → official DAv2 state dict."""
    hf = _to_hub_names({k: np.asarray(v) for k, v in hf.items()})
    if "backbone.embeddings.position_embeddings" not in hf:
        raise ValueError(
            "not a transformers DepthAnything checkpoint: no 'backbone.embeddings.position_embeddings' among "
            f"its {len(hf)} tensors (e.g. {sorted(hf)[:3]})"
        )
    width = hf["backbone.embeddings.position_embeddings"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in hf if (m := re.match(r"backbone\.encoder\.layer\.(\d+)\.", k)))
    official_keys = [f"pretrained.blocks.{i}.attn.qkv.{leaf}" for i in range(depth) for leaf in ("weight", "bias")]
    by_hf = {}
    for key in _official_keys(width, depth):
        by_hf[_hf_name(key)] = key
    out = {}
    for key in official_keys:
        block, leaf = _QKV.fullmatch(key).groups()
        parts = [hf.pop(_BLOCK.format(block) + f"attention.attention.{n}.{leaf}", None) for n in ("query", "key", "value")]
        if any(p is None for p in parts):
            raise ValueError(f"transformers checkpoint lacks the query/key/value of block {block}")
        out[key] = np.concatenate(parts, axis=0)
    for hf_key, value in hf.items():
        if hf_key not in by_hf:
            raise ValueError(f"unexpected tensor {hf_key!r} in a transformers DepthAnything checkpoint")
        out[by_hf[hf_key]] = value
    return out


def _official_keys(width: int, depth: int) -> list[str]:
    """Every official key name (except the fused qkv) of an encoder of this width and depth."""
    keys = ["pretrained.cls_token", "pretrained.mask_token", "pretrained.pos_embed", "pretrained.norm.weight",
            "pretrained.norm.bias", "pretrained.patch_embed.proj.weight", "pretrained.patch_embed.proj.bias"]
    for i in range(depth):
        b = f"pretrained.blocks.{i}."
        keys += [b + f"{n}.{leaf}" for n in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2", "mlp.w12", "mlp.w3")
                 for leaf in ("weight", "bias")]
        keys += [b + "ls1.gamma", b + "ls2.gamma"]
    h = "depth_head."
    keys += [h + f"projects.{i}.{leaf}" for i in range(4) for leaf in ("weight", "bias")]
    keys += [h + f"resize_layers.{i}.{leaf}" for i in (0, 1, 3) for leaf in ("weight", "bias")]
    keys += [h + f"scratch.layer{k}_rn.weight" for k in range(1, 5)]
    for k in range(1, 5):
        r = h + f"scratch.refinenet{k}."
        keys += [r + f"out_conv.{leaf}" for leaf in ("weight", "bias")]
        keys += [r + f"resConfUnit{u}.conv{c}.{leaf}" for u in (1, 2) for c in (1, 2) for leaf in ("weight", "bias")]
    keys += [h + f"scratch.output_conv{n}.{leaf}" for n in ("1", "2.0", "2.2") for leaf in ("weight", "bias")]
    return keys


def hf_config(encoder: str, max_depth: float | None) -> dict:
    """A transformers `DepthAnythingConfig` dict (config.json) for one of our model configurations."""
    spec = ENCODERS[encoder]
    features, out_channels = HEADS[encoder]
    out_indices = [t + 1 for t in spec.taps]  # hidden_states[0] is the embedding output
    backbone = {
        "model_type": "dinov2",
        "hidden_size": spec.embed_dim,
        "num_attention_heads": spec.num_heads,
        "num_hidden_layers": spec.depth,
        "mlp_ratio": 4,
        "use_swiglu_ffn": spec.ffn == "swiglu",
        "image_size": 518,
        "patch_size": 14,
        "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu",
        "qkv_bias": True,
        "apply_layernorm": True,
        "reshape_hidden_states": False,
        "out_indices": out_indices,
        "out_features": [f"stage{i}" for i in out_indices],
        "stage_names": ["stem"] + [f"stage{i}" for i in range(1, spec.depth + 1)],
    }
    return {
        "architectures": ["DepthAnythingForDepthEstimation"],
        "model_type": "depth_anything",
        "backbone_config": backbone,
        "reassemble_hidden_size": spec.embed_dim,
        "reassemble_factors": [4, 2, 1, 0.5],
        "neck_hidden_sizes": list(out_channels),
        "fusion_hidden_size": features,
        "head_hidden_size": 32,
        "head_in_index": -1,
        "patch_size": 14,
        "depth_estimation_type": "relative" if max_depth is None else "metric",
        # transformers validates max_depth as an int
        "max_depth": 1 if max_depth is None else (int(max_depth) if float(max_depth).is_integer() else max_depth),
    }


def model_from_hf_config(config: dict) -> tuple[str, float | None]:
    """(encoder, max_depth) from a transformers DepthAnything config.json dict; ValueError for other models."""
    if config.get("model_type") != "depth_anything":
        raise ValueError(
            f"config.json describes model_type {config.get('model_type')!r}, expected 'depth_anything' "
            "(a transformers Depth Anything V2 folder)"
        )
    backbone = config.get("backbone_config") or {}
    width = backbone.get("hidden_size")
    matches = [name for name, spec in ENCODERS.items() if spec.embed_dim == width]
    if not matches:
        raise ValueError(f"unsupported DepthAnything backbone width {width}; expected one of 384/768/1024/1536")
    encoder = matches[0]
    if backbone.get("num_hidden_layers", ENCODERS[encoder].depth) != ENCODERS[encoder].depth:
        raise ValueError(f"backbone of width {width} with {backbone['num_hidden_layers']} layers is not a DAv2 encoder")
    metric = config.get("depth_estimation_type", "relative") == "metric"
    return encoder, (float(config["max_depth"]) if metric else None)

