"""Noise schedules and samplers as pure functions: DDPM training schedule, DDIM and LCM steps.

Everything a sampler needs per inference step is computed up front on the host (`make_plan`) as arrays, so that
the denoising loop is a `lax.scan` over those arrays and the step functions are plain `jnp` arithmetic. Values
equal diffusers' `DDIMScheduler` / `LCMScheduler` (float32 schedule, float64 cumulative product as PyTorch's CPU
`cumprod` accumulates), including their quirks, reproduced on purpose:
- DDIM's previous timestep is always `t - num_train_timesteps // num_inference_steps`, whatever the spacing;
- LCM's last step uses its own timestep as the "previous" one and returns the denoised sample without noise.
"""

import dataclasses
import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

SCHEDULER_KINDS = ("DDIMScheduler", "LCMScheduler")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    """The fields of a diffusers `scheduler_config.json` that change the numbers (defaults: Marigold v1.1)."""

    kind: str = "DDIMScheduler"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    trained_betas: tuple[float, ...] | None = None
    rescale_betas_zero_snr: bool = True
    prediction_type: str = "v_prediction"
    set_alpha_to_one: bool = False
    steps_offset: int = 1
    timestep_spacing: str = "trailing"
    clip_sample: bool = False
    clip_sample_range: float = 1.0
    original_inference_steps: int = 50
    timestep_scaling: float = 10.0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "SchedulerConfig":
        """Build from a parsed `scheduler_config.json`; unknown keys are ignored, defaults follow diffusers'."""
        kind = config.get("_class_name", "DDIMScheduler")
        if kind not in SCHEDULER_KINDS:
            raise ValueError(
                f"expected a scheduler in {SCHEDULER_KINDS}, found {kind!r}; Marigold checkpoints use one of these"
            )
        if config.get("thresholding", False):
            raise ValueError(
                "dynamic thresholding is not supported (no Marigold checkpoint uses it); set `thresholding` false"
            )
        lcm = kind == "LCMScheduler"
        defaults = dict(
            beta_start=0.00085 if lcm else 0.0001,
            beta_end=0.012 if lcm else 0.02,
            beta_schedule="scaled_linear" if lcm else "linear",
            rescale_betas_zero_snr=False,
            prediction_type="epsilon",
            set_alpha_to_one=True,
            steps_offset=0,
            timestep_spacing="leading",
            clip_sample=not lcm,
        )
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {**defaults, **{k: v for k, v in config.items() if k in fields and v is not None}}
        if values.get("trained_betas") is not None:
            values["trained_betas"] = tuple(values["trained_betas"])
        return cls(kind=kind, **values)

    @classmethod
    def from_folder(cls, path: str) -> "SchedulerConfig":
        """Read `path/scheduler_config.json` (the `scheduler/` folder of a diffusers checkpoint)."""
        with open(os.path.join(path, "scheduler_config.json")) as f:
            return cls.from_dict(json.load(f))

    def to_dict(self) -> dict[str, Any]:
        """The diffusers `scheduler_config.json` content for this config."""
        out = {"_class_name": self.kind}
        keys = [f.name for f in dataclasses.fields(self) if f.name != "kind"]
        if self.kind == "DDIMScheduler":
            keys = [k for k in keys if k not in ("original_inference_steps", "timestep_scaling")]
        for k in keys:
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        out.update(thresholding=False, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
        return out


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas [T] so that the last alpha_bar is exactly 0 (Lin et al. 2023, Algorithm 1); float32."""
    betas = np.asarray(betas, np.float32)
    alphas_bar_sqrt = np.sqrt(_cumprod(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def betas(config: SchedulerConfig) -> np.ndarray:
    """The training noise schedule beta_t, [num_train_timesteps] float32."""
    n = config.num_train_timesteps
    if config.trained_betas is not None:
        out = np.asarray(config.trained_betas, np.float32)
    elif config.beta_schedule == "linear":
        out = np.linspace(config.beta_start, config.beta_end, n).astype(np.float32)
    elif config.beta_schedule == "scaled_linear":
        out = np.linspace(config.beta_start**0.5, config.beta_end**0.5, n).astype(np.float32) ** 2
    else:
        raise ValueError(f"expected beta_schedule 'linear' or 'scaled_linear', found {config.beta_schedule!r}")
    if config.rescale_betas_zero_snr:
        out = rescale_zero_terminal_snr(out)
    return out


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s), [num_train_timesteps] float32."""
    return _cumprod(np.float32(1.0) - betas(config))


def _cumprod(x: np.ndarray) -> np.ndarray:
    # PyTorch's CPU cumprod accumulates float32 in float64 and rounds each output.
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _expand(coef: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    coef = jnp.asarray(coef, x.dtype)
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


def add_noise(alphas_cumprod: jnp.ndarray, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """Forward diffusion x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise; x0, noise [B, ...], t [B] int."""
    a = jnp.asarray(alphas_cumprod, x0.dtype)[t]
    return _expand(jnp.sqrt(a), x0) * x0 + _expand(jnp.sqrt(1 - a), x0) * noise


def get_velocity(alphas_cumprod: jnp.ndarray, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """The v-prediction target v = sqrt(alpha_bar_t) noise - sqrt(1 - alpha_bar_t) x0; shapes as `add_noise`."""
    a = jnp.asarray(alphas_cumprod, x0.dtype)[t]
    return _expand(jnp.sqrt(a), x0) * noise - _expand(jnp.sqrt(1 - a), x0) * x0


@dataclasses.dataclass(frozen=True)
class Sampler:
    """The static (hashable, `jit`-static) part of a sampler: which update rule and how to read the model output."""

    kind: str
    prediction_type: str
    clip_sample: bool
    clip_sample_range: float


def ddim_timesteps(config: SchedulerConfig, num_inference_steps: int) -> np.ndarray:
    """DDIM timesteps, descending, int64, for `leading`, `trailing` or `linspace` spacing."""
    n_train = config.num_train_timesteps
    if not 1 <= num_inference_steps <= n_train:
        raise ValueError(f"expected 1 <= num_inference_steps <= {n_train}, found {num_inference_steps}")
    if config.timestep_spacing == "linspace":
        return np.linspace(0, n_train - 1, num_inference_steps).round()[::-1].astype(np.int64)
    if config.timestep_spacing == "leading":
        step_ratio = n_train // num_inference_steps
        ts = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].astype(np.int64)
        return ts + config.steps_offset
    if config.timestep_spacing == "trailing":
        step_ratio = n_train / num_inference_steps
        return np.round(np.arange(n_train, 0, -step_ratio)).astype(np.int64) - 1
    raise ValueError(
        f"expected timestep_spacing 'leading', 'trailing' or 'linspace', found {config.timestep_spacing!r}"
    )


def lcm_timesteps(config: SchedulerConfig, num_inference_steps: int) -> np.ndarray:
    """LCM timesteps, descending, int64: evenly spaced indices into the `original_inference_steps` schedule."""
    original = config.original_inference_steps
    if not 1 <= num_inference_steps <= original:
        raise ValueError(
            f"expected 1 <= num_inference_steps <= original_inference_steps={original}, found {num_inference_steps}"
        )
    k = config.num_train_timesteps // original
    origin = (np.arange(1, original + 1) * k - 1)[::-1]
    indices = np.floor(np.linspace(0, len(origin), num=num_inference_steps, endpoint=False)).astype(np.int64)
    return origin[indices]


def lcm_boundary_scalings(timesteps: np.ndarray, timestep_scaling: float) -> tuple[np.ndarray, np.ndarray]:
    """Consistency-model boundary conditions (c_skip, c_out) at discrete timesteps, sigma_data 0.5; float32."""
    st = np.asarray(timesteps, np.float32) * np.float32(timestep_scaling)
    c_skip = np.float32(0.25) / (st**2 + np.float32(0.25))
    c_out = st / np.sqrt(st**2 + np.float32(0.25))
    return c_skip.astype(np.float32), c_out.astype(np.float32)


def max_steps(config: SchedulerConfig) -> int:
    """The largest number of inference steps the sampler allows."""
    return config.num_train_timesteps if config.kind == "DDIMScheduler" else config.original_inference_steps


def make_plan(
    config: SchedulerConfig, num_inference_steps: int, pad_to: int | None = None
) -> tuple[Sampler, dict[str, np.ndarray]]:
    """The sampler and its per-step constants for `num_inference_steps` steps, to loop over.

    Constants, each [num_inference_steps] (or [pad_to], repeating the last step, so that one compiled loop with a
    dynamic trip count serves every step count): `timesteps` int32; `alpha_t`, `alpha_prev` float32 alpha_bar at
    the step's and at the previous timestep; for LCM `c_skip`, `c_out` float32 and `add_noise` bool (False on the
    last step); zeros/False for DDIM.
    """
    ac = alphas_cumprod(config)
    final = np.float32(1.0) if config.set_alpha_to_one else ac[0]
    n = num_inference_steps
    if config.kind == "DDIMScheduler":
        ts = ddim_timesteps(config, n)
        prev = ts - config.num_train_timesteps // n
        alpha_prev = np.where(prev >= 0, ac[np.maximum(prev, 0)], final)
        c_skip = c_out = np.zeros(n, np.float32)
        noise = np.zeros(n, bool)
    else:
        ts = lcm_timesteps(config, n)
        prev = np.concatenate([ts[1:], ts[-1:]])
        alpha_prev = ac[prev]
        c_skip, c_out = lcm_boundary_scalings(ts, config.timestep_scaling)
        noise = np.arange(n) != n - 1
    sampler = Sampler(config.kind, config.prediction_type, config.clip_sample, config.clip_sample_range)
    consts = dict(
        timesteps=ts.astype(np.int32),
        alpha_t=ac[ts].astype(np.float32),
        alpha_prev=alpha_prev.astype(np.float32),
        c_skip=c_skip,
        c_out=c_out,
        add_noise=noise,
    )
    if pad_to is not None:
        consts = {k: np.pad(v, (0, pad_to - n), mode="edge") for k, v in consts.items()}
    return sampler, consts


def predict_original(
    prediction_type: str, model_output: jnp.ndarray, sample: jnp.ndarray, alpha_t: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(x0, epsilon) implied by a model output of `prediction_type` at alpha_bar_t; arrays [B, ...]."""
    sqrt_a, sqrt_b = jnp.sqrt(alpha_t), jnp.sqrt(1 - alpha_t)
    if prediction_type == "epsilon":
        return (sample - sqrt_b * model_output) / sqrt_a, model_output
    if prediction_type == "sample":
        return model_output, (sample - sqrt_a * model_output) / sqrt_b
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_b * model_output, sqrt_a * model_output + sqrt_b * sample
    raise ValueError(f"expected prediction_type 'epsilon', 'sample' or 'v_prediction', found {prediction_type!r}")


def ddim_step(
    sampler: Sampler, model_output: jnp.ndarray, sample: jnp.ndarray, alpha_t: jnp.ndarray, alpha_prev: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One deterministic DDIM step (eta = 0): returns (x_prev, predicted x0), each like `sample`."""
    x0, eps = predict_original(sampler.prediction_type, model_output, sample, alpha_t)
    if sampler.clip_sample:
        x0 = jnp.clip(x0, -sampler.clip_sample_range, sampler.clip_sample_range)
    return jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1 - alpha_prev) * eps, x0


def lcm_step(
    sampler: Sampler,
    model_output: jnp.ndarray,
    sample: jnp.ndarray,
    alpha_t: jnp.ndarray,
    alpha_prev: jnp.ndarray,
    c_skip: jnp.ndarray,
    c_out: jnp.ndarray,
    add_noise: jnp.ndarray,
    noise: jnp.ndarray,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """One LCM step: denoised = c_out x0 + c_skip x_t, re-noised to alpha_prev unless it is the last step.

    Returns (x_prev, denoised); `noise` is like `sample` and ignored when `add_noise` is False.
    """
    x0, _ = predict_original(sampler.prediction_type, model_output, sample, alpha_t)
    if sampler.clip_sample:
        x0 = jnp.clip(x0, -sampler.clip_sample_range, sampler.clip_sample_range)
    denoised = c_out * x0 + c_skip * sample
    renoised = jnp.sqrt(alpha_prev) * denoised + jnp.sqrt(1 - alpha_prev) * noise
    return jnp.where(add_noise, renoised, denoised), denoised


def step(sampler: Sampler, model_output: jnp.ndarray, sample: jnp.ndarray, consts: dict, noise: jnp.ndarray | None):
    """One step of `sampler` with one step's constants `consts` (index i of each array from `make_plan`).

    Returns (x_prev, predicted x0 (DDIM) or denoised sample (LCM)). `noise` is used by LCM between steps only.
    """
    if sampler.kind == "DDIMScheduler":
        return ddim_step(sampler, model_output, sample, consts["alpha_t"], consts["alpha_prev"])
    return lcm_step(
        sampler,
        model_output,
        sample,
        consts["alpha_t"],
        consts["alpha_prev"],
        consts["c_skip"],
        consts["c_out"],
        consts["add_noise"],
        jnp.zeros_like(sample) if noise is None else noise,
    )
