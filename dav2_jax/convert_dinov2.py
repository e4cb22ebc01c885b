"""DINOv2 checkpoints → the Depth Anything V2 encoder, to train from DINOv2 as the paper does.

Reads
- the official hub checkpoints `dinov2_vit{s,b,l,g}14_pretrain.pth`: a plain state dict whose keys are DAv2's
  `pretrained.*` without the prefix (`pos_embed`, `blocks.N.*`, `norm.*`; ViT-G with the fused SwiGLU `w12`/`w3`).
  DINOv2 training checkpoints are accepted too: `{"teacher": {"backbone.*", "dino_head.*", ...}}` with the blocks
  split into FSDP chunks (`blocks.C.N.*`, N the global block index). Reading a `.pth` needs torch.
- transformers `Dinov2Model` folders such as `facebook/dinov2-{small,base,large,giant}` (`config.json` +
  safetensors, hub or transformers ≥ 5 names; the giant's SwiGLU as `weights_in`/`weights_out`), or a bare
  `.safetensors` file in either naming. No torch needed.
Register variants (`dinov2_vit*14_reg4_pretrain.pth`, `facebook/dinov2-with-registers-*`) are refused: our ViT has
no register tokens. Key names and layouts come from `convert_official` and `convert_hf`; nothing is re-mapped here
except the chunk index.
"""

import json
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dav2_jax import convert_hf, convert_official
from dav2_jax.vit import ENCODERS, GRID, PATCH, DinoVisionTransformer

_ENCODER_BY_WIDTH = {spec.embed_dim: name for name, spec in ENCODERS.items()}
_CHUNKED = re.compile(r"blocks\.\d+\.(\d+\..+)")
_REGISTERS = (
    "DINOv2 with register tokens is not supported: the Depth Anything V2 encoder has none. Use the checkpoint "
    "without registers (dinov2_vit?14_pretrain.pth, facebook/dinov2-small/base/large/giant)"
)


def _read_safetensors(files: list[str]) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in files:
        out.update({k: v.astype(np.float32) for k, v in load_file(f).items()})
    return out


def _read_hf_folder(path: str) -> dict[str, np.ndarray]:
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"{path!r} is a folder without config.json; expected a transformers Dinov2Model folder")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "dinov2_with_registers":
        raise ValueError(f"{path!r}: {_REGISTERS}")
    if model_type != "dinov2":
        raise ValueError(
            f"{path!r}: config.json describes model_type {model_type!r}, expected 'dinov2' (a transformers "
            "Dinov2Model folder such as facebook/dinov2-small)"
            + ("; Depth Anything V2 checkpoints load with dav2_jax.load" if model_type == "depth_anything" else "")
        )
    files = sorted(f for f in os.listdir(path) if re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", f))
    if not files:
        raise ValueError(f"{path!r}: transformers folder without model.safetensors")
    return _read_safetensors([os.path.join(path, f) for f in files])


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Any supported DINOv2 checkpoint → the official DINOv2 state dict (float32 NumPy, torch layouts).

    path: an official `.pth`/`.pt`, a transformers folder, or a `.safetensors` file (official or transformers names).
    Raises ValueError for Depth Anything V2 checkpoints, register variants and files of other models.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no DINOv2 checkpoint at {path!r}")
    if os.path.isdir(path):
        state = _read_hf_folder(path)
    elif path.endswith(".safetensors"):
        state = _read_safetensors([path])
    elif path.endswith((".pth", ".pt")):
        state = convert_official.read_pth(path)
    else:
        raise ValueError(f"{path!r}: expected an official DINOv2 .pth, a transformers folder or a .safetensors file")
    if any(k.startswith(("pretrained.", "depth_head.", "neck.", "head.")) for k in state):
        raise ValueError(
            f"{path!r} is a Depth Anything V2 checkpoint, not a DINOv2 one: load it with dav2_jax.load "
            "(the teacher task's init_from takes it as is)"
        )
    if any(k.startswith("backbone.") for k in state):  # drop the DINO/iBOT heads of a training checkpoint
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if "register_tokens" in state or "embeddings.register_tokens" in state:
        raise ValueError(f"{path!r}: {_REGISTERS}")
    if "pos_embed" in state:
        return {(f"blocks.{m.group(1)}" if (m := _CHUNKED.fullmatch(k)) else k): v for k, v in state.items()}
    if "embeddings.position_embeddings" in state:
        try:
            official = convert_hf.hf_to_official({"backbone." + k: v for k, v in state.items()})
        except ValueError as e:
            raise ValueError(f"{path!r} is not a transformers Dinov2Model checkpoint: {e}") from e
        return {k[len("pretrained."):]: v for k, v in official.items()}
    raise ValueError(
        f"{path!r} is not a DINOv2 checkpoint: expected the key 'pos_embed' (official) or "
        f"'embeddings.position_embeddings' (transformers), found e.g. {sorted(state)[:3]}"
    )


def vit_template(encoder: str) -> dict:
    """Shapes of `DinoVisionTransformer(encoder)`'s parameters (the tree under 'params'), nothing computed."""
    images = jax.ShapeDtypeStruct((1, PATCH * GRID, PATCH * GRID, 3), jnp.float32)
    return nn.unbox(jax.eval_shape(DinoVisionTransformer(encoder).init, jax.random.key(0), images))["params"]


def _vit_params(path: str) -> tuple[str, dict]:
    """(encoder, Flax ViT params as NumPy) from a DINOv2 checkpoint; see `load_dinov2`."""
    state = read_state_dict(path)
    width = int(state["pos_embed"].shape[-1])
    if width not in _ENCODER_BY_WIDTH:
        raise ValueError(
            f"{path!r}: DINOv2 of width {width}; the Depth Anything V2 encoders are "
            + ", ".join(f"{n} ({s.embed_dim})" for n, s in ENCODERS.items())
        )
    encoder = _ENCODER_BY_WIDTH[width]
    template = vit_template(encoder)
    # official_key names leaves of the whole DAv2 tree, whose encoder keys are DINOv2's with a `pretrained.` prefix
    wanted = {convert_official.official_key(("pretrained", *p))[len("pretrained."):]
              for p in traverse_util.flatten_dict(template)}
    missing, unexpected = sorted(wanted - set(state)), sorted(set(state) - wanted)
    if missing or unexpected:
        spec = ENCODERS[encoder]
        raise ValueError(
            f"{path!r} is not a DINOv2 {encoder} (width {width}, {spec.depth} blocks, {spec.ffn} FFN) checkpoint: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    tokens = 1 + GRID * GRID
    if state["pos_embed"].shape != (1, tokens, width):
        raise ValueError(
            f"{path!r}: position embedding of shape {state['pos_embed'].shape}, expected (1, {tokens}, {width}) "
            f"(1 + {GRID}x{GRID} patches, the 518-pixel DINOv2 hub checkpoints)"
        )
    if state["patch_embed.proj.weight"].shape != (width, 3, PATCH, PATCH):
        raise ValueError(
            f"{path!r}: patch embedding of shape {state['patch_embed.proj.weight'].shape}, expected "
            f"({width}, 3, {PATCH}, {PATCH}) (patch size {PATCH})"
        )
    prefixed = {"pretrained." + k: v for k, v in state.items()}
    return encoder, convert_official.from_state_dict(prefixed, {"pretrained": template})["params"]["pretrained"]


def load_dinov2(path: str) -> tuple[str, dict]:
    """A DINOv2 checkpoint → (encoder, params of `DinoVisionTransformer(encoder)`).

    encoder: "vits" | "vitb" | "vitl" | "vitg", from the width. params: float32 jax arrays, the tree that sits under
    `params["params"]["pretrained"]` of a `DepthAnythingV2`. See the module docstring for the formats.
    """
    encoder, params = _vit_params(path)
    return encoder, jax.tree.map(jnp.asarray, params)


def _is_box(x) -> bool:
    return isinstance(x, nn.meta.AxisMetadata)


def _like(old, new: np.ndarray):
    """`new` with `old`'s dtype, placement (sharding) and logical-axis box."""
    if _is_box(old):
        return old.replace_boxed(_like(old.unbox(), new))
    new = np.asarray(new, dtype=old.dtype)
    if isinstance(old, jax.Array):
        return jax.make_array_from_callback(new.shape, old.sharding, lambda index: new[index])
    return jnp.asarray(new)


def init_encoder(params, path: str):
    """Depth Anything V2 params with the encoder (`pretrained`) replaced by the DINOv2 weights at `path`.

    params: `{"params": {"pretrained": ..., "depth_head": ...}}` or the inner tree, plain or boxed with logical
    axis names; returned with the same structure, boxes, dtypes and shardings. The DPT head is left as it is.
    Raises ValueError when the checkpoint's size differs from the model's encoder.
    """
    wrapped = "params" in params
    inner = params["params"] if wrapped else params
    if "pretrained" not in inner:
        raise ValueError(
            f"expected Depth Anything V2 params with a 'pretrained' (encoder) subtree, found keys {sorted(inner)}"
        )
    current = traverse_util.flatten_dict(inner["pretrained"])
    width = nn.unbox(current[("pos_embed",)]).shape[-1]
    model_encoder = _ENCODER_BY_WIDTH.get(width, f"an encoder of width {width}")
    encoder, loaded = _vit_params(path)
    if encoder != model_encoder:
        raise ValueError(
            f"{path!r} holds DINOv2 {encoder} (width {ENCODERS[encoder].embed_dim}) but the model's encoder is "
            f"{model_encoder} (width {width}): use the DINOv2 checkpoint of the model's size or build the model "
            f"with encoder={encoder!r}"
        )
    loaded = traverse_util.flatten_dict(loaded)
    shapes = {k: tuple(nn.unbox(v).shape) for k, v in current.items()}
    if shapes != {k: v.shape for k, v in loaded.items()}:
        diff = sorted(set(shapes.items()) ^ {(k, v.shape) for k, v in loaded.items()})[:3]
        raise ValueError(f"the model's encoder parameters differ from {path!r}'s (e.g. {diff})")
    encoder_params = traverse_util.unflatten_dict({k: _like(v, loaded[k]) for k, v in current.items()})
    inner = {**inner, "pretrained": encoder_params}
    return {**params, "params": inner} if wrapped else inner
