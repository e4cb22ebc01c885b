"""Step 3 of the Marigold demo: distil the demo Marigold into a one-step consistency model on a CPU, no download.

    python launch/train.py --config configs/demo_vae.py --workdir runs/demo_vae                # step 1
    python launch/train.py --config configs/demo_marigold.py --workdir runs/demo_marigold      # step 2
    python launch/train.py --config configs/demo_marigold_lcm.py --workdir runs/demo_marigold_lcm
    python launch/compare_steps.py --run runs/demo_marigold --run runs/demo_marigold_lcm --steps 1 4

The same task and settings as configs/marigold_lcm.py (solver grid of 5, EMA target 0.95, pseudo-Huber 0.001,
AdamW with clipping 1.0), with the teacher the run of step 2 and its small networks, the data of the demo and a
learning rate for a few hundred steps. Held-out scoring: one LCM step, the same scenes as step 2.
"""

import runpy
from pathlib import Path

import ml_collections


def get_config():
    c = runpy.run_path(str(Path(__file__).with_name("demo_marigold.py")))["get_config"]()
    c.task = "marigold_lcm"  # marigold_jax.consistency.MarigoldLCMTask
    c.total_steps = 300  # optimizer steps
    c.eval_every = 100  # steps between held-out evaluations (and at step 0)
    c.checkpoint_every = 100  # steps between checkpoints

    c.model = ml_collections.ConfigDict()
    c.model.teacher = "runs/demo_marigold"  # the Marigold run of step 2 (its VAE is the run of step 1)
    c.model.modality = "depth"  # the teacher's
    c.model.num_ddim_timesteps = 5  # solver grid 199, 399, ..., 999 (skip 200)
    c.model.target_decay = 0.95  # EMA decay of the target network
    c.model.timestep_scaling = 10.0  # of c_skip / c_out
    c.model.huber_c = 0.001  # pseudo-Huber constant
    c.model.quantile = 0.02  # depth normalisation quantiles (2 % / 98 %)
    c.model.flip_p = 0.5  # horizontal flip probability
    c.model.normals_augmentation = True  # blur + jitter (normals only)
    c.model.dtype = "float32"  # compute dtype
    c.model.remat = False  # rematerialise blocks in the backward pass
    c.model.attention_impl = "heads_first"  # "xla" on TPU; "heads_first" is faster on CPU
    c.model.eval_steps = 1  # LCM steps of the held-out scoring

    c.optimizer.weight_decay = 0.01  # AdamW, as released (not on biases and norms)
    c.optimizer.clip_norm = 1.0  # as released
    c.optimizer.lr = ml_collections.ConfigDict(dict(unet=1e-4))  # diffusers' LCM default, for a short run
    c.data.sources.synthetic.seed = 13  # generated scenes other than the teacher's and the held-out set
    return c
