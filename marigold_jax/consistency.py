"""Latent consistency distillation (LCM) of a trained Marigold model, as a task of the shared training loop.

Three U-Nets of the same architecture: the frozen *teacher* (a trained Marigold), the trained *student* (started
from the teacher) and the *target*, an EMA of the student (decay 0.95) that the loop keeps in the train state. Per
micro-batch (the released Marigold-LCM trainer; Luo et al. 2023 without guidance):
1. j uniform over the solver grid tau_j = (j + 1) k - 1, k = N / num_ddim_timesteps (5 steps: k = 200,
   tau = 199 .. 999); s = tau_j, t = max(s - k, 0);
2. x_s = sqrt(a_s) z0 + sqrt(1 - a_s) eps, plain Gaussian eps (no multi-resolution noise);
3. student: f(x_s, s) = c_skip(s) x_s + c_out(s) x0_hat(student(x_s, s));
4. teacher (no guidance, one pass with the empty-prompt embedding): one DDIM step s -> t from its x0_hat and
   eps_hat, giving x_t;
5. target network: f(x_t, t) likewise, without gradient;
6. pseudo-Huber loss (c = 0.001) between 3 and 5 over the valid latent elements.
Boundary conditions: c_skip(t) = sd^2 / ((10 t)^2 + sd^2), c_out(t) = 10 t / sqrt((10 t)^2 + sd^2), sd = 0.5, on
the integer DDPM timestep (diffusers' `LCMScheduler`), so f(x, 0) = x. `a` is alpha_bar of the teacher's training
schedule (zero terminal SNR); the U-Net predicts v.

`predict` (held-out scoring) samples with `LCMScheduler` on the same betas, its `original_inference_steps` the
solver's grid, so that 1 to num_ddim_timesteps steps land on timesteps the student was trained at.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from marigold_jax import objective, runs, schedulers, surgery, targets
from marigold_jax.convert_diffusers import empty_prompt_embedding, host_params_from_torch, read_component
from marigold_jax.training import MASKED, MarigoldTask, place_host
from marigold_jax.unet import UNet2DConditionModel
from marigold_jax.vae import AutoencoderKL


def solver_constants(config, num_ddim_timesteps, timestep_scaling=10.0):
    """The skipping-step DDIM solver and boundary conditions on the training schedule `config` (a
    `schedulers.SchedulerConfig`) as host arrays: grid int32 [N] (tau_j = (j + 1) k - 1), skip k (int),
    alphas_cumprod, c_skip, c_out float32 [num_train_timesteps], the latter two per integer timestep."""
    n_train = config.num_train_timesteps
    if not 1 <= num_ddim_timesteps <= n_train or n_train % num_ddim_timesteps:
        raise ValueError(f"num_ddim_timesteps must divide num_train_timesteps={n_train}; got {num_ddim_timesteps}")
    skip = n_train // num_ddim_timesteps
    c_skip, c_out = schedulers.lcm_boundary_scalings(np.arange(n_train), timestep_scaling)
    return dict(grid=(np.arange(1, num_ddim_timesteps + 1) * skip - 1).astype(np.int32), skip=skip,
                alphas_cumprod=schedulers.alphas_cumprod(config), c_skip=c_skip, c_out=c_out)


def consistency_loss(student, teacher, target, latents, index, noise, mask, consts, prediction_type, huber_c):
    """One micro-batch of latent consistency distillation (module docstring), from given draws.

    student, teacher, target: `(x [B, h, w, C], timesteps int32 [B]) -> model output` like x; latents: clean target
    latents z0 [B, h, w, C]; index: int32 [B], solver step j of each sample; noise: eps like latents; mask:
    [B, h, w] bool or None; consts: `solver_constants`. Returns (loss, parts): parts holds the prediction f(x_s, s)
    and the target f(x_t, t) [B, h, w, C], x_s, x_t and the timesteps s, t [B].
    """
    ac = jnp.asarray(consts["alphas_cumprod"])
    s = jnp.asarray(consts["grid"])[index]
    t = jnp.maximum(s - consts["skip"], 0)
    col = lambda v: v.reshape(-1, 1, 1, 1)
    a_s, a_t = col(ac[s]), col(ac[t])
    c_skip, c_out = jnp.asarray(consts["c_skip"]), jnp.asarray(consts["c_out"])

    def boundary(x, out, alpha, step):
        x0, _ = schedulers.predict_original(prediction_type, out, x, alpha)
        return col(c_skip[step]) * x + col(c_out[step]) * x0

    x_s = schedulers.add_noise(ac, latents, noise, s)
    prediction = boundary(x_s, student(x_s, s), a_s, s)
    x0_teacher, eps_teacher = schedulers.predict_original(prediction_type, teacher(x_s, s), x_s, a_s)
    x_t = jax.lax.stop_gradient(jnp.sqrt(a_t) * x0_teacher + jnp.sqrt(1.0 - a_t) * eps_teacher)
    goal = jax.lax.stop_gradient(boundary(x_t, target(x_t, t), a_t, t))
    loss = objective.masked_pseudo_huber(prediction, goal, mask, huber_c)
    return loss, dict(prediction=prediction, target=goal, x_s=x_s, x_t=x_t, s=s, t=t)


def lcm_scheduler(training, num_ddim_timesteps, timestep_scaling=10.0):
    """The `LCMScheduler` config that samples a student distilled on `training` (its betas, zero-SNR rescaling and
    prediction type) with a grid of `num_ddim_timesteps` steps."""
    return dataclasses.replace(training, kind="LCMScheduler", original_inference_steps=num_ddim_timesteps,
                               timestep_scaling=timestep_scaling)


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _folder_modality(path, model_index, unet_config, modality):
    """Check that the diffusers Marigold folder at `path` predicts `modality` (our name: depth, normals,
    iid_appearance, iid_lighting)."""
    from marigold_jax.pipeline import detect_modality  # the pipeline loads runs of this task: a top import is a cycle

    found = detect_modality(model_index, unet_config)
    n_targets = unet_config.get("out_channels", 4) // 4
    expected = "intrinsics" if modality.startswith("iid_") else modality
    if found != expected or n_targets != len(targets.TARGET_NAMES[modality]):
        raise ValueError(f"{path} is a Marigold {found} checkpoint with {n_targets} target(s), not {modality}; set "
                         "model.modality to the teacher's")


class MarigoldLCMTask(MarigoldTask):
    """Distil a trained Marigold `teacher` into a few-step consistency model (module docstring).

    teacher: a `marigold` training run directory (its newest checkpoint, EMA weights when kept; its VAE and text
    embedding come from the run's own `model.base`) or a diffusers Marigold folder; modality: the teacher's
    ("depth" | "normals" | "iid_appearance" | "iid_lighting"); num_ddim_timesteps: the solver grid (5: skip 200);
    target_decay: EMA decay of the target network; timestep_scaling: of the boundary conditions; huber_c: the
    pseudo-Huber constant; quantile, flip_p, normals_augmentation: data as in `MarigoldTask`; dtype, remat,
    attention_impl: compute options of the three U-Nets and the VAE; eval_steps: LCM steps of `predict`.
    """

    def __init__(self, teacher="", modality="depth", num_ddim_timesteps=5, target_decay=0.95, timestep_scaling=10.0,
                 huber_c=1e-3, quantile=0.02, flip_p=0.5, normals_augmentation=True, dtype="float32", remat=False,
                 attention_impl="xla", eval_steps=1):
        modality = targets.check_modality(modality)
        options = dict(dtype=dtype, remat=remat, attention_impl=attention_impl)
        self.teacher = teacher
        if runs.is_run_dir(teacher):
            config = runs.run_config(teacher)
            if config.get("task") != "marigold":
                raise ValueError(f"{teacher!r} is a run of task {config.get('task')!r}; the teacher must be a "
                                 "'marigold' run (or a diffusers Marigold folder)")
            if config["model"].get("modality", "depth") != modality:
                raise ValueError(f"{teacher!r} predicts {config['model'].get('modality')}, not {modality}; set "
                                 "model.modality to the teacher's")
            self.teacher_run = MarigoldTask(**{**config["model"], **options})
            unet, vae, training = self.teacher_run.unet, self.teacher_run.vae, self.teacher_run.scheduler
        elif os.path.isfile(os.path.join(teacher, "model_index.json")):
            self.teacher_run = None
            unet_config = _read_json(os.path.join(teacher, "unet", "config.json"))
            _folder_modality(teacher, _read_json(os.path.join(teacher, "model_index.json")), unet_config, modality)
            options["dtype"] = jnp.dtype(dtype)
            unet = UNet2DConditionModel.from_config(unet_config, **options)
            vae = AutoencoderKL.from_config(_read_json(os.path.join(teacher, "vae", "config.json")), **options)
            training = surgery.training_scheduler(
                _read_json(os.path.join(teacher, "scheduler", "scheduler_config.json")))
        else:
            raise FileNotFoundError(f"model.teacher {teacher!r} is neither a training run directory (checkpoints/"
                                    "STEP/) nor a diffusers Marigold folder (model_index.json); train or convert one")
        self.configure(modality, unet, vae, training, quantile, flip_p, normals_augmentation)
        self.consts = solver_constants(training, num_ddim_timesteps, timestep_scaling)
        self.sampler_config = lcm_scheduler(training, num_ddim_timesteps, timestep_scaling)
        self.plan = schedulers.make_plan(self.sampler_config, eval_steps)
        self.target_decay = float(target_decay)
        self.huber_c = float(huber_c)

    # --- the contract -------------------------------------------------------------------------------------------
    def init(self, rng, example_batch):
        """(student params boxed with logical names; frozen {"vae", "text", "teacher"}): the teacher has the
        student's structure and logical names, so every U-Net is sharded by the same rules."""
        params, frozen = super().init(rng, example_batch)
        return params, {**frozen, "teacher": params}

    def ema_targets(self):
        return {"target": self.target_decay}

    def teacher_weights(self):
        """The teacher U-Net's weights as a numpy float32 tree (Flax layout), read from the checkpoint."""
        if self.teacher_run is not None:
            return runs.read_weights(self.teacher)[0]
        flat = host_params_from_torch(self.unet, read_component(self.teacher, "unet"), f"{self.teacher}/unet")
        return traverse_util.unflatten_dict(flat)

    def load_frozen(self, abstract_frozen):
        """VAE, empty-prompt embedding and teacher U-Net read from the teacher straight into their shardings."""
        teacher = place_host(abstract_frozen["teacher"], self.teacher_weights(), self.teacher)
        parts = {"vae": abstract_frozen["vae"], "text": abstract_frozen["text"]}
        if self.teacher_run is not None:
            return {**self.teacher_run.load_frozen(parts), "teacher": teacher}
        flat = host_params_from_torch(self.vae, read_component(self.teacher, "vae"), f"{self.teacher}/vae")
        host = {"vae": traverse_util.unflatten_dict(flat), "text": empty_prompt_embedding(self.teacher)}
        return {**place_host(parts, host, self.teacher), "teacher": teacher}

    def warm_start(self, params):
        """The student starts as the teacher (the loop copies it into the target network)."""
        return jax.tree.map(lambda p, v: jnp.asarray(v, p.dtype), params, self.teacher_weights())

    def loss(self, params, frozen, batch, rng, step=None, targets=None):
        """batch: image [B, H, W, 3], target [B, H, W, 3T] in [-1, 1], valid [B, H, W]; targets {"target": params
        of the target network} → (pseudo-Huber loss, {})."""
        z_rgb = self.encode(frozen, batch["image"])
        z0 = self.encode(frozen, batch["target"])
        k_index, k_noise = jax.random.split(rng)
        index = jax.random.randint(k_index, (z0.shape[0],), 0, len(self.consts["grid"]), jnp.int32)
        noise = jax.random.normal(k_noise, z0.shape, jnp.float32)
        mask = objective.latent_valid_mask(batch["valid"], self.factor) if MASKED[self.modality] else None
        net = lambda p: lambda x, t: self.unet_output(p, frozen, z_rgb, x, t)
        loss, _ = consistency_loss(net(params), net(frozen["teacher"]), net(targets["target"]), z0, index, noise,
                                   mask, self.consts, self.scheduler.prediction_type, self.huber_c)
        return loss, {}
