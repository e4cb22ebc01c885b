"""The jitted Marigold computation: encode images, denoise ensemble members, decode and post-process. NHWC.

`denoise` is one jitted program per (U-Net, sampler, shapes), whatever the number of steps: a `fori_loop` over
the inference steps, batched over ensemble members. Inputs carrying a `NamedSharding` over their batch axis (with
parameters replicated on the same mesh) run data-parallel over the devices.
"""

import jax
import jax.numpy as jnp

from marigold_jax import schedulers
from marigold_jax.compilation import jit
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.vae import AutoencoderKL

MODALITIES = ("depth", "normals", "intrinsics")


@jit(static_argnames=("vae",))
def encode(vae: AutoencoderKL, vae_params, images: jnp.ndarray) -> jnp.ndarray:
    """Images [B, H, W, 3] in [-1, 1] (H, W multiples of 8) -> scaled posterior means [B, H/8, W/8, 4]."""
    return vae.apply(vae_params, images, method=AutoencoderKL.encode_mean) * vae.scaling_factor


def decode_prediction(decoded: jnp.ndarray, modality: str, use_full_z_range: bool = True) -> jnp.ndarray:
    """Decoded VAE images [B, H, W, 3] -> predictions as diffusers' `decode_prediction` makes them.

    depth [B, H, W, 1] in [0, 1] (channel mean); normals [B, H, W, 3] unit length (z mapped from [-1, 1] to [0, 1]
    when the model does not use the full z range); intrinsics [B, H, W, 3] in [0, 1].
    """
    if modality == "depth":
        return (jnp.clip(decoded.mean(axis=-1, keepdims=True), -1.0, 1.0) + 1.0) / 2.0
    if modality == "normals":
        x = jnp.clip(decoded, -1.0, 1.0)
        if not use_full_z_range:
            x = x.at[..., 2].set(x[..., 2] * 0.5 + 0.5)
        return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
    if modality == "intrinsics":
        return (jnp.clip(decoded, -1.0, 1.0) + 1.0) / 2.0
    raise ValueError(f"expected a modality in {MODALITIES}, got {modality!r}")


postprocess = jit(decode_prediction, static_argnames=("modality", "use_full_z_range"))  # on its own, jitted


def denoise_loop(
    unet: UNet2DConditionModel,
    unet_params,
    sampler: schedulers.Sampler,
    consts: dict,
    num_steps: jnp.ndarray,
    image_latent: jnp.ndarray,
    noise: jnp.ndarray,
    text: jnp.ndarray,
    key: jax.Array,
) -> jnp.ndarray:
    """Denoise B ensemble members: the whole sampling loop in one program.

    image_latent: [B, h, w, 4] scaled image latents; noise: [B, h, w, 4T] initial target latents (T targets);
    text: [1, L, D] the empty-prompt embedding; consts: per-step arrays from `schedulers.make_plan`, padded to any
    length >= num_steps (so that one compiled program serves every step count); key: noise between LCM steps.
    Returns the final target latents [B, h, w, 4T].
    """

    def body(i, latent):
        step_consts = jax.tree.map(lambda c: c[i], consts)
        step_noise = jax.random.normal(jax.random.fold_in(key, i), latent.shape, latent.dtype)
        return _step(unet, unet_params, sampler, step_consts, image_latent, latent, text, step_noise)

    return jax.lax.fori_loop(0, num_steps, body, noise)


def _step(unet, unet_params, sampler, step_consts, image_latent, latent, text, step_noise):
    context = jnp.broadcast_to(text, (latent.shape[0], *text.shape[1:]))
    model_input = jnp.concatenate([image_latent, latent], axis=-1)
    model_output = unet.apply(unet_params, model_input, step_consts["timesteps"], context)
    latent, _ = schedulers.step(sampler, model_output.astype(latent.dtype), latent, step_consts, step_noise)
    return latent


@jit(static_argnames=("unet", "sampler"))
def denoise_step(
    unet: UNet2DConditionModel,
    unet_params,
    sampler: schedulers.Sampler,
    step_consts: dict,
    image_latent: jnp.ndarray,
    latent: jnp.ndarray,
    text: jnp.ndarray,
    step_noise: jnp.ndarray,
) -> jnp.ndarray:
    """One denoising step of B latents (e.g. the tiles of a MultiDiffusion pass), the body of `denoise`.

    step_consts: one step's scalars (index i of each `schedulers.make_plan` array); image_latent [B, h, w, 4];
    latent [B, h, w, 4T] at the step's timestep; step_noise like `latent` (LCM's re-noising, else unused).
    Returns the latents [B, h, w, 4T] at the previous timestep.
    """
    return _step(unet, unet_params, sampler, step_consts, image_latent, latent, text, step_noise)


denoise = jit(denoise_loop, static_argnames=("unet", "sampler"))  # on its own, jitted (inside a jit: denoise_loop)


def per_target(latent: jnp.ndarray, latent_channels: int = 4) -> jnp.ndarray:
    """Target latents [B, h, w, 4T] -> [B * T, h, w, 4], member-major (diffusers' reshape of NCHW [B, 4T, h, w])."""
    b, h, w, c4 = latent.shape
    t = c4 // latent_channels
    return latent.reshape(b, h, w, t, latent_channels).transpose(0, 3, 1, 2, 4).reshape(b * t, h, w, latent_channels)


@jit(static_argnames=("vae",))
def decode(vae: AutoencoderKL, vae_params, latent: jnp.ndarray) -> jnp.ndarray:
    """Scaled latents [B, h, w, 4] -> decoded images [B, 8h, 8w, 3] (about [-1, 1]), float32."""
    return vae.apply(vae_params, latent / vae.scaling_factor, method=AutoencoderKL.decode).astype(jnp.float32)
