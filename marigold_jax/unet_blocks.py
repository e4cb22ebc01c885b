"""The down, mid and up blocks shared by the U-Net and the VAE (diffusers `unet_2d_blocks`), NHWC.

One class per role covers diffusers' variants: `DownBlock2D` is `CrossAttnDownBlock2D` when `heads` is given,
`DownBlock2D` otherwise and `DownEncoderBlock2D` when called without a time embedding; `UpBlock2D` likewise covers
`CrossAttnUpBlock2D`, `UpBlock2D` and `UpDecoderBlock2D` (no skips); `MidBlock2D` covers `UNetMidBlock2DCrossAttn`
(`attention="cross"`) and the VAE's `UNetMidBlock2D` (`attention="self"`). Submodule names are diffusers'
(`resnets_N`, `attentions_N`, `downsamplers_0`, `upsamplers_0`). With `remat`, each residual block and each
transformer is rematerialised in the backward pass.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from marigold_jax.attention import Attention, Transformer2DModel
from marigold_jax.resnet import Downsample2D, ResnetBlock2D, Upsample2D


class _Blocks(nn.Module):
    """Fields and constructors common to the three block kinds."""

    out_channels: int
    groups: int
    eps: float
    heads: int | None = None  # attention heads of the cross-attention transformers; None: no attention
    transformer_layers: int = 1
    use_linear_projection: bool = True
    attention_impl: str = "auto"
    remat: bool = False
    dtype: Any = jnp.float32

    def resnet(self, name, output_scale_factor=1.0):
        cls = nn.remat(ResnetBlock2D) if self.remat else ResnetBlock2D
        return cls(self.out_channels, self.groups, self.eps, output_scale_factor, self.dtype, name=name)

    def transformer(self, name):
        cls = nn.remat(Transformer2DModel) if self.remat else Transformer2DModel
        return cls(
            self.heads,
            self.out_channels // self.heads,
            self.transformer_layers,
            self.groups,
            self.use_linear_projection,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            name=name,
        )


class DownBlock2D(_Blocks):
    """`num_layers` x (resnet [→ transformer]) then an optional strided-conv downsampler.
    x: [B, H, W, C] → (x: [B, H', W', out_channels], skips: one tensor per layer plus the downsampled one)."""

    num_layers: int = 2
    add_downsample: bool = True
    downsample_padding: int = 1

    @nn.compact
    def __call__(self, x, temb=None, context=None):
        skips = []
        for i in range(self.num_layers):
            x = self.resnet(f"resnets_{i}")(x, temb)
            if self.heads is not None:
                x = self.transformer(f"attentions_{i}")(x, context)
            skips.append(x)
        if self.add_downsample:
            x = Downsample2D(self.out_channels, self.downsample_padding, self.dtype, name="downsamplers_0")(x)
            skips.append(x)
        return x, tuple(skips)


class MidBlock2D(_Blocks):
    """resnet → attention → resnet at the lowest resolution. `attention` "cross": a transformer over `context`
    (U-Net); "self": single-head spatial self-attention with its own GroupNorm (VAE); None: no attention.
    x: [B, H, W, C] → [B, H, W, C]."""

    attention: str | None = "cross"
    output_scale_factor: float = 1.0

    @nn.compact
    def __call__(self, x, temb=None, context=None):
        x = self.resnet("resnets_0", self.output_scale_factor)(x, temb)
        if self.attention == "cross":
            x = self.transformer("attentions_0")(x, context)
        elif self.attention == "self":
            c = self.out_channels
            attn = Attention(1, c, c, True, self.groups, self.eps, self.attention_impl, self.dtype, name="attentions_0")
            x = attn(x) / self.output_scale_factor
        return self.resnet("resnets_1", self.output_scale_factor)(x, temb)


class UpBlock2D(_Blocks):
    """`num_layers` x (concat the last skip → resnet [→ transformer]) then an optional nearest-upsample + conv
    to `upsample_size` (2x when None). Skips are consumed from the end; the VAE decoder passes none.
    x: [B, H, W, C] → [B, H', W', out_channels]."""

    num_layers: int = 3
    add_upsample: bool = True

    @nn.compact
    def __call__(self, x, skips=(), temb=None, context=None, upsample_size=None):
        skips = list(skips)
        for i in range(self.num_layers):
            if skips:
                x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = self.resnet(f"resnets_{i}")(x, temb)
            if self.heads is not None:
                x = self.transformer(f"attentions_{i}")(x, context)
        if self.add_upsample:
            x = Upsample2D(self.out_channels, self.dtype, name="upsamplers_0")(x, upsample_size)
        return x
