"""Marigold's training objective as pure functions: noising the target latents, v-targets, the masked latent MSE
(and distillation's masked pseudo-Huber loss).

Kept apart from the task so that distillation (LCM) reuses the same pieces. Layout NHWC; latents [B, h, w, 4T] for
T targets, pixel masks [B, H, W] with H = 8h, W = 8w.
"""

import jax
import jax.numpy as jnp

from marigold_jax import noise as noise_lib
from marigold_jax import schedulers


def latent_valid_mask(valid, factor=8):
    """Pixel validity [B, H, W] bool → latent validity [B, H/f, W/f] bool: a latent cell is valid only when all of
    its f x f pixels are (the released NOT max_pool(invalid, f, stride f))."""
    b, h, w = valid.shape
    if h % factor or w % factor:
        raise ValueError(f"expected a mask whose sides are multiples of {factor}, found {h} x {w}")
    return valid.reshape(b, h // factor, factor, w // factor, factor).all(axis=(2, 4))


def masked_mse(pred, target, mask=None):
    """Mean squared error over the valid latent elements of the whole batch (not per sample).

    pred, target: [B, h, w, C]; mask: [B, h, w] bool (repeated over channels) or None (all valid). With no valid
    element the loss is 0 with zero gradient (the released code would produce NaN and corrupt the weights).
    """
    return _masked_mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), mask)


def _masked_mean(err, mask):
    """Mean of err [B, h, w, C] over the elements where mask [B, h, w] (repeated over C) holds; 0 if none does."""
    if mask is None:
        return err.mean()
    m = mask[..., None].astype(jnp.float32)
    return (err * m).sum() / jnp.maximum(m.sum() * err.shape[-1], 1.0)


def masked_pseudo_huber(pred, target, mask=None, c=1e-3):
    """Pseudo-Huber loss mean(sqrt((pred - target)^2 + c^2) - c) over the valid latent elements of the whole batch
    (latent consistency distillation's; about |d| for |d| >> c, d^2 / 2c near 0). Shapes and mask as `masked_mse`;
    0 with zero gradient when no element is valid."""
    diff = pred.astype(jnp.float32) - target.astype(jnp.float32)
    return _masked_mean(jnp.sqrt(jnp.square(diff) + c * c) - c, mask)


def sample_timesteps(key, batch, num_train_timesteps=1000):
    """Training timesteps int32 [B], uniform over 0 .. num_train_timesteps - 1 (every step, not an inference grid)."""
    return jax.random.randint(key, (batch,), 0, num_train_timesteps, jnp.int32)


def training_noise(key, latents, timesteps, multi_res_strength, num_train_timesteps=1000):
    """The noise of one micro-batch, float32 like `latents`: annealed multi-resolution noise with per-sample strength
    multi_res_strength * t / num_train_timesteps, or plain Gaussian noise when multi_res_strength is None."""
    if multi_res_strength is None:
        return jax.random.normal(key, latents.shape, jnp.float32)
    strength = multi_res_strength * timesteps.astype(jnp.float32) / num_train_timesteps
    return noise_lib.multi_res_noise(key, latents.shape, strength)


def noisy_latents_and_velocity(alphas_cumprod, latents, noise, timesteps):
    """(x_t, v): x_t = sqrt(a_t) z0 + sqrt(1 - a_t) eps (the U-Net input) and the v-prediction target
    v = sqrt(a_t) eps - sqrt(1 - a_t) z0, each like `latents`; alphas_cumprod [T] float32."""
    return (schedulers.add_noise(alphas_cumprod, latents, noise, timesteps),
            schedulers.get_velocity(alphas_cumprod, latents, noise, timesteps))
