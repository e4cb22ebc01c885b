"""diffusers Marigold folders ↔ Flax modules and parameters, without torch.

Layout read and written (what `MarigoldDepthPipeline.save_pretrained` writes): `model_index.json`,
`unet/` and `vae/` (`config.json` + `diffusion_pytorch_model.safetensors`), `text_encoder/` (`config.json` +
`model.safetensors`), `tokenizer/` (copied as is), `scheduler/scheduler_config.json`.

Weight naming is mechanical because the Linen submodules carry the PyTorch names: a Flax path segment
`NAME_N` whose NAME is one of `_LIST_NAMES` is the PyTorch `NAME.N` (a `ModuleList` entry), every other segment is
kept, and the leaf is renamed and laid out as follows:

| Flax leaf | PyTorch | layout |
|---|---|---|
| conv `kernel` [kh, kw, in, out] | `weight` [out, in, kh, kw] | transpose (3, 2, 0, 1) |
| dense `kernel` [in, out] | `weight` [out, in] | transpose |
| norm `scale`, `embedding` [vocab, C] | `weight` | as is |
| `bias` | `bias` | as is |
"""

import dataclasses
import json
import os
import shutil
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import traverse_util

from marigold_jax.clip import CLIPTextModel, empty_prompt_ids
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.vae import AutoencoderKL

_LIST_NAMES = ("down_blocks", "up_blocks", "resnets", "attentions", "transformer_blocks", "downsamplers",
               "upsamplers", "to_out", "net", "layers")
_LEAVES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}
# PyTorch-side names of older diffusers checkpoints (the VAE's attention before diffusers 0.14), renamed on load
_LEGACY_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_MARIGOLD_PIPELINES = ("MarigoldDepthPipeline", "MarigoldNormalsPipeline", "MarigoldIntrinsicsPipeline")
_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def torch_name(path):
    """Flax parameter path (tuple of names) → PyTorch state-dict key."""
    parts = []
    for segment in path[:-1]:
        head, _, index = segment.rpartition("_")
        parts.append(f"{head}.{index}" if head in _LIST_NAMES and index.isdigit() else segment)
    return ".".join(parts + [_LEAVES[path[-1]]])


def to_flax_layout(leaf, array):
    """A PyTorch tensor (numpy) → the layout of the Flax leaf named `leaf`."""
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def to_torch_layout(leaf, array):
    """A Flax leaf → the PyTorch tensor layout."""
    if leaf == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)
    if leaf == "kernel" and array.ndim == 2:
        return array.T
    return array


def abstract_params(model):
    """Shapes of `model`'s parameters, {path tuple: shape}, without allocating them."""
    if isinstance(model, UNet2DConditionModel):
        s = 2 ** (len(model.block_out_channels) - 1)
        args = (jnp.zeros((1, s, s, model.in_channels)), jnp.zeros((1,)), jnp.zeros((1, 1, model.cross_attention_dim)))
    elif isinstance(model, AutoencoderKL):
        s = 2 ** (len(model.block_out_channels) - 1)
        args = (jnp.zeros((1, s, s, model.in_channels)),)
    else:
        args = (jnp.zeros((1, 1), jnp.int32),)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), *args))["params"])
    return {k: v.shape for k, v in traverse_util.flatten_dict(shapes).items()}


def params_from_torch(model, state_dict, what):
    """A PyTorch state dict (name → numpy array) → `{"params": tree}` of float32 jax arrays for `model`.
    Raises ValueError naming missing, unexpected and mis-shaped tensors. `what` names the component in errors."""
    state = {}
    for key, value in state_dict.items():
        key = key.removeprefix("text_model.")
        parts = key.split(".")
        if len(parts) > 1 and parts[-2] in _LEGACY_VAE_ATTENTION and ".attentions." in key:
            key = ".".join(parts[:-2] + [_LEGACY_VAE_ATTENTION[parts[-2]], parts[-1]])
        state[key] = value
    state.pop("embeddings.position_ids", None)  # a buffer some transformers versions saved
    flat, missing, mismatched = {}, [], []
    for path, shape in abstract_params(model).items():
        key = torch_name(path)
        if key not in state:
            missing.append(key)
            continue
        array = to_flax_layout(path[-1], np.asarray(state.pop(key)))
        if array.shape != shape:
            mismatched.append(f"{key}: expected {shape} (Flax layout), found {array.shape}")
            continue
        flat[path] = jnp.asarray(array, jnp.float32)
    if missing or state or mismatched:
        raise ValueError(
            f"{what} weights do not match its config: {len(missing)} missing {missing[:5]}, {len(state)} unexpected "
            f"{sorted(state)[:5]}, {len(mismatched)} with another shape {mismatched[:5]}. Check that config.json "
            "and the safetensors file come from the same model."
        )
    return {"params": traverse_util.unflatten_dict(flat)}


def params_to_torch(params):
    """`{"params": tree}` (or the tree) → PyTorch state dict of contiguous float32 numpy arrays."""
    tree = nn.unbox(params.get("params", params))
    return {
        torch_name(path): np.ascontiguousarray(to_torch_layout(path[-1], np.asarray(value, np.float32)))
        for path, value in traverse_util.flatten_dict(tree).items()
    }
