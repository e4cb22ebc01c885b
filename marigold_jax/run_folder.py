"""Marigold training runs as diffusers Marigold folders: what `marigold_jax.load(RUN_DIR)` and the export read.

A run directory of the `marigold` task holds the U-Net's weights (EMA when kept) and its config; the rest of a
Marigold folder comes from the run's `model.base`, read again at export time:
- an SD2 folder: its VAE, CLIP text encoder and tokenizer as they are (frozen during training), the U-Net config
  after the surgery;
- a `marigold_vae` run (the demo): its VAE, the U-Net config `model.unet` after the surgery, and a *placeholder*
  text encoder: the demo U-Net was trained on an all-zero empty-prompt embedding, so the folder gets a one-layer
  CLIP text model of width `cross_attention_dim` whose weights are all zero (its final LayerNorm, scale 0 and bias
  0, outputs exactly 0 for any input) and a CLIP tokenizer knowing only its two special tokens. diffusers
  tokenises "" as [BOS, EOS], encodes it to zeros [1, 2, D], and so conditions the U-Net exactly as in training.
The scheduler is the training one (the base's betas rescaled to zero terminal SNR, v-prediction) as the sampler of
the run's task: `export_scheduler`, one table keyed by the task name. Which tasks' runs are Marigold checkpoints, and
how their folder is assembled, is `RUN_FOLDERS` (task name -> builder). A `marigold_lcm` run (distillation) is its
teacher's folder with the student's U-Net and `LCMScheduler` on the teacher's training betas, whose
`original_inference_steps` is the distillation grid (its sampler depends on the run's `num_ddim_timesteps`, so it
is built from the run's task rather than from `SCHEDULER_EXPORTS`).
"""

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from marigold_jax import runs, surgery
from marigold_jax.clip import CLIPTextModel
from marigold_jax.consistency import MarigoldLCMTask
from marigold_jax.convert_diffusers import MarigoldFolder, abstract_params, load_folder, read_text_encoder
from marigold_jax.training import MarigoldTask
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.vae import AutoencoderKL


def _trailing_ddim(training_scheduler):
    """The released v1.1 sampler: DDIM on the training betas (zero terminal SNR), trailing spacing."""
    return dataclasses.replace(training_scheduler, kind="DDIMScheduler", timestep_spacing="trailing").to_dict()


# task name (the run's config["task"]) -> training SchedulerConfig -> the exported scheduler_config.json
SCHEDULER_EXPORTS = {"marigold": _trailing_ddim}
PIPELINES = {"depth": "MarigoldDepthPipeline", "normals": "MarigoldNormalsPipeline",
             "iid_appearance": "MarigoldIntrinsicsPipeline", "iid_lighting": "MarigoldIntrinsicsPipeline"}
# diffusers' target_properties of the released intrinsics checkpoints (how targets are decoded and shown)
TARGET_PROPERTIES = {
    "iid_appearance": {
        "target_names": ["albedo", "material"],
        "albedo": {"prediction_space": "srgb", "up_to_scale": False},
        "material": {"prediction_space": "stack", "sub_target_names": ["roughness", "metallicity", None]},
        "roughness": {"prediction_space": "linear", "up_to_scale": False},
        "metallicity": {"prediction_space": "linear", "up_to_scale": False},
    },
    "iid_lighting": {
        "target_names": ["albedo", "shading", "residual"],
        "albedo": {"prediction_space": "linear", "up_to_scale": False},
        "shading": {"prediction_space": "linear", "up_to_scale": True},
        "residual": {"prediction_space": "linear", "up_to_scale": True},
    },
}
RELEASED_STEPS, RELEASED_RESOLUTION = 4, 768  # the v1.1 checkpoints' default_denoising_steps / processing resolution
_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>"}


def export_scheduler(task_name, training_scheduler):
    """The `scheduler_config.json` (dict with `_class_name`) a run of `task_name` ships, from the schedule it trained
    on (`schedulers.SchedulerConfig`). Raises ValueError for a task whose runs are not Marigold checkpoints."""
    if task_name not in SCHEDULER_EXPORTS:
        raise ValueError(f"runs of task {task_name!r} are not Marigold checkpoints; Marigold runs come from the tasks "
                         f"{sorted(SCHEDULER_EXPORTS)}")
    return SCHEDULER_EXPORTS[task_name](training_scheduler)


def run_task_name(path, step=None):
    """The task that trained run directory `path` (its saved config's `task`), or None when it is no run."""
    return runs.run_config(path, step).get("task") if runs.is_run_dir(path) else None


def is_marigold_run(path):
    """True when `path` is a run directory of a task whose runs are Marigold checkpoints."""
    return run_task_name(path) in RUN_FOLDERS


def placeholder_text_encoder(hidden_size):
    """(config dict, {"params": zeros}, tokenizer files) of a CLIP text model that encodes anything to zeros
    [B, L, hidden_size]: the stand-in for a base without a text encoder (see the module docstring)."""
    config = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": 2,
              "hidden_size": hidden_size, "intermediate_size": hidden_size, "projection_dim": hidden_size,
              "num_hidden_layers": 1, "num_attention_heads": 1, "max_position_embeddings": 77,
              "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 1,
              "pad_token_id": 1, "torch_dtype": "float32"}
    shapes = abstract_params(CLIPTextModel.from_config(config))
    params = traverse_util.unflatten_dict({k: jnp.zeros(s, jnp.float32) for k, s in shapes.items()})
    encode = lambda obj: (json.dumps(obj, indent=2) + "\n").encode()
    tokenizer = {
        "vocab.json": encode({_SPECIAL_TOKENS["bos_token"]: 0, _SPECIAL_TOKENS["eos_token"]: 1}),
        "merges.txt": b"#version: 0.2\n",
        "special_tokens_map.json": encode(_SPECIAL_TOKENS),
        "tokenizer_config.json": encode({"tokenizer_class": "CLIPTokenizer", "model_max_length": 77,
                                         "do_lower_case": True, "errors": "replace", **_SPECIAL_TOKENS}),
    }
    return config, {"params": params}, tokenizer


def _text_encoder_of_base(task, attention_impl):
    """(config, CLIPTextModel, params, tokenizer files, empty-prompt embedding [1, 2, D]) of the base, or the
    placeholder when the base has no text encoder (the U-Net then trained on zeros)."""
    if task.from_run or not task.sd.has_text_encoder:
        config, params, tokenizer = placeholder_text_encoder(task.unet.cross_attention_dim)
        embedding = np.zeros((1, 2, task.unet.cross_attention_dim), np.float32)
        return config, CLIPTextModel.from_config(config, attention_impl=attention_impl), params, tokenizer, embedding
    return read_text_encoder(task.base, attention_impl)


def _model_index(task, scheduler_class):
    modality = task.modality
    index = {"_class_name": PIPELINES[modality], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", scheduler_class],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "default_denoising_steps": RELEASED_STEPS,
             "default_processing_resolution": 0 if task.from_run else RELEASED_RESOLUTION}
    if modality == "depth":
        index.update(prediction_type="depth", scale_invariant=True, shift_invariant=True)
    elif modality == "normals":
        index.update(prediction_type="normals", use_full_z_range=True)
    else:
        index.update(prediction_type="intrinsics", target_properties=TARGET_PROPERTIES[modality])
    return index


def _check_base(path, base):
    if not os.path.exists(base):
        raise FileNotFoundError(
            f"the run {path!r} was fine-tuned from model.base {base!r}, which does not exist from here; its VAE and "
            "text encoder are read from there: run from the directory training ran in (a relative base is relative "
            "to it), or make the base available at that path"
        )


def _fine_tuned_folder(path, config, weights, options):
    """The folder of a `marigold` run: the U-Net `weights` on the configs, VAE and text encoder of `model.base`."""
    model = dict(config.get("model", {}))
    _check_base(path, model.get("base", ""))
    task = MarigoldTask(**model)
    unet_config = {"_class_name": "UNet2DConditionModel",
                   **surgery.marigold_unet_config(task.sd.unet_config, task.n_targets)}
    vae_config = {"_class_name": "AutoencoderKL", **task.sd.vae_config}
    text_config, text_encoder, text_params, tokenizer, embedding = _text_encoder_of_base(
        task, options["attention_impl"])
    as_jax = lambda tree: {"params": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nn.unbox(tree))}
    scheduler_config = export_scheduler(config["task"], task.scheduler)
    return MarigoldFolder(
        unet=UNet2DConditionModel.from_config(unet_config, **options),
        unet_params=as_jax(weights),
        vae=AutoencoderKL.from_config(vae_config, **options),
        vae_params=as_jax(task.host_vae()),
        text_encoder=text_encoder,
        text_encoder_params=text_params,
        empty_text_embedding=np.asarray(embedding, np.float32),
        model_index=_model_index(task, scheduler_config["_class_name"]),
        scheduler_config=scheduler_config,
        unet_config=unet_config,
        vae_config=vae_config,
        text_encoder_config=text_config,
        tokenizer_files=tokenizer,
    )


def _distilled_folder(path, config, weights, options):
    """The folder of a `marigold_lcm` run: its teacher's folder (a `marigold` run's, or the diffusers folder) with the
    student's U-Net `weights`, `LCMScheduler` on the training betas over the distillation grid
    (`consistency.lcm_scheduler`) and one default step."""
    model = dict(config.get("model", {}))
    teacher = model.get("teacher", "")
    if not os.path.exists(teacher):
        raise FileNotFoundError(
            f"the run {path!r} was distilled from model.teacher {teacher!r}, which does not exist from here; its VAE "
            "and text encoder are read from there: run from the directory training ran in (a relative path is "
            "relative to it), or make the teacher available at that path"
        )
    task = MarigoldLCMTask(**model)
    folder = folder_from_run(teacher, **options) if runs.is_run_dir(teacher) else load_folder(teacher, **options)
    scheduler_config = task.sampler_config.to_dict()
    model_index = {**folder.model_index, "scheduler": ["diffusers", scheduler_config["_class_name"]],
                   "default_denoising_steps": 1}
    unet_params = {"params": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nn.unbox(weights))}
    return dataclasses.replace(folder, unet_params=unet_params, scheduler_config=scheduler_config,
                               model_index=model_index)


# task name -> (run directory, its saved config dict, its U-Net weights (numpy tree), module options) -> MarigoldFolder
RUN_FOLDERS = {"marigold": _fine_tuned_folder, "marigold_lcm": _distilled_folder}


def folder_from_run(path, step=None, use_ema=True, dtype=jnp.float32, remat=False, attention_impl="auto"):
    """A `MarigoldFolder` of the Marigold run directory `path` at checkpoint `step` (newest when None): its U-Net
    weights (EMA when kept and `use_ema`) and, by the run's task (`RUN_FOLDERS`), the rest: for `marigold` the VAE
    and text encoder of its base, the exported scheduler and the `model_index` of the pipeline of its modality.
    `dtype`, `remat`, `attention_impl` configure the modules."""
    config = runs.run_config(path, step)
    task_name = config.get("task")
    if task_name not in RUN_FOLDERS:
        raise ValueError(
            f"{path!r} is a run of task {task_name!r}, not a Marigold run (expected a run of the tasks "
            f"{sorted(RUN_FOLDERS)}); Depth Anything V2 runs load with dav2_jax.load"
        )
    weights, _ = runs.read_weights(path, step, use_ema)
    return RUN_FOLDERS[task_name](path, config, weights, dict(dtype=dtype, remat=remat, attention_impl=attention_impl))
