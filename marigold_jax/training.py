"""Marigold fine-tuning as a task of the shared training loop (the released v1.1 recipe).

Per micro-batch: the frozen VAE encodes the image and the target images (posterior mean x scaling factor) inside
the jitted step; timesteps are uniform over 0..999; the target latents are noised with annealed multi-resolution
noise on the zero-terminal-SNR DDPM schedule; the trainable U-Net sees cat([image latent, noisy target latents]),
the timestep and the empty-prompt embedding, and predicts v; the loss is the MSE to the v-target over the latent
elements left valid by an 8 x 8 max-pool of invalid pixels (depth and IID appearance; normals and IID lighting
unmasked). `predict` is the released validation: one trailing DDIM step from Gaussian noise, decoded.

`model.base` is either a Stable Diffusion 2 diffusers folder (U-Net, VAE, text encoder: the real recipe) or a run
directory of the `marigold_vae` task (the demo: its VAE, a fresh U-Net of config `unet`, SD2's noise schedule, and an
all-zero constant in place of the empty-prompt embedding, which is a constant too). Either way the U-Net goes through
the same surgery.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from marigold_jax import augment, objective, runs, sampling, schedulers, surgery, targets
from marigold_jax.convert_diffusers import empty_prompt_embedding
from marigold_jax.vae import AutoencoderKL
from marigold_jax.vae_training import AutoencoderTask

MASKED = {"depth": True, "normals": False, "iid_appearance": True, "iid_lighting": False}
PREDICTION_KINDS = {"depth": "depth", "normals": "normals"}  # held-out scoring exists for these


def place_host(abstract, host, source):
    """Host arrays `host` placed as the tree of `jax.ShapeDtypeStruct` (with `.sharding`) `abstract` says, each
    device reading its own shard; `source` (the file or folder they came from) names the culprit of a mismatch."""

    def place(a, x):
        if tuple(np.shape(x)) != tuple(a.shape):
            raise ValueError(f"{source!r}: a tensor has shape {np.shape(x)}, the model expects {tuple(a.shape)}; "
                             "the checkpoint does not match the model config")
        return jax.make_array_from_callback(a.shape, a.sharding, lambda idx: np.asarray(x[idx], a.dtype))

    return jax.tree.map(place, abstract, host)


class MarigoldTask:
    """Fine-tune a Marigold U-Net for `modality` ("depth" | "normals" | "iid_appearance" | "iid_lighting").

    base: SD2 diffusers folder or `marigold_vae` run directory (see the module docstring); unet: diffusers U-Net
    config (4 channels in and out) for a run-directory base, ignored for an SD2 folder; multi_res_noise: strength
    of the annealed multi-resolution noise (0.9 released; 0 plain Gaussian); quantile: depth normalisation
    quantile (0.02); flip_p: horizontal flip probability; normals_augmentation: the released blur and jitter for
    normals; dtype, remat, attention_impl: U-Net and VAE compute options; eval_steps: trailing DDIM steps of
    `predict` (held-out scoring; the released validation takes 1).
    """

    def __init__(self, modality="depth", base="", unet=None, multi_res_noise=0.9, quantile=0.02, flip_p=0.5,
                 normals_augmentation=True, dtype="float32", remat=False, attention_impl="xla", eval_steps=1):
        modality = targets.check_modality(modality)
        if not base:
            raise ValueError("model.base is empty: give a Stable Diffusion 2 diffusers folder or a marigold_vae run")
        self.base = base
        options = dict(dtype=jnp.dtype(dtype), remat=remat, attention_impl=attention_impl)
        if runs.is_run_dir(base):
            if not unet:
                raise ValueError(f"{base!r} is a run directory (a VAE only): give model.unet, a U-Net config")
            vae_config = AutoencoderTask(**runs.run_config(base)["model"]).config()
            self.sd = surgery.BaseFolder(base, dict(unet), vae_config, surgery.SD2_SCHEDULER, False)
            self.from_run = True
        else:
            self.sd = surgery.read_base(base)
            self.from_run = False
        unet_module, vae = surgery.build_models(self.sd, len(targets.TARGET_NAMES[modality]), **options)
        self.configure(modality, unet_module, vae, surgery.training_scheduler(self.sd.scheduler_config), quantile,
                       flip_p, normals_augmentation)
        self.plan = schedulers.make_plan(self.scheduler, eval_steps)
        self.multi_res_noise = float(multi_res_noise) or None

    def configure(self, modality, unet, vae, scheduler, quantile, flip_p, normals_augmentation):
        """Set the networks and data settings shared by Marigold's training objectives (also distillation's):
        `unet`, `vae` modules, the training `scheduler` (`schedulers.SchedulerConfig`), target encoding and
        augmentation options."""
        self.modality = targets.check_modality(modality)
        self.n_targets = len(targets.TARGET_NAMES[modality])
        self.prediction_kind = PREDICTION_KINDS.get(modality)
        self.unet, self.vae = unet, vae
        self.factor = 2 ** (len(self.vae.block_out_channels) - 1)  # pixels per latent cell (SD: 8)
        self.scheduler = scheduler
        self.alphas_cumprod = schedulers.alphas_cumprod(self.scheduler)
        self.quantile = quantile
        self.flip_p = flip_p
        self.normals_options = None if normals_augmentation else dict(gaussian_blur_p=0.0, motion_blur_p=0.0,
                                                                      color_jitter_p=0.0)

    # --- the contract -------------------------------------------------------------------------------------------
    def init(self, rng, example_batch):
        """(U-Net params, boxed with logical names; frozen {"vae", "text"}) for batches like `example_batch`."""
        image = jnp.asarray(example_batch["image"])[:1]
        b, h, w, _ = image.shape
        latent = jnp.zeros((1, h // self.factor, w // self.factor, 4 * (self.n_targets + 1)))
        text = jnp.zeros((1, 2, self.unet.cross_attention_dim), jnp.float32)
        k_unet, k_vae = jax.random.split(rng)
        params = self.unet.init(k_unet, latent, jnp.zeros((1,), jnp.int32), text)["params"]
        vae = self.vae.init(k_vae, image)["params"]
        return params, {"vae": vae, "text": text}

    def host_vae(self):
        """The frozen VAE's params on the host (numpy tree): the base's (a run-directory base: its EMA when kept)."""
        if self.from_run:
            return runs.read_weights(self.base)[0]
        return traverse_util.unflatten_dict(surgery.host_weights(self.sd, "vae", self.vae))

    def host_frozen(self):
        """The frozen weights on the host: {"vae": `host_vae()`, "text": float32 [1, 2, D] empty-prompt embedding
        (all zeros for a base without a text encoder, e.g. a run directory: its U-Net is trained on that constant)}."""
        if self.from_run or not self.sd.has_text_encoder:
            text = np.zeros((1, 2, self.unet.cross_attention_dim), np.float32)
        else:
            text = empty_prompt_embedding(self.base)
        return {"vae": self.host_vae(), "text": text}

    def load_frozen(self, abstract_frozen):
        """The VAE weights and the empty-prompt embedding, read from the base straight into the given shardings."""
        return place_host(abstract_frozen, self.host_frozen(), self.base)

    def warm_start(self, params):
        """Fresh U-Net params → the base's U-Net after the surgery (an SD2 folder), or the fresh 4-channel U-Net of
        `unet` after the surgery (a run-directory base: the demo's U-Net starts from scratch)."""
        base_unet = surgery.base_unet(self.sd)
        if self.from_run:
            dummy = (jnp.zeros((1, self.factor, self.factor, 4)), jnp.zeros((1,), jnp.int32), jnp.zeros((1, 2, base_unet.cross_attention_dim)))
            flat = traverse_util.flatten_dict(nn.unbox(base_unet.init(jax.random.key(0), *dummy)["params"]))
        else:
            flat = surgery.host_weights(self.sd, "unet", base_unet)
        wide = surgery.widen_unet({k: np.asarray(v) for k, v in flat.items()}, self.n_targets)
        return jax.tree.map(lambda p, v: jnp.asarray(v, p.dtype),
                            params, traverse_util.unflatten_dict(wide))

    def encode(self, frozen, images):
        """Images [B, H, W, 3k] in [-1, 1] → scaled posterior means [B, H/f, W/f, 4k] (per 3-channel image; f the
        VAE's downsampling factor, 8 for SD's)."""
        b, h, w, c = images.shape
        k, f = c // 3, self.factor
        if h % f or w % f:
            raise ValueError(f"this Marigold model needs image sides that are multiples of {f}, got {h} x {w}; give "
                             "the source a crop or a resize (data.sources.NAME.crop / resize, see docs/data.md)")
        x = images.reshape(b, h, w, k, 3).transpose(0, 3, 1, 2, 4).reshape(b * k, h, w, 3)
        z = self.vae.apply({"params": frozen["vae"]}, x, method=AutoencoderKL.encode_mean) * self.vae.scaling_factor
        z = z.astype(jnp.float32)
        z = z.reshape(b, k, h // f, w // f, 4).transpose(0, 2, 3, 1, 4)
        return jax.lax.stop_gradient(z.reshape(b, h // f, w // f, 4 * k))

    def loss(self, params, frozen, batch, rng, step=None, targets=None):
        """batch: image [B, H, W, 3], target [B, H, W, 3T] in [-1, 1], valid [B, H, W] → (loss, {})."""
        z_rgb = self.encode(frozen, batch["image"])
        z_tgt = self.encode(frozen, batch["target"])
        k_t, k_noise = jax.random.split(rng)
        t = objective.sample_timesteps(k_t, z_tgt.shape[0], self.scheduler.num_train_timesteps)
        noise = objective.training_noise(k_noise, z_tgt, t, self.multi_res_noise, self.scheduler.num_train_timesteps)
        x_t, v = objective.noisy_latents_and_velocity(self.alphas_cumprod, z_tgt, noise, t)
        pred = self.unet_output(params, frozen, z_rgb, x_t, t)
        mask = objective.latent_valid_mask(batch["valid"], self.factor) if MASKED[self.modality] else None
        return objective.masked_mse(pred, v, mask), {}

    def unet_output(self, params, frozen, z_rgb, x_t, t):
        """The U-Net's v-prediction [B, h, w, 4T] (float32) for noisy target latents x_t at timesteps t [B]."""
        text = jnp.broadcast_to(frozen["text"], (z_rgb.shape[0], *frozen["text"].shape[1:]))
        out = self.unet.apply({"params": params}, jnp.concatenate([z_rgb, x_t], -1), t, text)
        return out.astype(jnp.float32)

    def predict(self, params, frozen, batch, rng):
        """`eval_steps` trailing DDIM steps (the released validation: one) from N(0, I), decoded: depth [B, H, W] in
        [0, 1] (affine-invariant, 0 near) or normals [B, H, W, 3] unit vectors, or intrinsics [B, H, W, 3T] in
        [0, 1]. The sampler is `self.plan` (`schedulers.make_plan`), so a distilled task samples with LCM."""
        sampler, consts = self.plan
        z_rgb = self.encode(frozen, batch["image"])
        b, h, w, _ = z_rgb.shape
        latent = jax.random.normal(rng, (b, h, w, 4 * self.n_targets), jnp.float32)
        latent = sampling.denoise_loop(self.unet, {"params": params}, sampler, jax.tree.map(jnp.asarray, consts),
                                       len(consts["timesteps"]), z_rgb, latent, frozen["text"],
                                       jax.random.fold_in(rng, 1))
        parts = sampling.per_target(latent)
        decoded = self.vae.apply({"params": frozen["vae"]}, parts / self.vae.scaling_factor,
                                 method=AutoencoderKL.decode).astype(jnp.float32)
        kind = {"depth": "depth", "normals": "normals"}.get(self.modality, "intrinsics")
        pred = sampling.decode_prediction(decoded, kind)
        if self.modality == "depth":
            return pred[..., 0]
        if self.modality == "normals":
            return pred
        return pred.reshape(b, self.n_targets, *pred.shape[1:]).transpose(0, 2, 3, 1, 4).reshape(
            b, pred.shape[1], pred.shape[2], -1)

    def prepare(self, sample, rng):
        """Host side: a source sample → image [H, W, 3] and target [H, W, 3T] in [-1, 1] float32, valid [H, W]
        bool; held-out (rng None, no augmentation) also the ground truth: depth [H, W] metres or normals."""
        image = np.asarray(sample["image"])
        target, valid = targets.encode_target(sample, self.modality, self.quantile)
        if rng is not None:
            image, target, valid = augment.augment(image, target, valid, self.modality, rng, self.flip_p,
                                                   self.normals_options)
        out = {"image": targets.signed(image / 255.0), "target": target.astype(np.float32),
               "valid": np.ascontiguousarray(valid)}
        if rng is None and self.modality == "depth":
            out["depth"] = np.asarray(sample["depth"], np.float32)
        if rng is None and self.modality == "normals":
            out["normals"] = np.asarray(sample["normals"], np.float32)
        return {k: np.ascontiguousarray(v) for k, v in out.items()}

    def input_images(self, batch):
        """The network inputs batch["image"] [B, H, W, 3] in [-1, 1] as RGB uint8, for the held-out sample pictures."""
        rgb = (np.asarray(batch["image"], np.float64) + 1.0) * 127.5
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    def param_groups(self, params):
        """The whole U-Net is trained: one group "unet"."""
        return jax.tree.map(lambda _: "unet", nn.unbox(params))

    def logical_axis_rules(self, sharding):
        return ()

