"""`load` and `save` for every Depth Anything V2 weight format we read and write.

Formats:
- "official": the upstream `.pth` state dict (`depth_anything_v2_vit{s,b,l,g}.pth`, metric
  `depth_anything_v2_metric_{hypersim,vkitti}_vit*.pth`); reading and writing it needs torch.
- "hf": a transformers folder (`config.json` + `model.safetensors`), e.g. `depth-anything/Depth-Anything-V2-Small-hf`.
- "jax": ours, a folder with `dav2_jax.json` (model configuration) + `params.safetensors` (Flax paths joined by
  "/"). Neither "hf" nor "jax" needs torch.
- "run": a training run directory of `launch/train.py` (read only; see `dav2_jax.runs`): the newest or a chosen
  step, its EMA weights when the run kept them, the model named by the config saved with the checkpoint.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.linen import unbox

from dav2_jax import convert_hf, convert_official, runs
from dav2_jax.model import DepthAnythingV2

FORMATS = ("official", "hf", "jax")
JAX_CONFIG = "dav2_jax.json"
JAX_PARAMS = "params.safetensors"
# Metric checkpoints hold the same tensors as relative ones; their range comes from the file name.
_METRIC_RANGES = {"hypersim": 20.0, "indoor": 20.0, "vkitti": 80.0, "outdoor": 80.0}


def param_template(model: DepthAnythingV2):
    """Shapes and dtypes of the model's parameters ({'params': ...} of ShapeDtypeStruct), without computing them."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 518, 518, 3), jnp.float32))
    return unbox(shapes)


def detect_format(path: str) -> str:
    """"official", "hf" or "jax" for a checkpoint path; ValueError if it is none of them."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if os.path.isdir(path):
        if runs.is_run_dir(path):
            return "run"
        if os.path.exists(os.path.join(path, JAX_CONFIG)):
            return "jax"
        if os.path.exists(os.path.join(path, "config.json")):
            return "hf"
        raise ValueError(
            f"{path!r} is a folder with neither {JAX_CONFIG} (our format), config.json (a transformers folder) nor "
            "checkpoints/STEP/ (a training run)"
        )
    if path.endswith((".pth", ".pt", ".safetensors")):
        return "official"
    raise ValueError(f"{path!r}: expected an official .pth file, a transformers folder or a dav2_jax folder")


def _metric_range_from_name(path: str) -> float | None:
    name = os.path.basename(os.path.normpath(path)).lower()
    if "metric" not in name:
        return None
    for key, value in _METRIC_RANGES.items():
        if key in name:
            return value
    raise ValueError(f"{path!r} looks like a metric checkpoint but names no scene type; pass max_depth (20 or 80)")


def _read_safetensors(path: str) -> dict:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float32) for k, v in load_file(path).items()}


def load(path: str, max_depth: float | None = None, dtype=jnp.float32, attention_impl: str = "auto",
         step: int | None = None):
    """Load any supported checkpoint → (DepthAnythingV2, params).

    max_depth: the metric range for official metric `.pth` files whose name does not say it (hypersim/indoor → 20,
    vkitti/outdoor → 80); transformers and our folders store it. dtype, attention_impl: see `DepthAnythingV2`.
    step: for a training run directory, the checkpoint step to read (default: the newest).
    """
    fmt = detect_format(path)
    if step is not None and fmt != "run":
        raise ValueError(f"step={step} applies to training run directories only; {path!r} is a {fmt!r} checkpoint")
    if fmt == "run":
        return _load_run(path, step, dtype, attention_impl)
    if fmt == "jax":
        with open(os.path.join(path, JAX_CONFIG)) as f:
            config = json.load(f)
        if config.get("format") != "dav2_jax":
            raise ValueError(f"{path}/{JAX_CONFIG} is not a dav2_jax model configuration")
        model = DepthAnythingV2(config["encoder"], config["max_depth"], dtype, attention_impl)
        flat = _read_safetensors(os.path.join(path, JAX_PARAMS))
        params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
        _check_same_tree(params, param_template(model), path)
        return model, jax.tree.map(jnp.asarray, params)
    if fmt == "hf":
        with open(os.path.join(path, "config.json")) as f:
            encoder, depth_range = convert_hf.model_from_hf_config(json.load(f))
        files = sorted(f for f in os.listdir(path) if re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", f))
        if not files:
            raise ValueError(f"{path!r}: transformers folder without model.safetensors")
        hf = {}
        for f in files:
            hf.update(_read_safetensors(os.path.join(path, f)))
        state_dict = convert_hf.hf_to_official(hf)
    else:
        state_dict = _read_safetensors(path) if path.endswith(".safetensors") else convert_official.read_pth(path)
        state_dict = convert_official.strip_wrappers(state_dict)
        encoder = convert_official.detect_encoder(state_dict)
        depth_range = max_depth if max_depth is not None else _metric_range_from_name(path)
    model = DepthAnythingV2(encoder, depth_range, dtype, attention_impl)
    params = convert_official.from_state_dict(state_dict, param_template(model))
    return model, jax.tree.map(jnp.asarray, params)


def _load_run(path, step, dtype, attention_impl):
    config = runs.run_config(path, step)
    model_config = config.get("model", {})
    if "encoder" not in model_config:
        raise ValueError(f"{path!r}: the run's config has no model.encoder; it is not a Depth Anything V2 run")
    model = DepthAnythingV2(model_config["encoder"], model_config.get("max_depth"), dtype, attention_impl)
    weights, _ = runs.read_weights(path, step)
    params = {"params": weights}
    _check_same_tree(params, param_template(model), path)
    return model, jax.tree.map(jnp.asarray, params)


def _check_same_tree(params, template, path):
    got = {k: v.shape for k, v in traverse_util.flatten_dict(params).items()}
    want = {k: v.shape for k, v in traverse_util.flatten_dict(template).items()}
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise ValueError(f"{path!r}: parameters do not match the configured model (differences e.g. {diff})")


def save(model: DepthAnythingV2, params, path: str, format: str = "jax") -> None:
    """Write `params` of `model` to `path` as "official" (.pth file), "hf" (folder) or "jax" (folder)."""
    from safetensors.numpy import save_file

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    params = jax.device_get(unbox(params))
    if format == "jax":
        os.makedirs(path, exist_ok=True)
        flat = {"/".join(k): np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
        save_file(flat, os.path.join(path, JAX_PARAMS))
        config = {"format": "dav2_jax", "version": 1, "encoder": model.encoder, "max_depth": model.max_depth}
        with open(os.path.join(path, JAX_CONFIG), "w") as f:
            json.dump(config, f, indent=2)
        return
    state_dict = convert_official.to_state_dict(params)
    if format == "hf":
        os.makedirs(path, exist_ok=True)
        save_file(convert_hf.official_to_hf(state_dict), os.path.join(path, "model.safetensors"),
                  metadata={"format": "pt"})
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(convert_hf.hf_config(model.encoder, model.max_depth), f, indent=2)
        return
    import torch

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, path)
