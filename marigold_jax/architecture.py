"""The published configurations of Stable Diffusion 2 (768-v) and of Marigold v1.1, without any weights.

For work that needs the networks' shapes but not their weights, such as compiling a train step ahead of time for a
TPU slice (`launch/aot.py`) on a machine where the checkpoints were never downloaded. `write_folder` writes the
configuration files of `stabilityai/stable-diffusion-2` (model.base of the fine-tuning configs) or of a released
`prs-eth/marigold-*-v1-1` folder (model.teacher of distillation); loading weights from such a folder fails loudly.
"""

import json
import os

from marigold_jax import run_folder, surgery, targets

# stabilityai/stable-diffusion-2 unet/config.json (the 768-v U-Net, 4 latent channels in and out)
SD2_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
    "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 96,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "use_linear_projection": True,
    "upcast_attention": True,
}
# stabilityai/stable-diffusion-2 vae/config.json
SD2_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 768, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def _write(path, part, obj):
    os.makedirs(os.path.dirname(os.path.join(path, part)), exist_ok=True)
    with open(os.path.join(path, part), "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)


def write_folder(path, modality=None):
    """Write configuration files only: SD2's (modality None) or a Marigold v1.1 folder's for `modality` ("depth",
    "normals", "iid_appearance", "iid_lighting": the widened U-Net, the pipeline class, the trailing zero-SNR DDIM
    sampler). Returns `path`."""
    _write(path, "vae/config.json", SD2_VAE)
    if modality is None:
        _write(path, "model_index.json", {"_class_name": "StableDiffusionPipeline"})
        _write(path, "unet/config.json", SD2_UNET)
        _write(path, "scheduler/scheduler_config.json", surgery.SD2_SCHEDULER)
        return path
    modality = targets.check_modality(modality)
    index = {"_class_name": run_folder.PIPELINES[modality]}
    if modality in run_folder.TARGET_PROPERTIES:
        index["target_properties"] = run_folder.TARGET_PROPERTIES[modality]
    _write(path, "model_index.json", index)
    _write(path, "unet/config.json", surgery.marigold_unet_config(SD2_UNET, len(targets.TARGET_NAMES[modality])))
    training = surgery.training_scheduler(surgery.SD2_SCHEDULER)
    _write(path, "scheduler/scheduler_config.json", run_folder.export_scheduler("marigold", training))
    return path
