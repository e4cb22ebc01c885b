"""The `marigold_lcm` task: boundary conditions and sampler against diffusers' LCMScheduler, one distillation
micro-batch against a PyTorch restatement of the released Marigold-LCM trainer, the EMA target network in the loop,
a resumed distillation equal to an uninterrupted one, and LCM runs exported to diffusers (LCMScheduler), loaded by
marigold_jax.load and run by launch/infer.py."""

import json
import runpy

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from marigold_runs import ROOT
from PIL import Image
from test_loop import override
from test_marigold_convert import depth_folder  # noqa: F401  (fixture)
from test_marigold_models import nchw, nhwc, randomise, relative_error
from test_marigold_runs import TOL, _diffusers_and_ours, _random, _rgb, _shapes, _write_run, runs  # noqa: F401
from test_marigold_schedulers import MARIGOLD_V1_1, _diffusers, _run_both
from test_marigold_training import _frozen

import marigold_jax
from launch import compare_steps, convert, infer, train
from marigold_jax import consistency, objective, schedulers, surgery
from marigold_jax.convert_diffusers import params_from_torch

TRAINING = surgery.training_scheduler(MARIGOLD_V1_1)  # Marigold v1.1's training schedule (zero SNR, v-prediction)


def test_boundary_conditions_on_the_solver_grid_equal_diffusers_lcm_scheduler():
    consts = consistency.solver_constants(TRAINING, 5)
    np.testing.assert_array_equal(consts["grid"], [199, 399, 599, 799, 999])
    assert consts["skip"] == 200
    ref = _diffusers(consistency.lcm_scheduler(TRAINING, 5).to_dict())
    for t in sorted({0, *consts["grid"], *np.maximum(consts["grid"] - 200, 0)}):
        ref_skip, ref_out = ref.get_scalings_for_boundary_condition_discrete(int(t))
        np.testing.assert_allclose([consts["c_skip"][t], consts["c_out"][t]], [float(ref_skip), float(ref_out)],
                                   rtol=1e-6)
    assert consts["c_skip"][0] == 1.0 and consts["c_out"][0] == 0.0  # f(x, 0) = x


@pytest.mark.parametrize("steps", [1, 2, 4, 5])
def test_student_sampler_is_lcm_scheduler_on_the_training_betas_and_the_solver_grid(steps):
    config = consistency.lcm_scheduler(TRAINING, 5).to_dict()
    _run_both(config, steps, _diffusers(config, schedulers.alphas_cumprod(TRAINING)), dict(rtol=1e-6, atol=1e-6))
    timesteps = schedulers.make_plan(consistency.lcm_scheduler(TRAINING, 5), steps)[1]["timesteps"]
    assert set(timesteps) <= {199, 399, 599, 799, 999}


def _released_micro_batch(student, teacher, target, scheduler, z_rgb, z0, index, noise, valid, text, factor):
    """The released Marigold-LCM trainer's loss of one micro-batch, restated in PyTorch (NCHW tensors)."""
    import torch

    n_train, n_ddim, huber_c = 1000, 5, 0.001
    step_ratio = n_train // n_ddim
    ddim_timesteps = torch.from_numpy((np.arange(1, n_ddim + 1) * step_ratio).round().astype(np.int64) - 1)
    ac = scheduler.alphas_cumprod
    alpha_prev = torch.cat([ac[:1], ac[ddim_timesteps[:-1]]])

    def scalings(t):
        scaled = 10.0 * t
        return 0.25 / (scaled**2 + 0.25), scaled / (scaled**2 + 0.25) ** 0.5

    def col(x):
        return x.reshape(-1, 1, 1, 1)

    s = ddim_timesteps[index]
    t = torch.where(s - step_ratio < 0, torch.zeros_like(s), s - step_ratio)
    c_skip_s, c_out_s = map(col, scalings(s))
    c_skip_t, c_out_t = map(col, scalings(t))
    x_s = scheduler.add_noise(z0, noise, s)
    alpha_s, sigma_s = col(ac[s].sqrt()), col((1 - ac[s]).sqrt())
    with torch.no_grad():
        out = student(torch.cat([z_rgb, x_s], 1), s, text).sample
        pred = c_skip_s * x_s + c_out_s * (alpha_s * x_s - sigma_s * out)
        out_teacher = teacher(torch.cat([z_rgb, x_s], 1), s, text).sample
        x0_teacher = alpha_s * x_s - sigma_s * out_teacher
        eps_teacher = alpha_s * out_teacher + sigma_s * x_s
        prev = col(alpha_prev[index])
        x_t = prev.sqrt() * x0_teacher + (1 - prev).sqrt() * eps_teacher
        out_target = target(torch.cat([z_rgb, x_t], 1), t, text).sample
        alpha_t, sigma_t = col(ac[t].sqrt()), col((1 - ac[t]).sqrt())
        goal = c_skip_t * x_t + c_out_t * (alpha_t * x_t - sigma_t * out_target)
    invalid = torch.from_numpy(~valid).float()[:, None]
    mask = (~torch.nn.functional.max_pool2d(invalid, factor, factor).bool()).repeat(1, 4, 1, 1)
    loss = torch.mean(torch.sqrt((pred[mask] - goal[mask]) ** 2 + huber_c**2) - huber_c)
    return loss.item(), pred, goal, x_t


def test_one_micro_batch_equals_the_released_trainer_restated_in_pytorch(depth_folder):  # noqa: F811
    import torch
    from diffusers import DDPMScheduler

    pipe, path = depth_folder
    task = consistency.MarigoldLCMTask(teacher=path)
    unets = {"teacher": pipe.unet}
    for seed, name in [(11, "student"), (12, "target")]:
        torch.manual_seed(seed)
        unets[name] = randomise(type(pipe.unet).from_config(pipe.unet.config), seed)
    params = {name: params_from_torch(task.unet, {k: v.numpy() for k, v in u.state_dict().items()}, name)["params"]
              for name, u in unets.items()}
    rng = np.random.default_rng(0)
    b, h, w = 4, 8, 8
    z_rgb, z0, noise = (rng.standard_normal((b, h, w, 4)).astype(np.float32) for _ in range(3))
    index = np.array([0, 1, 3, 4], np.int32)  # t clamped to 0, then the grid's middle and its end (s = 999)
    valid = rng.random((b, h * task.factor, w * task.factor)) > 0.05
    batch = {"image": np.zeros((1, h * task.factor, w * task.factor, 3), np.float32)}
    frozen = _frozen(task, batch)
    mask = objective.latent_valid_mask(jnp.asarray(valid), task.factor)

    def net(p):
        return lambda x, t: task.unet_output(p, frozen, jnp.asarray(z_rgb), x, t)

    with jax.default_matmul_precision("highest"):
        loss, parts = jax.jit(lambda: consistency.consistency_loss(
            net(params["student"]), net(params["teacher"]), net(params["target"]), jnp.asarray(z0),
            jnp.asarray(index), jnp.asarray(noise), mask, task.consts, "v_prediction", 1e-3))()
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config, rescale_betas_zero_snr=True,
                                          timestep_spacing="trailing")
    text = torch.from_numpy(np.array(frozen["text"])).repeat(b, 1, 1)
    ref_loss, ref_pred, ref_goal, ref_x_t = _released_micro_batch(
        unets["student"], unets["teacher"], unets["target"], scheduler, nchw(z_rgb), nchw(z0),
        torch.from_numpy(index).long(), nchw(noise), valid, text, task.factor)
    np.testing.assert_array_equal(parts["s"], [199, 399, 799, 999])
    np.testing.assert_array_equal(parts["t"], [0, 199, 599, 799])
    # U-Net outputs agree with diffusers to 1e-4 of their range (test_marigold_models); the solver adds a few
    # float32 operations with coefficients <= 1 on top.
    for ours, ref in [(parts["x_t"], ref_x_t), (parts["prediction"], ref_pred), (parts["target"], ref_goal)]:
        assert relative_error(ours, nhwc(ref)) <= 1e-4
    np.testing.assert_allclose(np.asarray(parts["target"])[0], np.asarray(parts["x_t"])[0], rtol=0, atol=0)
    assert abs(float(loss) - ref_loss) <= 1e-4 * ref_loss


def lcm_config(teacher, **overrides):
    """A complete tiny `marigold_lcm` training config distilling `teacher` on 16 x 16 generated scenes."""
    c = ml_collections.ConfigDict(dict(
        task="marigold_lcm", seed=0, total_steps=4, batch_size=2, log_every=1, eval_every=0, checkpoint_every=2,
        keep_checkpoints=2, sharding="dp", mesh=dict(data=-1, fsdp=1, tensor=1),
        model=dict(teacher=teacher, modality="depth", num_ddim_timesteps=5, target_decay=0.95),
        optimizer=dict(name="adamw", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, clip_norm=1.0,
                       accumulate_steps=1, ema_decay=0.0, lr=dict(unet=1e-3)),
        schedule=dict(kind="constant", warmup_steps=0),
        data=dict(sources={"synthetic": dict(reader="synthetic", weight=1.0, num_samples=64, height=16, width=16,
                                             seed=3, kind="mixed")},
                  worker_count=0, read_threads=0, read_buffer=4, max_bad_fraction=0.01),
        eval=dict(source=dict(reader="synthetic", num_samples=4, height=16, width=16, seed=5, kind="mixed"),
                  batch_size=4, num_samples=4, min_depth=1e-3, max_depth=1000.0),
    ))
    return override(c, **overrides)


@pytest.mark.slow
def test_student_starts_as_the_teacher_and_the_target_is_its_ema(depth_folder, tmp_path):  # noqa: F811
    _, path = depth_folder
    state, frozen = train.run(lcm_config(path, total_steps=1), tmp_path)
    teacher = consistency.MarigoldLCMTask(teacher=path).teacher_weights()
    params, target = jax.device_get(state.params), jax.device_get(state.targets["target"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen["teacher"]), teacher)
    moved = max(jax.tree.leaves(jax.tree.map(lambda p, t: float(np.abs(p - t).max()), params, teacher)))
    assert moved > 1e-4  # the student trained (lr 1e-3, Adam: about lr per weight)
    # the loop's update after one step from target = params = teacher: 0.95 teacher + 0.05 params
    jax.tree.map(lambda g, t, p: np.testing.assert_allclose(g, 0.95 * t + 0.05 * p, rtol=1e-6, atol=1e-7),
                 target, teacher, params)


@pytest.mark.slow
def test_resumed_distillation_equals_the_uninterrupted_one(depth_folder, tmp_path):  # noqa: F811
    _, path = depth_folder
    whole, _ = train.run(lcm_config(path), tmp_path / "whole")
    train.run(lcm_config(path), tmp_path / "cut", stop_after_steps=2)
    resumed, _ = train.run(lcm_config(path), tmp_path / "cut")
    for part in ("params", "targets", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(getattr(resumed, part)),
                     jax.device_get(getattr(whole, part)))
    # the run is scored by launch/compare_steps.py, reproducibly, with LCM at each step count
    rows = compare_steps.main(["--run", str(tmp_path / "whole"), "--run", str(tmp_path / "cut"), "--steps", "1", "2"])
    assert [(r[2], r[3]) for r in rows] == [("LCM", 1), ("LCM", 2)] * 2
    assert [r[4] for r in rows[:2]] == [r[4] for r in rows[2:]] and rows[0][4] != rows[1][4]
    assert all(0 < r[4]["eval/abs_rel"] < 10 and 0 <= r[4]["eval/delta1"] <= 1 for r in rows)


def test_a_teacher_of_another_modality_or_kind_is_refused(depth_folder, tmp_path):  # noqa: F811
    _, path = depth_folder
    with pytest.raises(ValueError, match="not normals"):
        consistency.MarigoldLCMTask(teacher=path, modality="normals")
    with pytest.raises(FileNotFoundError, match="neither a training run"):
        consistency.MarigoldLCMTask(teacher=str(tmp_path))


def test_exported_lcm_run_runs_in_diffusers_with_lcm_scheduler_as_marigold_jax_load_and_infer_run_it(
        runs, tmp_path):  # noqa: F811
    from diffusers import LCMScheduler

    config = runpy.run_path(str(ROOT / "configs" / "demo_marigold_lcm.py"))["get_config"]()
    config.model.update(teacher=runs["depth"], attention_impl="xla")
    student = _random(_shapes(consistency.MarigoldLCMTask(**config.model)), 9)
    run, folder = str(tmp_path / "lcm"), str(tmp_path / "exported")
    _write_run(run, config, student, {})
    assert convert.main(["--input", run, "--output", folder, "--to", "diffusers"]) == 0
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"] and index["default_denoising_steps"] == 1
    ref, got = _diffusers_and_ours(folder, run, "depth", steps=1)
    assert np.abs(ref - got).max() <= TOL * np.ptp(ref)

    loaded = marigold_jax.load(run)
    jax.tree.map(np.testing.assert_array_equal, loaded.folder.unet_params["params"], student)
    assert loaded.scheduler.kind == "LCMScheduler" and loaded.scheduler.prediction_type == "v_prediction"
    shipped = LCMScheduler.from_pretrained(folder, subfolder="scheduler")
    shipped.set_timesteps(4)
    assert shipped.timesteps.tolist() == [999, 799, 599, 399]  # the distillation grid
    np.testing.assert_allclose(shipped.alphas_cumprod.numpy(), schedulers.alphas_cumprod(loaded.scheduler), rtol=1e-6,
                               atol=1e-6)

    Image.fromarray(_rgb(3)).save(tmp_path / "scene.png")
    assert infer.main(["--model", run, "--input", str(tmp_path / "scene.png"), "--output", str(tmp_path / "out"),
                       "--compilation-cache", "off"]) == 0
    want = loaded.predict_depth(_rgb(3), seed=0).prediction[0, ..., 0]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "scene.npy"), want)
