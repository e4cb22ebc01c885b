"""Residual blocks and resamplers of the VAE and the U-Net (diffusers `ResnetBlock2D`, `Downsample2D`,
`Upsample2D`), NHWC. Submodule names are diffusers' (`norm1`, `conv1`, `time_emb_proj`, `conv_shortcut`, `conv`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from marigold_jax.layers import conv, dense, group_norm

SPATIAL = ("batch", "height", "width", "channels")


class ResnetBlock2D(nn.Module):
    """GroupNorm → SiLU → conv3x3 (+ projected time embedding) → GroupNorm → SiLU → conv3x3, plus a shortcut
    (a 1x1 conv when the channel count changes). x: [B, H, W, Cin], temb: [B, T] or None → [B, H, W, out_channels].
    """

    out_channels: int
    groups: int
    eps: float
    output_scale_factor: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb=None):
        h = nn.silu(group_norm(self.groups, self.eps, "norm1", self.dtype)(x))
        h = conv(self.out_channels, 3, "conv1", self.dtype)(h)
        if temb is not None:
            t = dense(self.out_channels, ("embed", "conv_out"), "time_emb_proj", self.dtype)(nn.silu(temb))
            h = h + t[:, None, None, :]
        h = nn.silu(group_norm(self.groups, self.eps, "norm2", self.dtype)(h))
        h = conv(self.out_channels, 3, "conv2", self.dtype)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "conv_shortcut", self.dtype)(x)
        return nn.with_logical_constraint((x + h) / self.output_scale_factor, SPATIAL)


class Downsample2D(nn.Module):
    """Strided 3x3 conv halving H and W (rounding up). `padding` 1 pads every side (U-Net); 0 pads only the bottom
    and right by one pixel (VAE encoder), as diffusers does. x: [B, H, W, C] → [B, ceil(H/2), ceil(W/2), C].
    """

    channels: int
    padding: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        pad = ((1, 1), (1, 1)) if self.padding == 1 else ((0, 1), (0, 1))
        return conv(self.channels, 3, "conv", self.dtype, strides=2, padding=pad)(x)


def upsample_nearest(x, size):
    """Nearest-neighbour resize of NHWC `x` to `size` (h, w) with PyTorch's `F.interpolate(mode="nearest")` source
    index floor(i * in / out)."""
    h, w = size
    if (h, w) == (2 * x.shape[1], 2 * x.shape[2]):
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    rows = (jnp.arange(h) * x.shape[1]) // h
    cols = (jnp.arange(w) * x.shape[2]) // w
    return x[:, rows][:, :, cols]


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling (to 2x, or to `size` when the U-Net input was not a multiple of its overall
    down-sampling factor), then a 3x3 conv. x: [B, H, W, C] → [B, h, w, C]."""

    channels: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, size=None):
        x = upsample_nearest(x, size if size is not None else (2 * x.shape[1], 2 * x.shape[2]))
        return conv(self.channels, 3, "conv", self.dtype)(x)
