"""Marigold training runs are checkpoints: `marigold_jax.load(RUN_DIR)`, `launch/convert.py --input RUN_DIR --to
diffusers` (a folder diffusers' Marigold pipelines load and run with the same output), `launch/infer.py` and
`launch/evaluate.py --model RUN_DIR`.

The default tests write the run directories with the loop's own `Checkpointer` (random weights, no training, so
no train step is compiled); the slow test trains the runs with `launch/train.py`'s `run` first.
"""

import json

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from marigold_runs import SIZE, marigold_config, vae_config
from PIL import Image

import marigold_jax
from launch import convert, evaluate, infer, train
from launch.checkpoint import Checkpointer
from launch.eval import datasets, protocols
from marigold_jax import run_folder, schedulers, surgery
from marigold_jax.training import MarigoldTask
from marigold_jax.vae_training import AutoencoderTask

# Both sides run the same float32 networks (a 2-level VAE and a 1-level U-Net, dot products of at most
# 3 * 3 * 32 = 288 terms) in another order: each layer adds a relative error of order eps * sqrt(288) < 2e-6, a few
# tens of layers in sequence stay below 1e-4 of the output range (measured: 1e-6).
TOL = 1e-4


def _random(abstract, seed):
    """Random float32 weights of the shapes of `abstract`: kernels ~ N(0, 1 / fan-in), norm scales ~ 1 + N(0, 0.1),
    the rest ~ N(0, 0.1) (no network is initialised: nothing is compiled)."""
    rng = np.random.default_rng(seed)

    def draw(path, a):
        name, shape = path[-1].key, a.shape
        if name == "kernel":
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        return ((name == "scale") + 0.1 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, abstract)


def _shapes(task):
    example = {"image": np.zeros((1, SIZE, SIZE, 3), np.float32)}
    return nn.unbox(jax.eval_shape(task.init, jax.random.key(0), example)[0])


def _write_run(workdir, config, params, ema, step=1):
    state = {"step": jnp.int32(step), "params": params, "opt_state": {}, "ema": ema, "skipped": jnp.int32(0)}
    checkpointer = Checkpointer(workdir, keep=2, every=1)
    checkpointer.save(step, state, iter(grain.MapDataset.range(4).to_iter_dataset()), config, force=True)
    checkpointer.wait()
    checkpointer.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"vae": autoencoder run, modality: Marigold run on it, "ema": {modality: the EMA U-Net written}}."""
    root = tmp_path_factory.mktemp("runs")
    out = {"vae": str(root / "vae"), "ema": {}}
    config = vae_config()
    _write_run(out["vae"], config, _random(_shapes(AutoencoderTask(**config.model)), 0), {})
    for i, modality in enumerate(("depth", "normals", "iid_lighting")):
        config = marigold_config(out["vae"], modality)
        shapes = _shapes(MarigoldTask(**config.model))
        out[modality], out["ema"][modality] = str(root / modality), _random(shapes, 2 * i + 1)
        _write_run(out[modality], config, _random(shapes, 2 * i + 2), out["ema"][modality])
    return out


def _rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def _diffusers_and_ours(folder, run, modality, steps=1):
    """(diffusers' prediction, marigold_jax's on the run) for one image and the same initial noise."""
    import diffusers

    pipe = getattr(diffusers, run_folder.PIPELINES[modality]).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    ours = marigold_jax.load(run)
    channels = 4 * ours.n_targets
    latents = torch.randn(1, channels, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(1))
    knobs = dict(num_inference_steps=steps, processing_resolution=0)
    with torch.no_grad():
        ref = pipe(Image.fromarray(_rgb()), latents=latents, output_type="np", **knobs).prediction
    got = ours.predict(_rgb(), latents=latents.numpy().transpose(0, 2, 3, 1), **knobs).prediction
    return ref, got


def test_exported_depth_run_runs_in_diffusers_as_marigold_jax_load_runs_the_run(runs, tmp_path):
    folder = str(tmp_path / "exported")
    assert convert.main(["--input", runs["depth"], "--output", folder, "--to", "diffusers"]) == 0
    index = json.loads((tmp_path / "exported" / "model_index.json").read_text())
    assert index["_class_name"] == "MarigoldDepthPipeline" and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    ref, got = _diffusers_and_ours(folder, runs["depth"], "depth")
    assert ref.shape == got.shape == (1, SIZE, SIZE, 1)
    assert np.abs(ref - got).max() <= TOL * np.ptp(ref)

    loaded = marigold_jax.load(runs["depth"])  # the EMA weights, as written
    jax.tree.map(np.testing.assert_array_equal, loaded.folder.unet_params["params"], runs["ema"]["depth"])
    again = marigold_jax.load(folder).folder  # the export holds exactly what the run gives
    for part in ("unet_params", "vae_params", "text_encoder_params", "empty_text_embedding", "scheduler_config",
                 "unet_config", "vae_config", "model_index"):
        jax.tree.map(np.testing.assert_array_equal, getattr(again, part), getattr(loaded.folder, part))
    np.testing.assert_array_equal(loaded.folder.empty_text_embedding, np.zeros((1, 2, 16), np.float32))

    # the scheduler is the training one: zero terminal SNR betas, v-prediction, trailing spacing
    from diffusers import DDIMScheduler

    shipped = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    task = MarigoldTask(**marigold_config(runs["vae"]).model)
    # one-ulp differences of PyTorch's float32 linspace reach ~4e-7 in alpha_bar (see test_marigold_surgery)
    np.testing.assert_allclose(shipped.alphas_cumprod.numpy(), schedulers.alphas_cumprod(task.scheduler), rtol=1e-6,
                               atol=1e-6)
    assert shipped.alphas_cumprod[-1] == 0 and shipped.config.prediction_type == "v_prediction"
    shipped.set_timesteps(4)
    assert shipped.timesteps.tolist() == [999, 749, 499, 249]


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["normals", "iid_lighting"])
def test_exported_normals_and_intrinsics_runs_run_in_their_diffusers_pipelines(runs, tmp_path, modality):
    folder = str(tmp_path / modality)
    assert convert.main(["--input", runs[modality], "--output", folder, "--to", "diffusers"]) == 0
    ref, got = _diffusers_and_ours(folder, runs[modality], modality)
    assert ref.shape == got.shape == ((1, SIZE, SIZE, 3) if modality == "normals" else (3, SIZE, SIZE, 3))
    assert np.abs(ref - got).max() <= TOL * np.ptp(ref)


def test_the_demo_base_trains_and_samples_on_sd2_s_v_prediction_schedule(runs):
    task = MarigoldTask(**marigold_config(runs["vae"]).model)
    sd2 = schedulers.SchedulerConfig.from_dict({**surgery.SD2_SCHEDULER, "rescale_betas_zero_snr": True})
    np.testing.assert_array_equal(task.alphas_cumprod, schedulers.alphas_cumprod(sd2))
    sampler, consts = task.plan
    assert sampler.prediction_type == "v_prediction" and not sampler.clip_sample
    assert consts["timesteps"].tolist() == [999] and consts["alpha_t"][0] == 0 and consts["alpha_prev"][0] > 0.99
    with pytest.raises(ValueError, match="prediction_type='epsilon'.*stable-diffusion-2 \\(not -base\\)"):
        surgery.training_scheduler({**surgery.SD2_SCHEDULER, "prediction_type": "epsilon"})


def test_sample_pictures_show_the_input_image_the_task_prepared(runs):
    task = MarigoldTask(**marigold_config(runs["vae"]).model)
    sample = dict(image=_rgb(5), depth=np.random.default_rng(5).uniform(1, 5, (SIZE, SIZE)),
                  valid=np.ones((SIZE, SIZE), bool))
    prepared = task.prepare(sample, None)
    np.testing.assert_array_equal(task.input_images({"image": prepared["image"][None]})[0], sample["image"])


def test_a_run_that_is_not_marigold_is_refused_with_what_to_do(runs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        convert.main(["--input", runs["vae"], "--output", str(tmp_path / "x"), "--to", "diffusers"])
    assert "a run of task 'marigold_vae'; --to diffusers exports Marigold folders and runs of the tasks " \
           "['marigold', 'marigold_lcm']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="task 'marigold_vae', not a Marigold run"):
        marigold_jax.load(runs["vae"])
    with pytest.raises(SystemExit):
        convert.main(["--input", runs["depth"], "--output", str(tmp_path / "y"), "--to", "hf"])
    assert "is a Marigold checkpoint: it converts only --to diffusers" in capsys.readouterr().err


def test_a_missing_base_is_named_with_what_to_do(runs, tmp_path):
    config = marigold_config(str(tmp_path / "gone"))
    config.model.base = str(tmp_path / "gone")
    _write_run(str(tmp_path / "run"), config, runs["ema"]["depth"], {})
    with pytest.raises(FileNotFoundError, match="was fine-tuned from model.base .*gone.*run from the directory"):
        marigold_jax.load(str(tmp_path / "run"))


def test_infer_and_evaluate_take_a_run_directory(runs, tmp_path):
    Image.fromarray(_rgb(3)).save(tmp_path / "scene.png")
    assert infer.main(["--model", runs["depth"], "--input", str(tmp_path / "scene.png"), "--output",
                       str(tmp_path / "out"), "--steps", "1", "--compilation-cache", "off"]) == 0
    pipeline = marigold_jax.load(runs["depth"])
    want = pipeline.predict_depth(_rgb(3), num_inference_steps=1, seed=0).prediction[0, ..., 0]
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "scene.npy"), want)

    summary = evaluate.main(["--model", runs["depth"], "--dataset", "motorcycle", "--steps", "1",
                             "--processing-resolution", str(SIZE), "--output", str(tmp_path / "m.json")])
    result = json.loads((tmp_path / "m.json").read_text())
    assert result["run"]["protocol"] == "marigold" and result["run"]["kind"] == "depth"
    sample = datasets.open_dataset("motorcycle")[0]
    out = pipeline.predict_depth(sample.rgb, match_input_resolution=True, **result["run"]["settings"])
    want = protocols.score_depth(out.prediction[0, ..., 0], sample.depth, sample.mask, "depth",
                                 protocols.depth_spec("marigold", "motorcycle"))
    assert summary == {k: want[k] for k in summary}


@pytest.mark.slow
def test_a_trained_demo_run_exports_to_a_folder_diffusers_runs_as_we_run_the_run(tmp_path):
    """The demo's two commands at the tiny size (2 autoencoder steps, 3 Marigold steps with EMA), then the export."""
    vae, run, folder = str(tmp_path / "demo_vae"), str(tmp_path / "demo_marigold"), str(tmp_path / "exported")
    train.run(vae_config(), vae)
    train.run(marigold_config(vae, **{"optimizer.ema_decay": 0.5}), run)
    assert convert.main(["--input", run, "--output", folder, "--to", "diffusers"]) == 0
    for steps in (1, 4):
        ref, got = _diffusers_and_ours(folder, run, "depth", steps)
        assert np.abs(ref - got).max() <= TOL * np.ptp(ref)
    weights, which = run_folder.runs.read_weights(run)
    assert which == "ema"
    jax.tree.map(np.testing.assert_array_equal, marigold_jax.load(run).folder.unet_params["params"], weights)
