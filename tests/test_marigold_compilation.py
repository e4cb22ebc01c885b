"""marigold_jax.compilation: the CPU compiler options take effect, `jit` behaves as jax.jit, freed memory goes back."""

import ctypes
import os

import jax
import jax.numpy as jnp
import numpy as np

from marigold_jax.compilation import compiler_options, jit, release_freed_memory


def _conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def test_cpu_options_turn_off_ynn_fusions():
    x, w = jnp.ones((1, 32, 32, 64)), jnp.ones((3, 3, 64, 64))  # small convs never go to YNNPACK
    default = jax.jit(_conv).lower(x, w).compile().as_text()
    ours = jax.jit(_conv, compiler_options=compiler_options("cpu")).lower(x, w).compile().as_text()
    assert "__ynn_fusion" in default
    assert "__ynn_fusion" not in ours
    assert compiler_options("tpu") is None and compiler_options("gpu") is None


def test_jit_matches_jax_jit_with_static_arguments():
    calls = []

    @jit(static_argnames=("power",))
    def f(x, power):
        calls.append(power)
        return x ** power

    x = jnp.arange(4.0)
    np.testing.assert_array_equal(f(x, power=2), x ** 2)
    np.testing.assert_array_equal(f(x + 1, power=2), (x + 1) ** 2)
    np.testing.assert_array_equal(f(x, power=3), x ** 3)
    assert calls == [2, 3]  # traced once per static value, as jax.jit
    assert f.__name__ == "f"


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_release_freed_memory_returns_heap_pages_to_the_os():
    blocks = [ctypes.create_string_buffer(1 << 16) for _ in range(2048)]  # 128 MiB of blocks below mmap's threshold
    newest = blocks.pop()  # stays allocated, so that glibc cannot shrink the heap from its top by itself
    del blocks
    before = _rss_bytes()
    assert release_freed_memory()
    assert _rss_bytes() < before - (64 << 20)
    del newest
