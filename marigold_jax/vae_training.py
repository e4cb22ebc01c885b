"""A small autoencoder trained from scratch as a task of the shared loop: the stand-in for SD2's VAE in the demo.

Marigold needs a pretrained latent space; SD2's VAE cannot be downloaded here, so the demo first trains a small
`AutoencoderKL` (the same module, a smaller config) to reconstruct what Marigold will encode: RGB images and the
target images of every modality (depth normalised to [-1, 1] in three channels, normals). Objective: mean squared
reconstruction error of a posterior sample plus `kl_weight` times the mean KL divergence to N(0, I) (per latent
element), as a KL autoencoder is trained, without the adversarial and perceptual terms of SD's.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marigold_jax import augment, targets
from marigold_jax.vae import AutoencoderKL


class _Posterior(AutoencoderKL):
    """AutoencoderKL that also exposes the log-variance half of the encoder moments."""

    def moments(self, x):
        moments = self.encoder(x.astype(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)


class AutoencoderTask:
    """Train a KL autoencoder on images and Marigold targets.

    block_out_channels, layers_per_block, groups: the `AutoencoderKL` config (one downsampling per block after the
    first: 4 blocks give SD's 1/8 latents); kl_weight: weight of the KL term; modalities: which targets besides RGB are
    reconstructed ("depth", "normals"); flip_p: horizontal flip probability.
    """

    prediction_kind = None  # reconstructs images; no held-out depth or normals to score

    def __init__(self, block_out_channels=(32, 64, 64, 64), layers_per_block=1, groups=8, kl_weight=1e-4,
                 modalities=("depth", "normals"), flip_p=0.5, dtype="float32", attention_impl="xla", remat=False):
        for m in modalities:
            if m not in ("depth", "normals"):
                raise ValueError(f"the demo autoencoder reconstructs 'depth' and 'normals' targets, got {m!r}")
        self.model = _Posterior(block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                                groups=groups, dtype=jnp.dtype(dtype), attention_impl=attention_impl, remat=remat)
        self.kl_weight = kl_weight
        self.modalities = tuple(modalities)
        self.flip_p = flip_p

    def config(self):
        """The diffusers `vae/config.json` of the trained autoencoder."""
        return {
            "_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3, "latent_channels": 4,
            "block_out_channels": list(self.model.block_out_channels),
            "down_block_types": ["DownEncoderBlock2D"] * len(self.model.block_out_channels),
            "up_block_types": ["UpDecoderBlock2D"] * len(self.model.block_out_channels),
            "layers_per_block": self.model.layers_per_block, "norm_num_groups": self.model.groups,
            "act_fn": "silu", "scaling_factor": self.model.scaling_factor, "sample_size": 64,
        }

    def init(self, rng, example_batch):
        return self.model.init(rng, jnp.asarray(example_batch["image"]))["params"], {}

    def loss(self, params, frozen, batch, rng, step=None, targets=None):
        """batch: image [B, H, W, 3] and each modality's [B, H, W, 3] in [-1, 1] → (loss, {"mse", "kl"})."""
        x = jnp.concatenate([batch["image"]] + [batch[m] for m in self.modalities], axis=0)
        mean, logvar = self.model.apply({"params": params}, x, method=_Posterior.moments)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(rng, mean.shape)
        recon = self.model.apply({"params": params}, z, method=AutoencoderKL.decode).astype(jnp.float32)
        mse = jnp.mean(jnp.square(recon - x))
        kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
        return mse + self.kl_weight * kl, {"mse": mse, "kl": kl}

    def prepare(self, sample, rng):
        """A source sample (image, depth, valid, normals) → image and targets in [-1, 1], float32 [H, W, 3] each."""
        image = np.asarray(sample["image"])
        out = {}
        for m in self.modalities:
            target, valid = targets.encode_target(sample, m)
            out[m] = target
        if rng is not None and rng.random() < self.flip_p:
            image = image[:, ::-1]
            out = {m: augment.hflip(image, t, valid, m == "normals")[1] for m, t in out.items()}
        out["image"] = targets.signed(image / 255.0)
        return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}

    def param_groups(self, params):
        return jax.tree.map(lambda _: "vae", nn.unbox(params))

    def logical_axis_rules(self, sharding):
        return ()
