"""Step 2 of the Marigold demo: Marigold fine-tuning on generated scenes on a CPU, no download.

    python launch/train.py --config configs/demo_vae.py --workdir runs/demo_vae          # step 1
    python launch/train.py --config configs/demo_marigold.py --workdir runs/demo_marigold
    python launch/train.py --config configs/demo_marigold.py --workdir runs/demo_marigold_normals \\
        --config.model.modality=normals

The same task, surgery, noise, loss and evaluation as configs/marigold_depth.py, but the frozen VAE is the small one
of step 1 (`model.base`, a run directory) and the U-Net is a small one started from scratch, widened by the same
conv_in surgery. Held-out scoring: one trailing DDIM step, AbsRel / delta1 after least-squares alignment in depth
space (normals: angular errors).
"""

import runpy
from pathlib import Path

import ml_collections

SMALL_UNET = dict(
    in_channels=4, out_channels=4, block_out_channels=[64, 128, 128],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1, attention_head_dim=[2, 4, 4], cross_attention_dim=32, norm_num_groups=16,
    use_linear_projection=True,
)  # a diffusers UNet2DConditionModel config, SD2's layout at a fraction of its width


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "marigold"  # marigold_jax.training.MarigoldTask
    c.seed = 0  # initialisation, data order, augmentation and per-step rngs
    c.total_steps = 600  # optimizer steps
    c.batch_size = 16  # scenes per step
    c.log_every = 25  # steps between metrics.jsonl records
    c.eval_every = 150  # steps between held-out evaluations (and at step 0)
    c.checkpoint_every = 150  # steps between checkpoints
    c.keep_checkpoints = 2  # most recent checkpoints kept

    c.sharding = "dp"  # "dp" | "fsdp" | "fsdp_tp"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # all devices data-parallel

    c.model = ml_collections.ConfigDict()
    c.model.modality = "depth"  # "depth" | "normals" | "iid_appearance" | "iid_lighting"
    c.model.base = "runs/demo_vae"  # the autoencoder run of step 1 (or a Stable Diffusion 2 folder)
    c.model.unet = SMALL_UNET  # U-Net config for a run-directory base (an SD2 folder brings its own)
    c.model.multi_res_noise = 0.9  # annealed multi-resolution noise strength (0: Gaussian)
    c.model.quantile = 0.02  # depth normalisation quantiles (2 % / 98 %)
    c.model.flip_p = 0.5  # horizontal flip probability
    c.model.normals_augmentation = True  # released blur (768-row images only) and colour jitter for normals
    c.model.dtype = "float32"  # compute dtype
    c.model.remat = False  # rematerialise blocks in the backward pass
    c.model.attention_impl = "heads_first"  # "xla" on TPU; "heads_first" is faster on CPU

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # "adamw" (Adam when weight_decay is 0) | "sgd"
    c.optimizer.b1 = 0.9  # Adam beta1
    c.optimizer.b2 = 0.999  # Adam beta2
    c.optimizer.eps = 1e-8  # Adam epsilon
    c.optimizer.weight_decay = 0.0  # none, as released
    c.optimizer.clip_norm = 0.0  # none, as released
    c.optimizer.accumulate_steps = 1  # micro-batches per step (released: 16 of 2)
    c.optimizer.ema_decay = 0.0  # none, as released
    c.optimizer.lr = ml_collections.ConfigDict(dict(unet=3e-4))  # from scratch: 10x the released fine-tuning lr

    step_1 = runpy.run_path(str(Path(__file__).with_name("demo_vae.py")))["get_config"]()
    c.schedule = step_1.schedule  # cosine from 50 warm-up steps down to 5 %
    c.data = step_1.data  # the same loader settings, other scenes:
    c.data.sources.synthetic.seed = 11  # generated scenes (image, depth, valid, normals, albedo, shading)

    c.eval = ml_collections.ConfigDict()
    c.eval.source = ml_collections.ConfigDict(
        dict(reader="synthetic", num_samples=128, height=32, width=32, seed=1_000_003, kind="mixed")
    )  # held-out scenes of a seed never trained on
    c.eval.batch_size = 32  # global evaluation batch
    c.eval.num_samples = 128  # held-out examples scored
    c.eval.min_depth = 1e-3  # metres: pixels outside [min_depth, max_depth] are not scored
    c.eval.max_depth = 1000.0
    return c
