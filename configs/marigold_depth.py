"""Marigold depth v1.1 as released: Stable Diffusion 2 fine-tuned on Hypersim (0.9) and Virtual KITTI 2 (0.1).

    python launch/train.py --config configs/marigold_depth.py --workdir DIR \\
        --config.model.base=/models/stable-diffusion-2 \\
        --config.data.sources.hypersim.root=/data/hypersim --config.data.sources.vkitti2.root=/data/vkitti2

Released recipe: the whole U-Net trained (VAE and text encoder frozen), zero-terminal-SNR DDPM, v-prediction,
annealed multi-resolution noise 0.9, latent MSE masked by 8 x 8 pooling of invalid pixels, horizontal flips, Adam
(no weight decay, no clipping, no EMA) at 3e-5, effective batch 32, 100 warm-up steps then exponential decay to
1 % at 25K steps, 30K steps in all. The released trainer runs batches of 2 with 16 accumulation steps on one GPU;
here the 32 samples of a step are split over the devices (FSDP on a v5p slice). Hypersim trains at 480 x 640 and
Virtual KITTI at its 352 x 1216 benchmark crop, each global batch from one of them (two compiled step programs).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "marigold"  # marigold_jax.training.MarigoldTask
    c.seed = 2024  # released init_seed / dataloader seed
    c.total_steps = 30_000  # released max_iter ("usually converges at around 20k")
    c.batch_size = 32  # released effective batch (2 x 16 accumulation)
    c.log_every = 50  # steps between metrics.jsonl records
    c.eval_every = 500  # released validation_period
    c.checkpoint_every = 500  # steps between checkpoints
    c.keep_checkpoints = 3  # most recent checkpoints kept

    c.sharding = "fsdp"  # "dp" | "fsdp" | "fsdp_tp": U-Net and optimizer state sharded over the slice
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))  # all chips on the fsdp axis

    c.model = ml_collections.ConfigDict()
    c.model.modality = "depth"  # "depth" | "normals" | "iid_appearance" | "iid_lighting"
    c.model.base = "/models/stable-diffusion-2"  # stabilityai/stable-diffusion-2 diffusers folder (768-v)
    c.model.unet = None  # only for a run-directory base (the demo); SD2 brings its own U-Net config
    c.model.multi_res_noise = 0.9  # released strength, annealed by t / 1000
    c.model.quantile = 0.02  # depth normalisation quantiles (2 % / 98 %)
    c.model.flip_p = 0.5  # released lr_flip_p
    c.model.normals_augmentation = True  # blur + jitter (normals only)
    c.model.dtype = "bfloat16"  # compute dtype on TPU (parameters, loss and optimizer in float32)
    c.model.remat = True  # rematerialise U-Net blocks: activations of 480 x 640 inputs dominate memory
    c.model.attention_impl = "xla"  # fused attention kernels on TPU

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"  # Adam with weight_decay 0 (torch defaults)
    c.optimizer.b1 = 0.9  # Adam beta1
    c.optimizer.b2 = 0.999  # Adam beta2
    c.optimizer.eps = 1e-8  # Adam epsilon
    c.optimizer.weight_decay = 0.0  # none, as released
    c.optimizer.clip_norm = 0.0  # none, as released
    c.optimizer.accumulate_steps = 1  # released 16 x 2 on one GPU; on a slice the 32 fit in one step
    c.optimizer.ema_decay = 0.0  # none, as released
    c.optimizer.lr = ml_collections.ConfigDict(dict(unet=3e-5))  # released lr

    c.schedule = ml_collections.ConfigDict()
    c.schedule.kind = "iter_exponential"  # released IterExponential
    c.schedule.warmup_steps = 100  # lr = step / 100 first (lr 0 on the first update)
    c.schedule.final_ratio = 0.01  # lr x 0.01 at decay_end and after
    c.schedule.decay_end = 25_000  # released lr_scheduler total_iter

    c.data = ml_collections.ConfigDict()
    c.data.sources = ml_collections.ConfigDict({
        "hypersim": dict(reader="hypersim", root="/data/hypersim", weight=0.9, resize=(480, 640),
                         resize_method="nearest"),  # released: every raster nearest-resized after normalisation
        "vkitti2": dict(reader="vkitti2", root="/data/vkitti2", weight=0.1, crop=(352, 1216)),  # KITTI crop
    })  # released prob_ls [0.9, 0.1]
    c.data.batch_per_source = True  # each global batch from one source: one compiled program per source shape
    c.data.worker_count = 8  # Grain worker processes per host
    c.data.read_threads = 4  # reader threads per process
    c.data.read_buffer = 64  # prepared examples buffered per process
    c.data.max_bad_fraction = 0.01  # stop if more samples than this are unusable

    c.eval = ml_collections.ConfigDict()
    c.eval.source = ml_collections.ConfigDict(
        dict(reader="synthetic", num_samples=80, height=480, width=640, seed=1_000_003, kind="mixed")
    )  # held-out set (released: hypersim_depth_val_small_80); any reader works
    c.eval.batch_size = 16  # global evaluation batch
    c.eval.num_samples = 80  # held-out examples scored
    c.eval.min_depth = 1e-5  # metres: pixels outside [min_depth, max_depth] are not scored
    c.eval.max_depth = 65.0  # Hypersim's valid range
    return c
