"""From a Stable Diffusion 2 diffusers folder to the start of Marigold training, without torch.

Marigold fine-tunes the whole SD2 U-Net (768-v, v-prediction) after widening its first and last convolutions; the
VAE and the CLIP text encoder stay frozen, the text encoder only ever seeing the empty prompt. The released surgery
(Marigold v1.1 trainers), for T targets predicted at once (T = 1 for depth and normals):
- `conv_in`: the kernel is tiled T + 1 times along its input channels and divided by T + 1, so that the widened
  layer gives the pretrained output when every latent slot holds the same latent; the bias is kept as it is;
- `conv_out` (T > 1 only, intrinsics): kernel and bias tiled T times along the output channels, not rescaled.
Flax kernels are HWIO: input channels are axis 2, output channels axis 3.
"""

import dataclasses
import json
import os

import numpy as np

from marigold_jax import schedulers
from marigold_jax.convert_diffusers import host_params_from_torch, read_component
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.vae import AutoencoderKL

_BASE_PARTS = ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json")
# stabilityai/stable-diffusion-2 (768-v) scheduler/scheduler_config.json: the noise schedule of a base that brings
# none (the demo's autoencoder run), so that the demo trains and samples on the real recipe's schedule
SD2_SCHEDULER = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                 "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
                 "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


@dataclasses.dataclass
class BaseFolder:
    """The configs of a Stable Diffusion (2) diffusers folder; weights are read on demand by `host_weights`."""

    path: str
    unet_config: dict
    vae_config: dict
    scheduler_config: dict
    has_text_encoder: bool  # text_encoder/ and tokenizer/ present (the empty prompt can be encoded)


def read_base(path):
    """The configs of the Stable Diffusion 2 folder `path` (model_index.json, unet/, vae/, scheduler/, and
    text_encoder/ + tokenizer/ for the empty prompt), as `stabilityai/stable-diffusion-2` ships it."""
    missing = [p for p in _BASE_PARTS if not os.path.isfile(os.path.join(path, p))]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a Stable Diffusion diffusers folder: missing {', '.join(missing)} (expected unet/, vae/, "
            "text_encoder/, tokenizer/, scheduler/ as in stabilityai/stable-diffusion-2)"
        )

    def read(part):
        with open(os.path.join(path, part), encoding="utf-8") as f:
            return json.load(f)

    return BaseFolder(
        path=path,
        unet_config=read("unet/config.json"),
        vae_config=read("vae/config.json"),
        scheduler_config=read("scheduler/scheduler_config.json"),
        has_text_encoder=all(os.path.exists(os.path.join(path, p)) for p in ("text_encoder/config.json", "tokenizer")),
    )


def host_weights(base, component, model):
    """{Flax path tuple: numpy array (memory-mapped, Flax layout)} of `component` ("unet" | "vae") for `model`."""
    return host_params_from_torch(model, read_component(base.path, component), f"{base.path}/{component}")


def marigold_unet_config(unet_config, n_targets, latent_channels=4):
    """The U-Net config after the surgery for `n_targets` targets: in = (T + 1) * 4 channels, out = T * 4."""
    if unet_config.get("in_channels", 4) != latent_channels or unet_config.get("out_channels", 4) != latent_channels:
        raise ValueError(
            f"expected a Stable Diffusion U-Net with {latent_channels} input and output channels, found "
            f"in_channels={unet_config.get('in_channels')}, out_channels={unet_config.get('out_channels')}; "
            "model.base must be the SD2 folder, not an already widened Marigold U-Net"
        )
    return {**unet_config, "in_channels": latent_channels * (n_targets + 1), "out_channels": latent_channels * n_targets}


def widen_conv_in(kernel, n_targets):
    """conv_in kernel [3, 3, C, F] → [3, 3, (T + 1) C, F]: tiled over input channels and divided by T + 1."""
    copies = n_targets + 1
    return np.tile(np.asarray(kernel, np.float32), (1, 1, copies, 1)) / np.float32(copies)


def widen_conv_out(kernel, bias, n_targets):
    """conv_out kernel [3, 3, F, C] and bias [C] → [3, 3, F, T C] and [T C]: tiled over output channels."""
    return (np.tile(np.asarray(kernel, np.float32), (1, 1, 1, n_targets)),
            np.tile(np.asarray(bias, np.float32), n_targets))


def widen_unet(flat, n_targets):
    """SD2 U-Net weights {path: array} → the Marigold U-Net's for `n_targets` targets (the conv_in bias kept)."""
    out = dict(flat)
    out[("conv_in", "kernel")] = widen_conv_in(flat[("conv_in", "kernel")], n_targets)
    out[("conv_out", "kernel")], out[("conv_out", "bias")] = widen_conv_out(
        flat[("conv_out", "kernel")], flat[("conv_out", "bias")], n_targets
    )
    return out


def training_scheduler(scheduler_config):
    """The Marigold v1.1 noise schedule from the base's scheduler config: its betas and prediction type, rescaled to
    zero terminal SNR, trailing spacing; as a DDIM config, which is what the trained checkpoint ships for inference.
    Marigold's objective is v-prediction: a base of another prediction type (e.g. the 512 px epsilon model
    stable-diffusion-2-base) is refused, since its sampler would read the trained U-Net's output wrongly."""
    if scheduler_config.get("prediction_type") != "v_prediction":
        raise ValueError(
            f"the base's scheduler has prediction_type={scheduler_config.get('prediction_type')!r}; Marigold trains "
            "v-prediction from the 768-v model: use stabilityai/stable-diffusion-2 (not -base)"
        )
    config = {**scheduler_config, "_class_name": "DDIMScheduler", "rescale_betas_zero_snr": True,
              "timestep_spacing": "trailing"}
    return schedulers.SchedulerConfig.from_dict(config)


def base_unet(base, **options):
    """The base's own U-Net module (4 latent channels in and out), whose weights `host_weights` reads."""
    return UNet2DConditionModel.from_config(base.unet_config, **options)


def build_models(base, n_targets, **options):
    """(U-Net after the surgery, VAE) modules of `base`; `options` set dtype, remat, attention_impl."""
    unet = UNet2DConditionModel.from_config(marigold_unet_config(base.unet_config, n_targets), **options)
    return unet, AutoencoderKL.from_config(base.vae_config, **options)
