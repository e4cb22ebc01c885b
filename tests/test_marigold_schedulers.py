"""Schedulers equal diffusers' DDIMScheduler / LCMScheduler for the Marigold checkpoints' configs, to float32
precision."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LCMScheduler

from marigold_jax import schedulers

MARIGOLD_V1_1 = dict(
    _class_name="DDIMScheduler",
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="trailing",
)
MARIGOLD_V1_0 = {**MARIGOLD_V1_1, "rescale_betas_zero_snr": False, "timestep_spacing": "leading"}
MARIGOLD_LCM = dict(
    _class_name="LCMScheduler",
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    num_train_timesteps=1000,
    original_inference_steps=50,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=False,
    set_alpha_to_one=True,
    steps_offset=1,
    timestep_scaling=10.0,
    timestep_spacing="leading",
)
DDIM_CONFIGS = {
    "v1.1": MARIGOLD_V1_1,
    "v1.0": MARIGOLD_V1_0,
    "linspace-epsilon-clip": {
        **MARIGOLD_V1_0, "timestep_spacing": "linspace", "prediction_type": "epsilon", "clip_sample": True
    },
    "trailing-sample-alpha1": {**MARIGOLD_V1_1, "prediction_type": "sample", "set_alpha_to_one": True},
}
LCM_CONFIGS = {
    "lcm": MARIGOLD_LCM,
    "lcm-epsilon-zero-snr": {**MARIGOLD_LCM, "prediction_type": "epsilon", "rescale_betas_zero_snr": True},
}


def _diffusers(config, alphas_cumprod=None):
    """diffusers' scheduler for `config`; with `alphas_cumprod`, running on that schedule instead of its own."""
    kwargs = {k: v for k, v in config.items() if k != "_class_name"}
    ref = {"DDIMScheduler": DDIMScheduler, "LCMScheduler": LCMScheduler}[config["_class_name"]](**kwargs)
    if alphas_cumprod is not None:
        ref.alphas_cumprod = torch.from_numpy(alphas_cumprod)
        ref.final_alpha_cumprod = torch.tensor(1.0) if config["set_alpha_to_one"] else ref.alphas_cumprod[0]
    return ref


@pytest.mark.parametrize("name", list(DDIM_CONFIGS) + list(LCM_CONFIGS))
def test_training_schedule_equals_diffusers(name):
    config = {**DDIM_CONFIGS, **LCM_CONFIGS}[name]
    ref = _diffusers(config)
    ours = schedulers.SchedulerConfig.from_dict(config)
    # alpha_bar in [0, 1] to float32 resolution. The zero-SNR rescale subtracts two nearly equal square roots, so
    # one-ulp differences of PyTorch's vectorised float32 linspace reach ~4e-7 in absolute alpha_bar there, and its
    # betas (1 - ratios of those tiny alpha_bar) are only compared without the rescale.
    np.testing.assert_allclose(schedulers.alphas_cumprod(ours), ref.alphas_cumprod.numpy(), rtol=1e-6, atol=1e-6)
    if not config["rescale_betas_zero_snr"]:
        np.testing.assert_allclose(schedulers.betas(ours), ref.betas.numpy(), rtol=1e-6)


def test_zero_snr_rescale_ends_at_zero_alpha_bar_and_keeps_the_first():
    ours = schedulers.SchedulerConfig.from_dict(MARIGOLD_V1_1)
    plain = schedulers.SchedulerConfig.from_dict({**MARIGOLD_V1_1, "rescale_betas_zero_snr": False})
    ac, ac_plain = schedulers.alphas_cumprod(ours), schedulers.alphas_cumprod(plain)
    assert ac[-1] == 0.0
    np.testing.assert_allclose(ac[0], ac_plain[0], rtol=1e-6)


def _run_both(config, steps, ref, tol):
    """Step diffusers' `ref` and our plan side by side from the same samples; assert every output within `tol`."""
    ref.set_timesteps(steps)
    sampler, consts = schedulers.make_plan(schedulers.SchedulerConfig.from_dict(config), steps)
    np.testing.assert_array_equal(consts["timesteps"], ref.timesteps.numpy())
    lcm = config["_class_name"] == "LCMScheduler"
    rng = np.random.default_rng(steps)
    sample = rng.standard_normal((2, 4, 5, 3)).astype(np.float32)
    ref_generator, our_generator = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for i, t in enumerate(ref.timesteps):
        model_output = rng.standard_normal(sample.shape).astype(np.float32)
        args = torch.from_numpy(model_output), t, torch.from_numpy(sample)
        expected = ref.step(*args, generator=ref_generator) if lcm else ref.step(*args)
        noise = torch.randn(sample.shape, generator=our_generator).numpy() if lcm and i < steps - 1 else None
        got, x0 = schedulers.step(sampler, model_output, sample, {k: v[i] for k, v in consts.items()}, noise)
        ref_x0 = expected.denoised if lcm else expected.pred_original_sample
        np.testing.assert_allclose(np.asarray(x0), ref_x0.numpy(), **tol)
        np.testing.assert_allclose(np.asarray(got), expected.prev_sample.numpy(), **tol)
        sample = expected.prev_sample.numpy()


@pytest.mark.parametrize("name", list(DDIM_CONFIGS))
@pytest.mark.parametrize("steps", [1, 3, 4, 10, 50])
def test_ddim_timesteps_and_every_step_equal_diffusers(name, steps):
    config = DDIM_CONFIGS[name]
    ac = schedulers.alphas_cumprod(schedulers.SchedulerConfig.from_dict(config))
    _run_both(config, steps, _diffusers(config, ac), dict(rtol=1e-6, atol=1e-6))


@pytest.mark.parametrize("name", list(LCM_CONFIGS))
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_lcm_timesteps_and_every_step_equal_diffusers(name, steps):
    config = LCM_CONFIGS[name]
    ac = schedulers.alphas_cumprod(schedulers.SchedulerConfig.from_dict(config))
    _run_both(config, steps, _diffusers(config, ac), dict(rtol=1e-6, atol=1e-6))


@pytest.mark.parametrize(
    "config,steps", [(MARIGOLD_V1_1, 1), (MARIGOLD_V1_1, 4), (MARIGOLD_V1_0, 50), (MARIGOLD_LCM, 1), (MARIGOLD_LCM, 4)]
)
def test_marigold_samplers_equal_diffusers_on_its_own_schedule(config, steps):
    _run_both(config, steps, _diffusers(config), dict(rtol=1e-6, atol=1e-6))


def test_lcm_boundary_scalings_equal_diffusers():
    ref = _diffusers(MARIGOLD_LCM)
    ts = np.array([999, 759, 499, 259, 19, 0])
    c_skip, c_out = schedulers.lcm_boundary_scalings(ts, 10.0)
    for t, s, o in zip(ts, c_skip, c_out):
        ref_s, ref_o = ref.get_scalings_for_boundary_condition_discrete(torch.tensor(t))
        np.testing.assert_allclose([s, o], [float(ref_s), float(ref_o)], rtol=1e-6)
    assert c_skip[-1] == 1.0 and c_out[-1] == 0.0


@pytest.mark.parametrize("rescale", [False, True])
def test_add_noise_and_velocity_equal_ddpm(rescale):
    config = {**MARIGOLD_V1_1, "rescale_betas_zero_snr": rescale}
    ref = DDPMScheduler(**{k: v for k, v in config.items() if k not in ("_class_name", "set_alpha_to_one")})
    ac = schedulers.alphas_cumprod(schedulers.SchedulerConfig.from_dict(config))
    rng = np.random.default_rng(0)
    x0, noise = (rng.standard_normal((4, 6, 5, 4)).astype(np.float32) for _ in range(2))
    t = np.array([0, 17, 500, 999])
    args = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    tol = dict(rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(schedulers.add_noise(ac, x0, noise, t), ref.add_noise(*args).numpy(), **tol)
    np.testing.assert_allclose(schedulers.get_velocity(ac, x0, noise, t), ref.get_velocity(*args).numpy(), **tol)


def test_config_round_trips_through_diffusers_json():
    for config in [*DDIM_CONFIGS.values(), *LCM_CONFIGS.values()]:
        ours = schedulers.SchedulerConfig.from_dict(config)
        written = ours.to_dict()
        assert schedulers.SchedulerConfig.from_dict(written) == ours
        reloaded = _diffusers(written)
        np.testing.assert_array_equal(reloaded.alphas_cumprod.numpy(), _diffusers(config).alphas_cumprod.numpy())


def test_unknown_scheduler_is_refused_with_the_expected_kinds():
    with pytest.raises(ValueError, match="DDIMScheduler"):
        schedulers.SchedulerConfig.from_dict({"_class_name": "EulerDiscreteScheduler"})
