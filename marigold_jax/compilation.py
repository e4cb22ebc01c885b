"""`jit`: `jax.jit` with XLA compiler options chosen per backend when the function is first called.

On the CPU backend, jaxlib 0.10's YNNPACK library fusions (on by default) run the U-Net's matmuls and 3x3
convolutions slower than XLA's Eigen kernels: one SD2 U-Net step at a 64x64 latent takes 6.4 s with them and
5.1 s without them on a 2-core AVX-512 machine, with the same outputs to 3e-6 (VAE and ViT times unchanged).
`CPU_OPTIONS` turns them off for our programs only; other backends compile with XLA's defaults. The backend is
looked up at the first call, not at import, so importing the package never initialises JAX's backends.

Compiling the SD2 U-Net leaves ~0.4 GiB of freed compiler memory in the C heap, which glibc keeps mapped: after
each call that compiled, `jit` hands it back to the OS (`malloc_trim`; nothing happens on other C libraries). The
steady resident size of a U-Net step then drops from 4.1 to 3.8 GiB (3.2 GiB of it parameters).
"""

import ctypes
import ctypes.util
import functools

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(backend: str) -> dict | None:
    """The XLA compiler options our programs use on `backend` ("cpu", "gpu", "tpu"), or None for the defaults."""
    return dict(CPU_OPTIONS) if backend == "cpu" else None


def jit(fun=None, **jit_kwargs):
    """`jax.jit(fun, **jit_kwargs)` with `compiler_options(jax.default_backend())`; usable as a decorator, bare or
    with keyword arguments (`@jit(static_argnames=...)`)."""
    if fun is None:
        return functools.partial(jit, **jit_kwargs)
    compiled = {}

    @functools.wraps(fun)
    def call(*args, **kwargs):
        backend = jax.default_backend()
        if backend not in compiled:
            compiled[backend] = jax.jit(fun, compiler_options=compiler_options(backend), **jit_kwargs)
        jitted = compiled[backend]
        programs = jitted._cache_size()
        out = jitted(*args, **kwargs)
        if jitted._cache_size() > programs:
            release_freed_memory()
        return out

    return call


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc `malloc_trim(0)`); False where the C library lacks it."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
