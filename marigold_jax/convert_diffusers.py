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


def host_params_from_torch(model, state_dict, what):
    """A PyTorch state dict (name → numpy array) → {Flax path tuple: numpy array in Flax layout} for `model`.

    Arrays stay as stored (memory-mapped views, any float dtype): a caller reads only the slices it needs.
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
        flat[path] = array
    if missing or state or mismatched:
        raise ValueError(
            f"{what} weights do not match its config: {len(missing)} missing {missing[:5]}, {len(state)} unexpected "
            f"{sorted(state)[:5]}, {len(mismatched)} with another shape {mismatched[:5]}. Check that config.json "
            "and the safetensors file come from the same model."
        )
    return flat


def params_from_torch(model, state_dict, what):
    """A PyTorch state dict (name → numpy array) → `{"params": tree}` of float32 jax arrays for `model`.
    Raises ValueError naming missing, unexpected and mis-shaped tensors. `what` names the component in errors."""
    flat = host_params_from_torch(model, state_dict, what)
    return {"params": traverse_util.unflatten_dict({k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})}


def params_to_torch(params):
    """`{"params": tree}` (or the tree) → PyTorch state dict of contiguous float32 numpy arrays."""
    tree = nn.unbox(params.get("params", params))
    return {
        torch_name(path): np.ascontiguousarray(to_torch_layout(path[-1], np.asarray(value, np.float32)))
        for path, value in traverse_util.flatten_dict(tree).items()
    }


def read_safetensors(path):
    """A safetensors file → {name: numpy array} (memory-mapped; float16/bfloat16 kept as stored)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    data = np.memmap(path, np.uint8, "r", offset=8 + n)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(
                f"{path}: tensor {name} has dtype {info['dtype']}, expected one of {sorted(_SAFETENSORS_DTYPES)}"
            )
        start, end = info["data_offsets"]
        tensors[name] = data[start:end].view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def _weights_file(folder, component):
    """The safetensors file (or shard index) of a component folder, or None."""
    stem = _WEIGHT_STEMS[component]
    for name in (f"{stem}.safetensors", f"{stem}.safetensors.index.json", f"{stem}.fp16.safetensors",
                 f"{stem}.fp16.safetensors.index.json"):
        if os.path.isfile(os.path.join(folder, component, name)):
            return os.path.join(folder, component, name)
    return None


def read_component(folder, component):
    """The state dict {name: memory-mapped numpy array} of `folder/component` ("unet", "vae", "text_encoder")."""
    path = _weights_file(folder, component)
    if path is None:
        raise FileNotFoundError(
            f"{folder}/{component} has no {_WEIGHT_STEMS[component]}.safetensors (or shard index); weights must be "
            "safetensors (re-save a .bin checkpoint with diffusers `save_pretrained(path, safe_serialization=True)`)"
        )
    if not path.endswith(".index.json"):
        return read_safetensors(path)
    with open(path, encoding="utf-8") as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
        tensors.update(read_safetensors(os.path.join(os.path.dirname(path), shard)))
    return tensors


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@dataclasses.dataclass
class MarigoldFolder:
    """The content of a diffusers Marigold folder as Flax modules and float32 parameters (`{"params": tree}` of jax
    arrays, without partitioning boxes), the configs as dicts, the tokenizer files as bytes, and the empty-prompt
    embedding computed once at load time."""

    unet: UNet2DConditionModel
    unet_params: dict
    vae: AutoencoderKL
    vae_params: dict
    text_encoder: CLIPTextModel
    text_encoder_params: dict
    empty_text_embedding: np.ndarray  # [1, 2, D] float32: the CLIP encoding of "" ([BOS, EOS])
    model_index: dict  # model_index.json (pipeline class, prediction_type, defaults, target_properties)
    scheduler_config: dict  # scheduler/scheduler_config.json (with `_class_name`)
    unet_config: dict
    vae_config: dict
    text_encoder_config: dict
    tokenizer_files: dict  # file name → bytes, written back unchanged


def _check_folder(path):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a folder; expected a diffusers Marigold folder (model_index.json, "
                                "unet/, vae/, scheduler/, text_encoder/, tokenizer/)")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        raise FileNotFoundError(
            f"{path} is not a diffusers folder: model_index.json is missing (expected model_index.json, unet/, vae/, "
            "scheduler/, text_encoder/, tokenizer/ as `save_pretrained` writes them)"
        )
    model_index = _read_json(os.path.join(path, "model_index.json"))
    name = model_index.get("_class_name", "")
    if not name.startswith("Marigold"):
        raise ValueError(
            f"{path} holds a {name or 'pipeline without _class_name'}, not a Marigold pipeline (expected "
            f"model_index.json `_class_name` one of {list(_MARIGOLD_PIPELINES)})"
        )
    missing = [f for f in ("unet/config.json", "vae/config.json", "text_encoder/config.json",
                           "scheduler/scheduler_config.json") if not os.path.isfile(os.path.join(path, f))]
    for component, stem in _WEIGHT_STEMS.items():
        if _weights_file(path, component) is None:
            missing.append(f"{component}/{stem}.safetensors")
    if not os.path.isdir(os.path.join(path, "tokenizer")):
        missing.append("tokenizer/")
    if missing:
        raise FileNotFoundError(
            f"{path} is not a complete diffusers Marigold folder: missing {', '.join(missing)}. Weights must be "
            "safetensors (re-save a .bin checkpoint with diffusers `save_pretrained(path, safe_serialization=True)`)."
        )
    return model_index


def load_folder(path, dtype=jnp.float32, remat=False, attention_impl="auto"):
    """Read a diffusers Marigold folder without torch → `MarigoldFolder`. `dtype` (compute), `remat` and
    `attention_impl` configure the U-Net and the VAE; parameters are float32 whatever the stored precision."""
    model_index = _check_folder(path)
    configs = {c: _read_json(os.path.join(path, c, "config.json")) for c in _WEIGHT_STEMS}
    options = dict(dtype=dtype, remat=remat, attention_impl=attention_impl)
    unet = UNet2DConditionModel.from_config(configs["unet"], **options)
    vae = AutoencoderKL.from_config(configs["vae"], **options)
    text_encoder = CLIPTextModel.from_config(configs["text_encoder"], attention_impl=attention_impl)
    params = {
        c: params_from_torch(m, read_component(path, c), f"{path}/{c}")
        for c, m in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))
    }
    tokenizer_dir = os.path.join(path, "tokenizer")
    tokenizer_files = read_tokenizer_files(tokenizer_dir)
    embedding = _encode_empty_prompt(text_encoder, params["text_encoder"], tokenizer_dir)
    return MarigoldFolder(
        unet=unet,
        unet_params=params["unet"],
        vae=vae,
        vae_params=params["vae"],
        text_encoder=text_encoder,
        text_encoder_params=params["text_encoder"],
        empty_text_embedding=embedding,
        model_index=model_index,
        scheduler_config=_read_json(os.path.join(path, "scheduler", "scheduler_config.json")),
        unet_config=configs["unet"],
        vae_config=configs["vae"],
        text_encoder_config=configs["text_encoder"],
        tokenizer_files=tokenizer_files,
    )


def read_tokenizer_files(tokenizer_dir):
    """The files of a `tokenizer/` folder, {name: bytes}, to be written back unchanged."""
    files = {}
    for name in sorted(os.listdir(tokenizer_dir)):
        if os.path.isfile(os.path.join(tokenizer_dir, name)):
            with open(os.path.join(tokenizer_dir, name), "rb") as f:
                files[name] = f.read()
    return files


def _encode_empty_prompt(text_encoder, params, tokenizer_dir):
    with jax.default_matmul_precision("highest"):
        embedding = text_encoder.apply(params, jnp.asarray(empty_prompt_ids(tokenizer_dir)))
    return np.asarray(embedding, np.float32)


def read_text_encoder(path, attention_impl="auto"):
    """A diffusers folder's `text_encoder/` and `tokenizer/`, without torch → (config dict, `CLIPTextModel`,
    `{"params": tree}`, tokenizer files {name: bytes}, the empty-prompt embedding float32 [1, 2, hidden_size]
    encoded as diffusers Marigold does (no padding: [BOS, EOS]))."""
    missing = [f for f in ("text_encoder/config.json", "tokenizer") if not os.path.exists(os.path.join(path, f))]
    if _weights_file(path, "text_encoder") is None:
        missing.append("text_encoder/model.safetensors")
    if missing:
        raise FileNotFoundError(
            f"{path} lacks {', '.join(missing)}: expected a diffusers folder with a CLIP text encoder"
        )
    config = _read_json(os.path.join(path, "text_encoder", "config.json"))
    text_encoder = CLIPTextModel.from_config(config, attention_impl=attention_impl)
    params = params_from_torch(text_encoder, read_component(path, "text_encoder"), f"{path}/text_encoder")
    tokenizer_dir = os.path.join(path, "tokenizer")
    embedding = _encode_empty_prompt(text_encoder, params, tokenizer_dir)
    return config, text_encoder, params, read_tokenizer_files(tokenizer_dir), embedding


def empty_prompt_embedding(path):
    """The CLIP encoding of the empty prompt from a diffusers folder's `text_encoder/` and `tokenizer/` alone, as
    diffusers Marigold computes it (no padding: [BOS, EOS]), without torch → float32 [1, 2, hidden_size]."""
    return read_text_encoder(path)[-1]


def save_folder(folder, path):
    """Write `folder` (a `MarigoldFolder`, e.g. with fine-tuned `unet_params`) as a diffusers Marigold folder that
    `diffusers.Marigold*Pipeline.from_pretrained(path)` loads: float32 safetensors with diffusers/transformers key
    names, the configs, the scheduler config, model_index.json and the tokenizer files. Each parameter tree is
    checked against its config first."""
    from safetensors.numpy import save_file

    components = (
        ("unet", UNet2DConditionModel.from_config(folder.unet_config), folder.unet_params, folder.unet_config),
        ("vae", AutoencoderKL.from_config(folder.vae_config), folder.vae_params, folder.vae_config),
        ("text_encoder", CLIPTextModel.from_config(folder.text_encoder_config), folder.text_encoder_params,
         folder.text_encoder_config),
    )
    for component, model, params, _ in components:
        expected = {torch_name(p): shape for p, shape in abstract_params(model).items()}
        tree = nn.unbox(params.get("params", params))
        found = {torch_name(p): np.shape(v) for p, v in traverse_util.flatten_dict(tree).items()}
        if found != expected:
            wrong = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
            raise ValueError(
                f"{component} parameters do not match {component}_config: {len(wrong)} tensors differ (Flax layout: "
                f"{', '.join(f'{k}: config {expected.get(k)}, params {found.get(k)}' for k in wrong[:4])}); "
                f"update {component}_config together with the parameters"
            )
    os.makedirs(path, exist_ok=True)
    for component, _, params, config in components:
        os.makedirs(os.path.join(path, component), exist_ok=True)
        _write_json(os.path.join(path, component, "config.json"), config)
        state = params_to_torch(params)
        if component == "text_encoder":  # the hub layout, which transformers 4 and 5 both read
            state = {f"text_model.{k}": v for k, v in state.items()}
        save_file(state, os.path.join(path, component, f"{_WEIGHT_STEMS[component]}.safetensors"),
                  metadata={"format": "pt"})
        del state
    os.makedirs(os.path.join(path, "scheduler"), exist_ok=True)
    _write_json(os.path.join(path, "scheduler", "scheduler_config.json"), folder.scheduler_config)
    tokenizer_dir = os.path.join(path, "tokenizer")
    shutil.rmtree(tokenizer_dir, ignore_errors=True)
    os.makedirs(tokenizer_dir)
    for name, content in folder.tokenizer_files.items():
        with open(os.path.join(tokenizer_dir, name), "wb") as f:
            f.write(content)
    _write_json(os.path.join(path, "model_index.json"), folder.model_index)


def _write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
