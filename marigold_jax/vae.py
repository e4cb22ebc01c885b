"""The Stable Diffusion VAE (diffusers `AutoencoderKL`) in Flax, NHWC.

Submodule names mirror diffusers (`encoder.down_blocks_0.resnets_1.conv1`, `quant_conv`, `decoder.mid_block`), so
converting its safetensors is a mechanical renaming (`marigold_jax.convert_diffusers`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from marigold_jax.layers import conv, group_norm
from marigold_jax.unet_blocks import DownBlock2D, MidBlock2D, UpBlock2D

# diffusers AutoencoderKL options this implementation reproduces only at these values
_FIXED_OPTIONS = {
    "act_fn": "silu",
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
}


class _Coder(nn.Module):
    """What the VAE encoder and decoder share: their fields, block options, mid block and output head."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    out_channels: int
    groups: int
    mid_block_add_attention: bool = True
    attention_impl: str = "auto"
    remat: bool = False
    dtype: Any = jnp.float32

    def _block_options(self):
        return dict(
            groups=self.groups, eps=1e-6, attention_impl=self.attention_impl, remat=self.remat, dtype=self.dtype
        )

    def _mid_block(self, x):
        attention = "self" if self.mid_block_add_attention else None
        block = MidBlock2D(self.block_out_channels[-1], attention=attention, name="mid_block", **self._block_options())
        return block(x)

    def _head(self, x):
        x = nn.silu(group_norm(self.groups, 1e-6, "conv_norm_out", self.dtype)(x))
        return conv(self.out_channels, 3, "conv_out", self.dtype)(x)


class Encoder(_Coder):
    """Image [B, H, W, Cin] → posterior moments [B, H/2^(n-1), W/2^(n-1), out_channels] (mean, log-var; so
    out_channels = 2 * latent_channels)."""

    @nn.compact
    def __call__(self, x):
        x = conv(self.block_out_channels[0], 3, "conv_in", self.dtype)(x)
        for i, channels in enumerate(self.block_out_channels):
            x, _ = DownBlock2D(
                channels,
                num_layers=self.layers_per_block,
                add_downsample=i < len(self.block_out_channels) - 1,
                downsample_padding=0,
                name=f"down_blocks_{i}",
                **self._block_options(),
            )(x)
        return self._head(self._mid_block(x))


class Decoder(_Coder):
    """Latent [B, h, w, latent_channels] → image [B, h * 2^(n-1), w * 2^(n-1), out_channels]."""

    @nn.compact
    def __call__(self, z):
        x = self._mid_block(conv(self.block_out_channels[-1], 3, "conv_in", self.dtype)(z))
        for i, channels in enumerate(reversed(self.block_out_channels)):
            x = UpBlock2D(
                channels,
                num_layers=self.layers_per_block + 1,
                add_upsample=i < len(self.block_out_channels) - 1,
                name=f"up_blocks_{i}",
                **self._block_options(),
            )(x)
        return self._head(x)


class AutoencoderKL(nn.Module):
    """diffusers `AutoencoderKL`: `encode_mean(x)` and `decode(z)` work on *unscaled* latents (multiply by
    `scaling_factor` before the U-Net, divide after, as Marigold does). Calling the module reconstructs x through
    the posterior mean (used by `init`)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    groups: int = 32
    in_channels: int = 3
    out_channels: int = 3
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    scaling_factor: float = 0.18215  # latent scale (not used inside the module; the pipeline applies it)
    attention_impl: str = "auto"  # "auto" (CPU: heads_first, else xla), "xla" or "heads_first"
    remat: bool = False  # rematerialise every residual block and attention in the backward pass
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @classmethod
    def from_config(cls, config, **kwargs):
        """Build from a diffusers `vae/config.json` dict; `kwargs` set `dtype`, `remat`, `attention_impl`."""
        for key, value in _FIXED_OPTIONS.items():
            if config.get(key, value) != value:
                raise ValueError(
                    f"vae config has {key}={config[key]!r}; marigold_jax implements AutoencoderKL only with "
                    f"{key}={value!r} (the Stable Diffusion VAE). Use a Stable Diffusion 2 based checkpoint."
                )
        for key, expected in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            found = set(config.get(key, [expected]))
            if found != {expected}:
                raise ValueError(f"vae config {key} must all be {expected!r}, found {sorted(found)}")
        return cls(
            block_out_channels=tuple(config.get("block_out_channels", (64,))),
            layers_per_block=config.get("layers_per_block", 1),
            latent_channels=config.get("latent_channels", 4),
            groups=config.get("norm_num_groups", 32),
            in_channels=config.get("in_channels", 3),
            out_channels=config.get("out_channels", 3),
            use_quant_conv=config.get("use_quant_conv", True),
            use_post_quant_conv=config.get("use_post_quant_conv", True),
            mid_block_add_attention=config.get("mid_block_add_attention", True),
            scaling_factor=config.get("scaling_factor", 0.18215),
            **kwargs,
        )

    def setup(self):
        common = dict(
            block_out_channels=self.block_out_channels,
            layers_per_block=self.layers_per_block,
            groups=self.groups,
            mid_block_add_attention=self.mid_block_add_attention,
            attention_impl=self.attention_impl,
            remat=self.remat,
            dtype=self.dtype,
        )
        self.encoder = Encoder(out_channels=2 * self.latent_channels, **common)
        self.decoder = Decoder(out_channels=self.out_channels, **common)
        n = 2 * self.latent_channels
        self.quant_conv = conv(n, 1, None, self.dtype) if self.use_quant_conv else None
        self.post_quant_conv = conv(self.latent_channels, 1, None, self.dtype) if self.use_post_quant_conv else None

    def encode_mean(self, x):
        """x: [B, H, W, in_channels] in [-1, 1] (H, W multiples of 8 for SD) → posterior mean [B, H/8, W/8, 4]."""
        moments = self.encoder(x.astype(self.dtype))
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[..., : self.latent_channels]

    def decode(self, z):
        """z: unscaled latent [B, h, w, latent_channels] → image [B, 8h, 8w, out_channels] (about [-1, 1])."""
        z = z.astype(self.dtype)
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, x):
        return self.decode(self.encode_mean(x))
