"""Marigold training pieces against the released algorithms restated in PyTorch / numpy and against diffusers."""

import numpy as np
import pytest

from marigold_jax import noise, objective, schedulers, targets

EPS = np.finfo(np.float32).eps


def released_multi_res_noise(base, ratios, levels, strength):
    """The released `multi_res_noise_like` (strategy "original") in PyTorch, its random draws replaced by the given
    ones: the level-i Gaussian of size h x w is the top-left block of levels[i]. NHWC in and out."""
    import torch

    x = torch.from_numpy(base).permute(0, 3, 1, 2)
    b, c, h, w = x.shape
    s = torch.from_numpy(strength).reshape(-1, 1, 1, 1)
    up = torch.nn.Upsample(size=(h, w), mode="bilinear")
    out = x.clone()
    for i in range(10):
        r = torch.tensor([ratios[i]], dtype=torch.float32)
        h, w = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        level = torch.from_numpy(np.ascontiguousarray(levels[i][:, :h, :w])).permute(0, 3, 1, 2)
        out += up(level) * s**i
        if h == 1 or w == 1:
            break
    out = out / out.std()
    return out.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("shape", [(2, 12, 20, 4), (3, 30, 40, 4), (2, 44, 152, 4)])
def test_multi_res_noise_equals_the_released_algorithm_on_the_same_draws(shape):
    rng = np.random.default_rng(shape[1])
    base = rng.standard_normal(shape).astype(np.float32)
    ratios = (rng.random(noise.LEVELS) * 2 + 2).astype(np.float32)
    levels = rng.standard_normal((noise.LEVELS, *shape)).astype(np.float32)
    strength = (0.9 * rng.integers(0, 1000, shape[0]) / 1000).astype(np.float32)
    strength[0] = 0.0  # level 0 still counts with weight 0 ** 0 = 1
    ours = np.asarray(noise.multi_res_noise_from_draws(base, ratios, levels, strength))
    ref = released_multi_res_noise(base, ratios, levels, strength)
    np.testing.assert_allclose(ours, ref, atol=16 * EPS * np.sqrt(noise.LEVELS), rtol=0)
    assert abs(ours.std(ddof=1) - 1.0) < 1e-5


def test_level_sizes_shrink_cumulatively_and_stop_after_reaching_one():
    ratios = np.full(noise.LEVELS, 3.0, np.float32)
    hs, ws, active = (np.asarray(a) for a in noise.level_sizes(60, 80, ratios))
    # 60 -> 60 (r^0) -> 20 (/3) -> 2 (/9) -> 1 (/27), cumulative; the loop stops after the level that reached 1
    assert hs[:4].tolist() == [60, 20, 2, 1] and ws[:4].tolist() == [80, 26, 2, 1]
    assert active.tolist() == [True] * 4 + [False] * 6


def test_multi_res_noise_from_a_key_is_unit_std_and_reproducible():
    import jax

    a = noise.multi_res_noise(jax.random.key(0), (2, 8, 12, 4), np.array([0.9, 0.1], np.float32))
    b = noise.multi_res_noise(jax.random.key(0), (2, 8, 12, 4), np.array([0.9, 0.1], np.float32))
    np.testing.assert_array_equal(a, b)
    assert abs(float(np.std(a, ddof=1)) - 1.0) < 1e-5


def test_latent_mask_is_the_released_max_pool_of_invalid_pixels():
    import torch

    rng = np.random.default_rng(0)
    valid = rng.random((2, 24, 32)) > 0.02
    valid[1] = True
    ours = np.asarray(objective.latent_valid_mask(valid))
    invalid = torch.from_numpy(~valid).float()[:, None]
    ref = ~torch.nn.functional.max_pool2d(invalid, 8, 8).bool()[:, 0].numpy()
    np.testing.assert_array_equal(ours, ref)
    assert ours[1].all() and not ours[0].all()


def test_masked_mse_is_the_mean_over_valid_latent_elements_of_the_batch():
    import torch

    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((2, 2, 3, 8, 4)).astype(np.float32)
    mask = np.zeros((2, 3, 8), bool)
    mask[0, 1, 2:5] = True
    mask[1, 0, :] = True
    full = torch.from_numpy(np.repeat(mask[..., None], 4, -1))
    ref = torch.nn.functional.mse_loss(torch.from_numpy(pred)[full], torch.from_numpy(target)[full]).item()
    assert abs(float(objective.masked_mse(pred, target, mask)) - ref) <= 4 * EPS * abs(ref)
    assert abs(float(objective.masked_mse(pred, target)) - float(np.mean((pred - target) ** 2))) <= 4 * EPS
    assert float(objective.masked_mse(pred, target, np.zeros_like(mask))) == 0.0


def test_noised_latents_and_velocity_equal_diffusers_ddpm_with_zero_snr():
    import torch
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                        prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    ac = schedulers.alphas_cumprod(schedulers.SchedulerConfig())
    assert ac[-1] == 0.0
    rng = np.random.default_rng(2)
    z0, eps = rng.standard_normal((2, 4, 2, 3, 4)).astype(np.float32)
    t = np.array([0, 417, 998, 999], np.int32)
    x_t, v = objective.noisy_latents_and_velocity(ac, z0, eps, t)
    args = (torch.from_numpy(z0), torch.from_numpy(eps), torch.from_numpy(t).long())
    np.testing.assert_allclose(x_t, ref.add_noise(*args).numpy(), atol=4 * EPS, rtol=0)
    np.testing.assert_allclose(v, ref.get_velocity(*args).numpy(), atol=4 * EPS, rtol=0)
    np.testing.assert_array_equal(np.asarray(v)[3], -z0[3])  # t = 999: pure noise in, v = -z0


def test_timesteps_are_uniform_over_all_training_steps():
    import jax

    t = np.asarray(objective.sample_timesteps(jax.random.key(0), 20_000))
    assert t.min() == 0 and t.max() == 999
    assert abs(t.mean() - 499.5) < 5 * 288.7 / np.sqrt(t.size)


def test_depth_normalisation_equals_torch_quantiles():
    import torch

    rng = np.random.default_rng(3)
    depth = rng.uniform(0.5, 20, (16, 24)).astype(np.float32)
    valid = rng.random((16, 24)) > 0.2
    depth[~valid] = 0.0
    ours = targets.normalize_depth(depth, valid)
    d = torch.from_numpy(depth)
    lo, hi = torch.quantile(d[torch.from_numpy(valid) & (d > 0)], torch.tensor([0.02, 0.98]))
    ref = ((d - lo) / (hi - lo) * 2 - 1).clip(-1, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=8 * EPS, rtol=0)
    assert (ours[~valid] == -1.0).all()  # depth 0 clips to the near end; only the latent mask excludes it
    target, mask = targets.encode_target(dict(depth=depth, valid=valid), "depth")
    assert target.shape == (16, 24, 3) and (target == ours[..., None]).all() and (mask == valid).all()


def test_lighting_targets_share_one_scale_for_shading_and_residual():
    rng = np.random.default_rng(4)
    albedo = rng.uniform(-0.1, 1.1, (8, 8, 3)).astype(np.float32)
    shading = rng.uniform(0, 5, (8, 8, 3)).astype(np.float32)
    residual = rng.uniform(0, 1, (8, 8, 3)).astype(np.float32)
    out = targets.lighting_targets(albedo, shading, residual)
    cut = max(np.quantile(shading, 0.98), np.quantile(residual, 0.98))
    expected = np.concatenate([np.clip(albedo, 0, 1), np.clip(shading, 0, cut) / cut, np.clip(residual, 0, cut) / cut],
                              -1) * 2 - 1
    np.testing.assert_allclose(out, expected, atol=4 * EPS, rtol=0)
    assert out.min() >= -1 and out.max() <= 1
