"""Official Depth Anything V2 state dicts (`depth_anything_v2_vit*.pth`) <-> our Flax parameters.

Our Linen names mirror the official module tree, so the key mapping is mechanical: `blocks_3` <-> `blocks.3`,
`scratch_refinenet4` <-> `scratch.refinenet4`, `patch_embed_proj` <-> `patch_embed.proj`, `kernel`/`scale` <->
`weight`. Layouts: Linear (out, in) <-> (in, ...out) (q/k/v and heads split out as separate axes), Conv and
ConvTranspose (o|i, i|o, kh, kw) <-> (kh, kw, i|o, o|i).
"""

import re

import numpy as np
from flax import traverse_util

from dav2_jax.vit import ENCODERS

_ENCODER_BY_WIDTH = {spec.embed_dim: name for name, spec in ENCODERS.items()}


def _official_component(comp: str) -> str:
    if comp == "patch_embed_proj":
        return "patch_embed.proj"
    if comp.startswith("scratch_"):
        comp = "scratch." + comp[len("scratch_"):]
    return re.sub(r"_(\d+)$", r".\1", comp)


def official_key(path: tuple[str, ...]) -> str:
    """Flax parameter path (without the leading 'params') → official state-dict key."""
    *modules, leaf = path
    name = ".".join(_official_component(c) for c in modules)
    if leaf in ("kernel", "scale"):
        return f"{name}.weight"
    if leaf == "bias":
        return f"{name}.bias"
    if leaf in ("ls1", "ls2"):
        return f"{name}.{leaf}.gamma"
    return f"{name}.{leaf}"


_DENSE = {"qkv", "proj", "fc1", "fc2", "w12", "w3"}  # every other kernel is a Conv / ConvTranspose


def _dense_in_axes(path: tuple[str, ...]) -> int:
    return 2 if path[-2] == "proj" else 1


def flax_to_torch_layout(path: tuple[str, ...], value) -> np.ndarray:
    """One Flax leaf → the official tensor layout (NumPy float32)."""
    value = np.asarray(value, dtype=np.float32)
    if path[-1] == "kernel" and path[-2] not in _DENSE:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if path[-1] == "kernel":
        n_in = _dense_in_axes(path)
        rows = int(np.prod(value.shape[:n_in]))
        return np.ascontiguousarray(value.reshape(rows, -1).T)
    if path[-1] == "bias":
        return value.reshape(-1)
    return value


def torch_to_flax_layout(path: tuple[str, ...], value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One official tensor → the Flax leaf at `path` with `shape` (inverse of `flax_to_torch_layout`)."""
    value = np.asarray(value, dtype=np.float32)
    if path[-1] == "kernel" and path[-2] not in _DENSE:
        out = value.transpose(2, 3, 1, 0)
    elif path[-1] == "kernel":
        out = value.T.reshape(shape)
    else:
        out = value.reshape(shape)
    if out.shape != tuple(shape):
        raise ValueError(f"{official_key(path)}: expected shape {shape} after conversion, got {out.shape}")
    return np.ascontiguousarray(out)


def to_state_dict(params) -> dict[str, np.ndarray]:
    """Flax params ({'params': ...} or the inner tree) → official state dict (NumPy float32)."""
    params = params.get("params", params)
    flat = traverse_util.flatten_dict(params)
    return {official_key(path): flax_to_torch_layout(path, v) for path, v in flat.items()}


def from_state_dict(state_dict, template) -> dict:
    """Official state dict → Flax params shaped like `template` (a params tree or its `jax.eval_shape`).

    Raises ValueError naming the missing, unexpected or mis-shaped keys when the state dict is not this model.
    """
    template = template.get("params", template)
    flat = traverse_util.flatten_dict(template)
    wanted = {official_key(path): path for path in flat}
    missing = sorted(set(wanted) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(wanted))
    if missing or unexpected:
        raise ValueError(
            "not a Depth Anything V2 checkpoint of this size: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    out = {path: torch_to_flax_layout(path, state_dict[key], flat[path].shape) for key, path in wanted.items()}
    return {"params": traverse_util.unflatten_dict(out)}


def read_pth(path: str) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint file as float32 NumPy arrays, wrappers stripped (needs torch)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several unrelated types for a file that is not a checkpoint
        raise ValueError(f"{path!r} is not a readable PyTorch checkpoint: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, expected a state dict")
    return {k: v.float().numpy() for k, v in strip_wrappers(state).items() if isinstance(v, torch.Tensor)}


def strip_wrappers(state_dict: dict) -> dict:
    """Accept `{"model": sd}` / `{"state_dict": sd}` wrappers (metric train.py output), `{"teacher": sd}` (DINOv2
    training output) and DDP `module.` prefixes."""
    for wrapper in ("model", "state_dict", "teacher"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def detect_encoder(state_dict: dict) -> str:
    """The encoder size ("vits" ... "vitg") of an official DAv2 state dict, or ValueError if it is not one."""
    key = "pretrained.pos_embed"
    if key not in state_dict or "depth_head.scratch.output_conv1.weight" not in state_dict:
        sample = sorted(state_dict)[:3]
        raise ValueError(
            "not a Depth Anything V2 checkpoint: expected keys 'pretrained.pos_embed' and 'depth_head.*' "
            f"(official .pth layout), found e.g. {sample}"
        )
    width = int(state_dict[key].shape[-1])
    if width not in _ENCODER_BY_WIDTH:
        raise ValueError(f"unknown Depth Anything V2 encoder width {width}; expected one of {sorted(_ENCODER_BY_WIDTH)}")
    return _ENCODER_BY_WIDTH[width]
