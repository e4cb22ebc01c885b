"""The CLIP text encoder (`transformers.CLIPTextModel`) in Flax, and the token ids of Marigold's empty prompt.

Marigold conditions its U-Net on the encoding of the empty prompt only, so no tokenizer is needed beyond the two
special tokens. Submodule names mirror transformers (`embeddings.token_embedding`, `encoder.layers_N.self_attn.q_proj`,
`final_layer_norm`), so converting its safetensors is a mechanical renaming.
"""

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from marigold_jax.layers import dense, dot_product_attention, layer_norm, partitioned

_ACTIVATIONS = {
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
}


class CLIPAttention(nn.Module):
    """Causal multi-head self-attention with biased projections. x: [B, L, C] → [B, L, C]."""

    hidden_size: int
    heads: int
    attention_impl: str = "auto"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, n, c = x.shape
        proj = lambda name: dense(c, ("embed", "heads"), name, self.dtype)(x).reshape(b, n, self.heads, c // self.heads)
        o = dot_product_attention(
            proj("q_proj"), proj("k_proj"), proj("v_proj"), is_causal=True, implementation=self.attention_impl
        )
        return dense(c, ("heads", "embed"), "out_proj", self.dtype)(o.reshape(b, n, c))


class CLIPMLP(nn.Module):
    """fc1 → activation → fc2. x: [B, L, C] → [B, L, C]."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _ACTIVATIONS[self.hidden_act](dense(self.intermediate_size, ("embed", "mlp"), "fc1", self.dtype)(x))
        return dense(self.hidden_size, ("mlp", "embed"), "fc2", self.dtype)(h)


class _LayerFields(nn.Module):
    """The fields of one pre-LayerNorm encoder layer, shared by `CLIPEncoderLayer` and `CLIPEncoder`."""

    hidden_size: int
    heads: int
    intermediate_size: int
    hidden_act: str
    eps: float
    attention_impl: str = "auto"
    dtype: Any = jnp.float32

    def _layer(self, name):
        return CLIPEncoderLayer(
            self.hidden_size,
            self.heads,
            self.intermediate_size,
            self.hidden_act,
            self.eps,
            self.attention_impl,
            self.dtype,
            name=name,
        )


class CLIPEncoderLayer(_LayerFields):
    """Pre-LayerNorm transformer layer. x: [B, L, C] → [B, L, C]."""

    @nn.compact
    def __call__(self, x):
        attn = CLIPAttention(self.hidden_size, self.heads, self.attention_impl, self.dtype, name="self_attn")
        x = x + attn(layer_norm(self.eps, "layer_norm1", self.dtype)(x))
        mlp = CLIPMLP(self.hidden_size, self.intermediate_size, self.hidden_act, self.dtype, name="mlp")
        return x + mlp(layer_norm(self.eps, "layer_norm2", self.dtype)(x))


class CLIPEmbeddings(nn.Module):
    """Token plus learned position embeddings. input_ids: [B, L] int → [B, L, C]."""

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids):
        embed = lambda n, name: nn.Embed(
            n,
            self.hidden_size,
            dtype=self.dtype,
            embedding_init=partitioned(nn.initializers.normal(0.02), None, "embed"),
            name=name,
        )
        positions = jnp.arange(input_ids.shape[-1])[None]
        return embed(self.vocab_size, "token_embedding")(input_ids) + embed(
            self.max_position_embeddings, "position_embedding"
        )(positions)


class CLIPEncoder(_LayerFields, kw_only=True):
    """`num_layers` encoder layers (`layers_N`). x: [B, L, C] → [B, L, C]."""

    num_layers: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.num_layers):
            x = self._layer(f"layers_{i}")(x)
        return x


class CLIPTextModel(nn.Module):
    """transformers `CLIPTextModel`: `__call__(input_ids [B, L]) → last_hidden_state [B, L, hidden_size]` (after the
    final LayerNorm, with the causal mask, no padding mask). SD2 uses OpenCLIP-H: 23 layers, width 1024, GELU."""

    vocab_size: int = 49408
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 23
    num_attention_heads: int = 16
    max_position_embeddings: int = 77
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_impl: str = "auto"
    dtype: Any = jnp.float32  # compute dtype; parameters stay float32

    @classmethod
    def from_config(cls, config, **kwargs):
        """Build from a transformers `text_encoder/config.json` dict; `kwargs` set `dtype`, `attention_impl`."""
        act = config.get("hidden_act", "quick_gelu")
        if act not in _ACTIVATIONS:
            raise ValueError(f"text encoder config has hidden_act={act!r}; supported: {sorted(_ACTIVATIONS)}")
        return cls(
            vocab_size=config.get("vocab_size", 49408),
            hidden_size=config.get("hidden_size", 512),
            intermediate_size=config.get("intermediate_size", 2048),
            num_hidden_layers=config.get("num_hidden_layers", 12),
            num_attention_heads=config.get("num_attention_heads", 8),
            max_position_embeddings=config.get("max_position_embeddings", 77),
            hidden_act=act,
            layer_norm_eps=config.get("layer_norm_eps", 1e-5),
            **kwargs,
        )

    @nn.compact
    def __call__(self, input_ids):
        if input_ids.shape[-1] > self.max_position_embeddings:
            raise ValueError(
                f"input_ids has {input_ids.shape[-1]} tokens; the text encoder takes at most "
                f"{self.max_position_embeddings}"
            )
        x = CLIPEmbeddings(
            self.vocab_size, self.hidden_size, self.max_position_embeddings, self.dtype, name="embeddings"
        )(input_ids)
        x = CLIPEncoder(
            hidden_size=self.hidden_size,
            heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act=self.hidden_act,
            eps=self.layer_norm_eps,
            attention_impl=self.attention_impl,
            dtype=self.dtype,
            num_layers=self.num_hidden_layers,
            name="encoder",
        )(x)
        return layer_norm(self.layer_norm_eps, "final_layer_norm", self.dtype)(x)


def empty_prompt_ids(tokenizer_dir):
    """Token ids of the empty prompt as diffusers Marigold tokenises it (`padding="do_not_pad"`): [[BOS, EOS]],
    int32 [1, 2]. Reads the special tokens from `tokenizer_config.json` (or `special_tokens_map.json`) and their ids
    from `tokenizer.json` or `vocab.json`, so no tokenizer library is needed."""
    read = lambda name: _read_json(os.path.join(tokenizer_dir, name))
    specials = {**(read("special_tokens_map.json") or {}), **(read("tokenizer_config.json") or {})}
    content = lambda t: t["content"] if isinstance(t, dict) else t
    bos = content(specials.get("bos_token", "<|startoftext|>"))
    eos = content(specials.get("eos_token", "<|endoftext|>"))
    vocab = {}
    fast = read("tokenizer.json")
    if fast is not None:
        vocab.update(fast["model"]["vocab"])
        vocab.update({t["content"]: t["id"] for t in fast.get("added_tokens", [])})
    vocab.update(read("vocab.json") or {})
    added = (read("tokenizer_config.json") or {}).get("added_tokens_decoder", {})
    vocab.update({content(t): int(i) for i, t in added.items()})
    missing = [t for t in (bos, eos) if t not in vocab]
    if missing:
        raise ValueError(
            f"cannot tokenise the empty prompt: {missing} not found in {tokenizer_dir} (expected a CLIP tokenizer "
            "folder with tokenizer.json or vocab.json, as diffusers writes it)"
        )
    return np.array([[vocab[bos], vocab[eos]]], np.int32)


def _read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)
