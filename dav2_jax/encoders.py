"""Encoder weights from any checkpoint, and placing host weights straight into a sharded layout.

Depth Anything V2's encoder (`pretrained`) is a DINOv2 ViT. Its weights can come from a DINOv2 checkpoint (the
paper's initialisation and the students' frozen feature model) or from a Depth Anything V2 checkpoint or training
run (a relative model that starts metric fine-tuning; the CPU demos' stand-in for DINOv2).
"""

import jax
import numpy as np


def encoder_weights(path):
    """NumPy params of `DinoVisionTransformer` (the tree under 'params') and the encoder size, from `path`.

    path: a Depth Anything V2 training run or dav2_jax folder, an official or transformers Depth Anything V2
    checkpoint (its `pretrained` encoder), or else a DINOv2 checkpoint (see `dav2_jax.convert_dinov2`).
    Returns (encoder name, params).
    """
    from dav2_jax.checkpoints import detect_format, load
    from dav2_jax.convert_dinov2 import load_dinov2

    try:
        dav2 = detect_format(path) in ("run", "jax")
    except ValueError:
        dav2 = False
    if not dav2:
        try:
            return load_dinov2(path)
        except ValueError as e:
            if "Depth Anything V2 checkpoint" not in str(e):
                raise
    model, params = load(path)
    return model.encoder, jax.device_get(params["params"]["pretrained"])


def with_encoder(params, path, encoder):
    """Depth Anything V2 params (the tree under 'params', unboxed) with `pretrained` replaced by `path`'s encoder.

    ValueError when `path` holds another encoder size than `encoder`.
    """
    found, weights = encoder_weights(path)
    if found != encoder:
        raise ValueError(f"{path!r} holds a {found} encoder but the task trains {encoder}; set "
                         "--config.model.encoder to match or choose another checkpoint")
    current = params["pretrained"]
    return {**params, "pretrained": jax.tree.map(lambda old, new: np.asarray(new, old.dtype), current, weights)}


def place(abstract, weights, source):
    """Host arrays `weights` → device arrays with `abstract`'s shapes, dtypes and shardings, each device reading only
    its own slice (`jax.make_array_from_callback`), so nothing is initialised first or held twice on devices.

    abstract: a pytree of `jax.ShapeDtypeStruct` with `.sharding`; source: named in errors.
    """
    leaves, treedef = jax.tree.flatten(abstract)
    try:
        arrays = treedef.flatten_up_to(weights)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source!r}: its encoder's parameter tree differs from the model's ({e})") from None
    placed = []
    for want, array in zip(leaves, arrays):
        array = np.asarray(array)
        if array.shape != want.shape:
            raise ValueError(f"{source!r}: a parameter has shape {array.shape}, the model needs {want.shape}; use "
                             "the checkpoint of the model's encoder size")
        array = array.astype(want.dtype)
        placed.append(jax.make_array_from_callback(want.shape, want.sharding, lambda index, a=array: a[index]))
    return jax.tree.unflatten(treedef, placed)
