"""Marigold's annealed multi-resolution ("pyramid") training noise, exactly as the released trainer draws it.

Released algorithm, for latents of shape [B, H, W, C] and per-sample strengths s_b (0.9 t_b / 1000 when annealed):
start from a Gaussian n at full resolution; for i = 0..9 draw one r ~ U[2, 4) for the whole batch, shrink the
*running* size h <- max(1, floor(h / r^i)), w likewise (so r^i divides the already reduced size), add a Gaussian of
size h x w, bilinearly upsampled to H x W (align_corners=False), times s_b^i, and stop after the level at which h or w
reached 1. Level 0 adds a second full-resolution Gaussian with weight s^0 = 1 whatever s. Finally n is divided by
its standard deviation over the whole batch tensor (unbiased).

Under `jit` shapes cannot depend on the random r, so each level draws a full-size [B, H, W, C] Gaussian and uses its
top-left h x w block through interpolation matrices built from the traced (h, w): the same arithmetic as resizing
the block, with static shapes. The levels after the stop get weight 0.
"""

import jax
import jax.numpy as jnp

LEVELS = 10


def upsample_matrix(size, out_size, max_size):
    """Bilinear (align_corners=False) upsampling of the first `size` of `max_size` rows to `out_size` rows.

    size: traced int scalar (1 <= size <= max_size) → float32 [out_size, max_size], zero beyond column `size`,
    as PyTorch's `Upsample(mode="bilinear")` computes source indices and weights.
    """
    size_f = jnp.asarray(size, jnp.float32)
    scale = size_f / jnp.float32(out_size)
    src = jnp.maximum((jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale - 0.5, 0.0)
    i0 = jnp.floor(src).astype(jnp.int32)
    i1 = jnp.where(i0 < size - 1, i0 + 1, i0)
    frac = src - i0.astype(jnp.float32)
    cols = jnp.arange(max_size)
    return (1.0 - frac)[:, None] * (cols[None, :] == i0[:, None]) + frac[:, None] * (cols[None, :] == i1[:, None])


def level_sizes(height, width, ratios):
    """(heights, widths, active) of the levels: int32 [LEVELS] each and bool [LEVELS] (False after the stop).

    ratios: float32 [LEVELS], the r drawn per level (in [2, 4)).
    """

    def body(carry, ir):
        h, w, going = carry
        i, r = ir
        div = r ** i.astype(jnp.float32)
        h = jnp.maximum(1, jnp.floor(h.astype(jnp.float32) / div).astype(jnp.int32))
        w = jnp.maximum(1, jnp.floor(w.astype(jnp.float32) / div).astype(jnp.int32))
        return (h, w, going & (h != 1) & (w != 1)), (h, w, going)

    start = (jnp.int32(height), jnp.int32(width), jnp.bool_(True))
    _, (hs, ws, active) = jax.lax.scan(body, start, (jnp.arange(LEVELS), jnp.asarray(ratios, jnp.float32)))
    return hs, ws, active


def multi_res_noise_from_draws(base, ratios, levels, strength):
    """The noise from given draws: base [B, H, W, C] N(0, 1); ratios [LEVELS] in [2, 4); levels [LEVELS, B, H, W, C]
    N(0, 1) of which level i uses the top-left h_i x w_i block; strength [B] (s_b) → float32 [B, H, W, C]."""
    _, height, width, _ = base.shape
    hs, ws, active = level_sizes(height, width, ratios)
    weights = jnp.where(
        active[:, None], jnp.asarray(strength, jnp.float32)[None, :] ** jnp.arange(LEVELS, dtype=jnp.float32)[:, None],
        0.0,
    )  # [LEVELS, B]
    up_h = jax.vmap(lambda h: upsample_matrix(h, height, height))(hs)  # [LEVELS, H, H]
    up_w = jax.vmap(lambda w: upsample_matrix(w, width, width))(ws)  # [LEVELS, W, W]
    hp = jax.lax.Precision.HIGHEST
    added = jnp.einsum("lyh,lbhwc,lxw,lb->byxc", up_h, levels, up_w, weights, precision=hp)
    noise = base + added
    return noise / jnp.std(noise, ddof=1)


def multi_res_noise(key, shape, strength):
    """Annealed multi-resolution noise [B, H, W, C] (float32) for per-sample strengths `strength` [B]."""
    k_base, k_ratio, k_levels = jax.random.split(key, 3)
    base = jax.random.normal(k_base, shape, jnp.float32)
    ratios = jax.random.uniform(k_ratio, (LEVELS,), jnp.float32) * 2.0 + 2.0
    levels = jax.random.normal(k_levels, (LEVELS, *shape), jnp.float32)
    return multi_res_noise_from_draws(base, ratios, levels, strength)
