"""The public API runs the fast attention by default: "auto" is heads-first on the CPU backend and XLA's kernel
elsewhere, decided when the model is traced (not at import)."""

import jax
import jax.numpy as jnp
import pytest

import dav2_jax
import marigold_jax.layers
from dav2_jax import vit
from marigold_jax.attention import Attention


def _count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


def _trace_dav2():
    model = dav2_jax.DepthAnythingV2("vits")
    x = jnp.zeros((1, 28, 28, 3))
    jax.eval_shape(lambda: model.init(jax.random.key(0), x))


def _trace_marigold():
    layer = Attention(heads=2, dim_head=4, out_dim=8)
    x = jnp.zeros((1, 5, 8))
    jax.eval_shape(lambda: layer.init(jax.random.key(0), x))


@pytest.mark.parametrize("module, trace", [(vit, _trace_dav2), (marigold_jax.layers, _trace_marigold)])
@pytest.mark.parametrize("backend, expected", [("cpu", "heads_first"), ("tpu", "xla"), ("gpu", "xla")])
def test_default_attention_follows_the_backend_at_trace_time(monkeypatch, module, trace, backend, expected):
    heads_first = _count_calls(monkeypatch, module, "_attention_heads_first")
    xla = _count_calls(monkeypatch, jax.nn, "dot_product_attention")
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    trace()
    assert (bool(heads_first), bool(xla)) == (expected == "heads_first", expected == "xla")


def test_an_unknown_attention_implementation_is_refused_with_the_choices():
    q = jnp.zeros((1, 3, 2, 4))
    with pytest.raises(ValueError, match=r"\('auto', 'xla', 'heads_first'\)"):
        vit.attention(q, q, q, "flash")
    with pytest.raises(ValueError, match=r"\('auto', 'xla', 'heads_first'\)"):
        marigold_jax.layers.dot_product_attention(q, q, q, implementation="flash")
