"""Attention blocks of the VAE and the U-Net (diffusers `Attention`, `FeedForward` with GEGLU,
`BasicTransformerBlock`, `Transformer2DModel`), NHWC. Submodule names are diffusers' (`to_q`, `to_out_0` for
`to_out.0`, `ff.net_0.proj` for `ff.net.0.proj`, `transformer_blocks_N`, `proj_in`)."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from marigold_jax.layers import conv, dense, dot_product_attention, group_norm, layer_norm
from marigold_jax.resnet import SPATIAL


class Attention(nn.Module):
    """Multi-head attention of `x` [B, L, C] (or [B, H, W, C], flattened to tokens) over `context` [B, Lc, Dc]
    (`x` itself when None). With `norm_groups`, a GroupNorm precedes the projections and the input is added back
    (the VAE's spatial self-attention); otherwise the caller adds the residual. Output has x's shape.
    """

    heads: int
    dim_head: int
    out_dim: int
    qkv_bias: bool = False
    norm_groups: int | None = None
    norm_eps: float = 1e-6
    attention_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context=None):
        shape = x.shape
        h = x.reshape(shape[0], -1, shape[-1])
        if self.norm_groups is not None:
            h = group_norm(self.norm_groups, self.norm_eps, "group_norm", self.dtype)(h)
        context = h if context is None else context
        inner = self.heads * self.dim_head
        q = dense(inner, ("embed", "heads"), "to_q", self.dtype, self.qkv_bias)(h)
        k = dense(inner, ("embed", "heads"), "to_k", self.dtype, self.qkv_bias)(context)
        v = dense(inner, ("embed", "heads"), "to_v", self.dtype, self.qkv_bias)(context)
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, self.dim_head)
        o = dot_product_attention(split(q), split(k), split(v), implementation=self.attention_impl)
        o = dense(self.out_dim, ("heads", "embed"), "to_out_0", self.dtype)(o.reshape(o.shape[0], o.shape[1], inner))
        o = o.reshape(shape)
        return o + x if self.norm_groups is not None else o


class GEGLU(nn.Module):
    """`proj` to 2 x `inner`, then value * gelu(gate) with the exact GELU. x: [..., C] → [..., inner]."""

    inner: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        value, gate = jnp.split(dense(2 * self.inner, ("embed", "mlp"), "proj", self.dtype)(x), 2, axis=-1)
        return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
    """GEGLU feed-forward (`net.0`) to 4C, then `net.2` back to C. x: [..., C] → [..., C]."""

    dim: int
    mult: int = 4
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = GEGLU(self.dim * self.mult, self.dtype, name="net_0")(x)
        return dense(self.dim, ("mlp", "embed"), "net_2", self.dtype)(h)


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention, cross-attention over `context` and GEGLU feed-forward, each residual.
    x: [B, L, C], context: [B, Lc, Dc] → [B, L, C]."""

    dim: int
    heads: int
    dim_head: int
    norm_eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        attn = lambda name: Attention(
            self.heads, self.dim_head, self.dim, attention_impl=self.attention_impl, dtype=self.dtype, name=name
        )
        x = x + attn("attn1")(layer_norm(self.norm_eps, "norm1", self.dtype)(x))
        x = x + attn("attn2")(layer_norm(self.norm_eps, "norm2", self.dtype)(x), context)
        return x + FeedForward(self.dim, dtype=self.dtype, name="ff")(layer_norm(self.norm_eps, "norm3", self.dtype)(x))


class Transformer2DModel(nn.Module):
    """GroupNorm (eps 1e-6) → `proj_in` → `num_layers` transformer blocks over the H*W tokens → `proj_out`, plus
    the input. `proj_in`/`proj_out` are dense layers with `use_linear_projection` (SD2) and 1x1 convs otherwise
    (SD1), as in diffusers. x: [B, H, W, C], context: [B, Lc, Dc] → [B, H, W, C]."""

    heads: int
    dim_head: int
    num_layers: int
    groups: int
    use_linear_projection: bool = True
    norm_eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        b, hgt, wid, c = x.shape
        inner = self.heads * self.dim_head
        project = lambda features, axes, name: (
            dense(features, axes, name, self.dtype)
            if self.use_linear_projection
            else conv(features, 1, name, self.dtype)
        )
        h = project(inner, ("embed", "heads"), "proj_in")(group_norm(self.groups, 1e-6, "norm", self.dtype)(x))
        h = h.reshape(b, hgt * wid, inner)
        for i in range(self.num_layers):
            h = BasicTransformerBlock(
                inner, self.heads, self.dim_head, self.norm_eps, self.attention_impl, self.dtype,
                name=f"transformer_blocks_{i}",
            )(h, context)
        h = project(c, ("heads", "embed"), "proj_out")(h.reshape(b, hgt, wid, inner))
        return nn.with_logical_constraint(h + x, SPATIAL)
