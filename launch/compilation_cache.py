"""JAX's persistent compilation cache for the command lines: a second run of a command compiles nothing.

Compiled programs are keyed by the program, its shapes and shardings, the compiler options and the jax/jaxlib
version, so a stale entry is never used; the cache only grows (delete the folder to reclaim space).
"""

import os

# JAX's own variable wins, so that tests and shared machines can point every command at one folder.
DEFAULT_DIR = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dav2-marigold-jax", "xla")


def enable(path: str | None) -> str | None:
    """Cache every compiled program in `path` (local or `gs://...`; None or "off": no cache). Call before the first
    compilation."""
    import jax
    from etils import epath

    if path is None or path == "off":
        return None
    epath.Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # default 1 s would skip small programs
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
