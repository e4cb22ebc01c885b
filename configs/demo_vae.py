"""Step 1 of the Marigold demo: a small KL autoencoder trained from scratch on generated scenes, no download.

    python launch/train.py --config configs/demo_vae.py --workdir runs/demo_vae

It stands in for Stable Diffusion 2's VAE, which Marigold keeps frozen: it learns to reconstruct RGB images, depth
normalised to [-1, 1] (three channels) and surface normals, at 32 x 32 pixels with 8 x 8 x 4 latents (a downsampling factor of 4: SD's is 8). Then
configs/demo_marigold.py fine-tunes a latent U-Net on top of it.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "marigold_vae"  # marigold_jax.vae_training.AutoencoderTask
    c.seed = 0  # initialisation, data order, augmentation and per-step rngs
    c.total_steps = 800  # optimizer steps
    c.batch_size = 8  # scenes per step (each gives 3 images: RGB, depth, normals)
    c.log_every = 25  # steps between metrics.jsonl records
    c.eval_every = 0  # no held-out scoring: the autoencoder predicts no depth
    c.checkpoint_every = 200  # steps between checkpoints
    c.keep_checkpoints = 2  # most recent checkpoints kept

    c.sharding = "dp"  # "dp" | "fsdp" | "fsdp_tp"
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))  # all devices data-parallel

    c.model = ml_collections.ConfigDict()
    c.model.block_out_channels = (16, 32, 64)  # 2 downsamplings: latents at 1/4 (SD's VAE: 4 levels, 1/8)
    c.model.layers_per_block = 1  # residual blocks per level
    c.model.groups = 8  # GroupNorm groups
    c.model.kl_weight = 1e-4  # weight of the KL term against the reconstruction MSE
    c.model.modalities = ("depth", "normals")  # targets reconstructed besides RGB
    c.model.flip_p = 0.5  # horizontal flip probability
    c.model.dtype = "float32"  # compute dtype
    c.model.attention_impl = "heads_first"  # "xla" on TPU; "heads_first" is faster on CPU
    c.model.remat = False  # rematerialise blocks in the backward pass

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # "adamw" | "sgd"
    c.optimizer.b1 = 0.9  # Adam beta1
    c.optimizer.b2 = 0.999  # Adam beta2
    c.optimizer.eps = 1e-8  # Adam epsilon
    c.optimizer.weight_decay = 0.0  # decoupled weight decay
    c.optimizer.clip_norm = 1.0  # global gradient-norm clip (0: off)
    c.optimizer.accumulate_steps = 1  # micro-batches per step
    c.optimizer.ema_decay = 0.0  # EMA of parameters (0: off)
    c.optimizer.lr = ml_collections.ConfigDict(dict(vae=1e-3))  # peak learning rate of the one group

    c.schedule = ml_collections.ConfigDict()
    c.schedule.kind = "cosine"  # "constant" | "poly" | "cosine" | "exponential"
    c.schedule.warmup_steps = 50  # linear warm-up from 0
    c.schedule.power = 1.0  # poly exponent (unused here)
    c.schedule.end_factor = 0.05  # cosine: final lr / peak lr
    c.schedule.decay_rate = 0.5  # exponential (unused here)
    c.schedule.decay_steps = 1_000  # exponential (unused here)

    c.data = ml_collections.ConfigDict()
    c.data.sources = ml_collections.ConfigDict({
        "synthetic": dict(reader="synthetic", weight=1.0, num_samples=24_000, height=32, width=32, seed=7,
                          kind="mixed"),
    })  # generated scenes; seeds differ from the Marigold demo's held-out set
    c.data.worker_count = 0  # Grain worker processes (0: read in the main process)
    c.data.read_threads = 1  # reader threads
    c.data.read_buffer = 32  # prepared examples buffered
    c.data.max_bad_fraction = 0.01  # stop if more samples than this are unusable
    return c
