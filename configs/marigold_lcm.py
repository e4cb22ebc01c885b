"""Marigold-LCM as released: latent consistency distillation of a trained Marigold depth model.

    python launch/train.py --config configs/marigold_lcm.py --workdir DIR \\
        --config.model.teacher=/models/marigold-depth-v1-1 \\
        --config.data.sources.hypersim.root=/data/hypersim --config.data.sources.vkitti2.root=/data/vkitti2
    ... --config.model.modality=normals --config.model.teacher=/models/marigold-normals-v1-1  # the same for normals

The released trainer (the Marigold authors' LCM pull request) inherits everything of the depth fine-tuning config
(configs/marigold_depth.py: data, lr 3e-5, IterExponential schedule, 30K steps, batch 2 x 16) and adds: the teacher
is a trained Marigold checkpoint (`model.teacher`: a diffusers folder or a `marigold` run directory), the student
starts from it, the target network is the student's EMA with decay 0.95, the skipping-step DDIM solver on a grid of
5 timesteps (skip 200), boundary conditions with timestep scaling 10, pseudo-Huber loss c = 0.001, AdamW (PyTorch's
default weight decay 0.01) with gradient clipping at 1.0, plain Gaussian noise, no guidance. Other modalities
distil the same way: set model.modality and the teacher (and the data sources of that modality's config).
"""

import runpy
from pathlib import Path

import ml_collections


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("marigold_depth.py")))["get_config"]()
    c.task = "marigold_lcm"  # marigold_jax.consistency.MarigoldLCMTask

    c.model = ml_collections.ConfigDict()
    c.model.teacher = "/models/marigold-depth-v1-1"  # trained Marigold: diffusers folder or `marigold` run directory
    c.model.modality = "depth"  # the teacher's: "depth" | "normals" | "iid_appearance" | "iid_lighting"
    c.model.num_ddim_timesteps = 5  # released: solver grid 199, 399, ..., 999 (skip 200)
    c.model.target_decay = 0.95  # released ema_decay of the target network
    c.model.timestep_scaling = 10.0  # released timestep_scaling_factor of c_skip / c_out
    c.model.huber_c = 0.001  # released pseudo-Huber constant
    c.model.quantile = 0.02  # depth normalisation quantiles (2 % / 98 %), as fine-tuning
    c.model.flip_p = 0.5  # inherited lr_flip_p
    c.model.normals_augmentation = True  # blur + jitter (normals only)
    c.model.dtype = "bfloat16"  # compute dtype on TPU (parameters, loss and optimizer in float32)
    c.model.remat = True  # rematerialise U-Net blocks (three U-Nets run per micro-batch)
    c.model.attention_impl = "xla"  # fused attention kernels on TPU
    c.model.eval_steps = 1  # LCM steps of the held-out scoring

    c.optimizer.weight_decay = 0.01  # released AdamW (PyTorch default; here not on biases and norms)
    c.optimizer.clip_norm = 1.0  # released max_grad_norm
    return c
