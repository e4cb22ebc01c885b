"""The Stable Diffusion 2 U-Net (diffusers `UNet2DConditionModel`) in Flax, NHWC, as Marigold uses it.

Submodule names mirror diffusers (`down_blocks_0.attentions_1.transformer_blocks_0.attn2.to_k`,
`time_embedding.linear_1`, `mid_block.resnets_0`), so converting its safetensors is a mechanical renaming
(`marigold_jax.convert_diffusers`).
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from marigold_jax.layers import conv, dense, group_norm
from marigold_jax.unet_blocks import DownBlock2D, MidBlock2D, UpBlock2D

# diffusers UNet2DConditionModel options this implementation reproduces only at these values (a tuple: any of them),
# the SD1/SD2 family
_FIXED_OPTIONS = {
    "center_input_sample": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "only_cross_attention": False,
    "mid_block_only_cross_attention": (None, False),
    "mid_block_scale_factor": 1,
    "dropout": 0.0,
    "act_fn": "silu",
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
}
_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


def timestep_embedding(timesteps, dim, flip_sin_to_cos=True, freq_shift=0.0, max_period=10000):
    """Sinusoidal embedding of diffusion timesteps (diffusers `get_timestep_embedding`).
    timesteps: [B] (integer or fractional steps) → [B, dim] float32, [cos, sin] halves when `flip_sin_to_cos`."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift))
    args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)] if flip_sin_to_cos else [jnp.sin(args), jnp.cos(args)], -1)
    return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class TimestepEmbedding(nn.Module):
    """`linear_1` → SiLU → `linear_2`; `cond_proj` (when the config has `time_cond_proj_dim`) adds a projected
    condition to the input (a zero condition, as diffusers' None, adds nothing). t: [B, C] → [B, dim]."""

    dim: int
    cond_proj_dim: int | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, t, cond=None):
        if self.cond_proj_dim is not None:
            cond = jnp.zeros((t.shape[0], self.cond_proj_dim), t.dtype) if cond is None else cond
            t = t + dense(t.shape[-1], ("embed", "mlp"), "cond_proj", self.dtype, use_bias=False)(cond)
        t = nn.silu(dense(self.dim, ("embed", "mlp"), "linear_1", self.dtype)(t))
        return dense(self.dim, ("mlp", "embed"), "linear_2", self.dtype)(t)


def _per_block(value, n):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


class UNet2DConditionModel(nn.Module):
    """diffusers `UNet2DConditionModel` (SD2 layout: cross-attention down/up blocks, a cross-attention mid block,
    linear-projection transformers with GEGLU feed-forward). `__call__(sample [B, h, w, in_channels],
    timesteps [B] or scalar, encoder_hidden_states [B, L, cross_attention_dim]) → [B, h, w, out_channels]`.
    h and w need not be multiples of 8: upsampling then targets the skip connections' sizes, as in diffusers."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    up_block_types: tuple[str, ...] = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
    layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    transformer_layers_per_block: tuple[int, ...] = (1, 1, 1, 1)
    attention_heads: tuple[int, ...] = (5, 10, 20, 20)  # diffusers' `attention_head_dim` (it counts heads)
    cross_attention_dim: int = 1024
    groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    downsample_padding: int = 1
    time_embedding_dim: int | None = None  # None: 4 * block_out_channels[0]
    time_cond_proj_dim: int | None = None
    attention_impl: str = "auto"  # "auto" (CPU: heads_first, else xla), "xla" or "heads_first"
    remat: bool = False  # rematerialise every residual block and transformer in the backward pass
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @classmethod
    def from_config(cls, config, **kwargs):
        """Build from a diffusers `unet/config.json` dict; `kwargs` set `dtype`, `remat`, `attention_impl`."""
        for key, value in _FIXED_OPTIONS.items():
            accepted = value if isinstance(value, tuple) else (value,)
            if config.get(key, accepted[0]) not in accepted:
                raise ValueError(
                    f"unet config has {key}={config[key]!r}; marigold_jax implements UNet2DConditionModel only "
                    f"with {key} in {accepted!r} (the Stable Diffusion 2 U-Net that Marigold fine-tunes)."
                )
        down = tuple(config.get("down_block_types", cls.down_block_types))
        up = tuple(config.get("up_block_types", cls.up_block_types))
        if not set(down) <= set(_DOWN_TYPES) or not set(up) <= set(_UP_TYPES):
            raise ValueError(
                f"unet config has down_block_types={list(down)}, up_block_types={list(up)}; marigold_jax supports "
                f"{list(_DOWN_TYPES)} and {list(_UP_TYPES)}."
            )
        n = len(down)
        cross = set(_per_block(config.get("cross_attention_dim", 1280), n))
        if len(cross) != 1:
            raise ValueError(f"unet config cross_attention_dim must be one value, found {sorted(cross)}")
        return cls(
            in_channels=config.get("in_channels", 4),
            out_channels=config.get("out_channels", 4),
            block_out_channels=tuple(config.get("block_out_channels", cls.block_out_channels)),
            down_block_types=down,
            up_block_types=up,
            layers_per_block=_per_block(config.get("layers_per_block", 2), n),
            transformer_layers_per_block=_per_block(config.get("transformer_layers_per_block", 1), n),
            attention_heads=_per_block(config.get("attention_head_dim", 8), n),
            cross_attention_dim=cross.pop(),
            groups=config.get("norm_num_groups", 32),
            norm_eps=config.get("norm_eps", 1e-5),
            use_linear_projection=config.get("use_linear_projection", False),
            flip_sin_to_cos=config.get("flip_sin_to_cos", True),
            freq_shift=config.get("freq_shift", 0),
            downsample_padding=config.get("downsample_padding", 1),
            time_embedding_dim=config.get("time_embedding_dim"),
            time_cond_proj_dim=config.get("time_cond_proj_dim"),
            **kwargs,
        )

    @nn.compact
    def __call__(self, sample, timesteps, encoder_hidden_states, timestep_cond=None):
        """sample: [B, h, w, in_channels]; timesteps: [B] or scalar; encoder_hidden_states: [B, L, D];
        timestep_cond: [B, time_cond_proj_dim] or None (only for configs with `time_cond_proj_dim`)."""
        b = sample.shape[0]
        channels = self.block_out_channels
        common = dict(
            groups=self.groups,
            eps=self.norm_eps,
            use_linear_projection=self.use_linear_projection,
            attention_impl=self.attention_impl,
            remat=self.remat,
            dtype=self.dtype,
        )
        t = jnp.broadcast_to(jnp.reshape(jnp.asarray(timesteps), (-1,)), (b,))
        t_emb = timestep_embedding(t, channels[0], self.flip_sin_to_cos, self.freq_shift).astype(self.dtype)
        emb = TimestepEmbedding(
            self.time_embedding_dim or 4 * channels[0], self.time_cond_proj_dim, self.dtype, name="time_embedding"
        )(t_emb, timestep_cond)
        context = encoder_hidden_states.astype(self.dtype)

        x = conv(channels[0], 3, "conv_in", self.dtype)(sample.astype(self.dtype))
        skips = [x]
        for i, kind in enumerate(self.down_block_types):
            x, block_skips = DownBlock2D(
                channels[i],
                heads=self.attention_heads[i] if kind == "CrossAttnDownBlock2D" else None,
                transformer_layers=self.transformer_layers_per_block[i],
                num_layers=self.layers_per_block[i],
                add_downsample=i < len(channels) - 1,
                downsample_padding=self.downsample_padding,
                name=f"down_blocks_{i}",
                **common,
            )(x, emb, context)
            skips.extend(block_skips)

        x = MidBlock2D(
            channels[-1],
            heads=self.attention_heads[-1],
            transformer_layers=self.transformer_layers_per_block[-1],
            name="mid_block",
            **common,
        )(x, emb, context)

        n = len(channels)
        for i, kind in enumerate(self.up_block_types):
            r = n - 1 - i  # the down block this up block mirrors
            num_layers = self.layers_per_block[r] + 1
            block_skips, skips = skips[-num_layers:], skips[:-num_layers]
            x = UpBlock2D(
                channels[r],
                heads=self.attention_heads[r] if kind == "CrossAttnUpBlock2D" else None,
                transformer_layers=self.transformer_layers_per_block[r],
                num_layers=num_layers,
                add_upsample=i < n - 1,
                name=f"up_blocks_{i}",
                **common,
            )(x, block_skips, emb, context, skips[-1].shape[1:3] if i < n - 1 else None)

        x = nn.silu(group_norm(self.groups, self.norm_eps, "conv_norm_out", self.dtype)(x))
        return conv(self.out_channels, 3, "conv_out", self.dtype)(x)
