"""`launch/train.py`: config files and overrides, resuming by re-running the same command, the shipped configs,
and the task registry's evaluation wiring."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import skimage.data
from PIL import Image
from test_loop import toy_config

import dav2_jax
from launch import sample_grids, tasks, train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def _config(name):
    return runpy.run_path(str(CONFIGS / f"{name}.py"))["get_config"]()


def test_same_command_twice_resumes_where_stop_after_steps_ended(tmp_path):
    config_file = tmp_path / "config.py"
    config_file.write_text("from test_loop import toy_config\n\n\ndef get_config():\n    return toy_config()\n")
    command = [
        sys.executable, str(ROOT / "launch" / "train.py"), f"--config={config_file}", f"--workdir={tmp_path / 'run'}",
        "--config.total_steps=6", "--config.log_every=2", "--config.optimizer.lr.decoder=0.05",
        "--stop_after_steps=4",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    for expected_steps in ([2, 4], [2, 4, 6]):
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == expected_steps
    assert records[-1]["lr/decoder"] < 0.05 and records[0]["lr/decoder"] == pytest.approx(0.05)  # the override
    saved = json.loads((tmp_path / "run" / "checkpoints" / "6" / "config" / "metadata").read_text())
    assert saved["total_steps"] == 6 and saved["optimizer"]["lr"]["decoder"] == 0.05


def test_missing_mandatory_fields_are_named():
    config = toy_config()
    del config["sharding"]
    del config.mesh["tensor"]
    with pytest.raises(ValueError, match=r"\['mesh.tensor', 'sharding'\]"):
        train.check_config(config)


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*dav2_teacher"):
        tasks.build_task(toy_config(task="nope"))


@pytest.mark.parametrize("name", ["teacher_g", "teacher_s", "demo_teacher"])
def test_shipped_configs_have_every_mandatory_field_and_build_their_task(name):
    config = _config(name)
    train.check_config(config)
    task = tasks.build_task(config)
    assert task.crop == config.model.crop and task.crop % 14 == 0


def test_teacher_g_is_the_papers_recipe():
    c = _config("teacher_g")
    assert (c.model.encoder, c.batch_size, c.total_steps, c.model.crop) == ("vitg", 64, 160_000, 518)
    assert dict(c.optimizer.lr) == {"encoder": 5e-6, "decoder": 5e-5}
    assert c.model.gm_weight == 2.0 and c.sharding == "fsdp"
    weights = {k: v.weight for k, v in c.data.sources.items()}
    assert weights == {"blendedmvs": 115e3, "hypersim": 60e3, "irs": 103e3, "tartanair": 306e3, "vkitti2": 20e3}
    assert all(tasks.lookup(v.reader, tasks.READERS, "reader") for v in c.data.sources.values())


class _OracleTask:
    """Predicts 2·(1/depth) + 3, a perfect disparity up to scale and shift, or plain depth when `wrong`."""

    def __init__(self, wrong=False):
        self.wrong = wrong

    prediction_kind = "disparity"

    def prepare(self, sample, rng):
        return {"image": sample["image"], "depth": sample["depth"], "valid": sample["valid"]}

    def input_images(self, batch):
        return batch["image"]

    def predict(self, params, frozen, batch, rng):
        disparity = jnp.where(batch["valid"], 1.0 / jnp.where(batch["valid"], batch["depth"], 1.0), 0.0)
        return batch["depth"] if self.wrong else 2.0 * disparity + 3.0


def test_periodic_evaluation_aligns_disparity_by_least_squares_before_abs_rel_and_delta1():
    config = ml_collections.ConfigDict(dict(
        task="dav2_teacher", eval_every=1, seed=0,
        eval=dict(source=dict(reader="synthetic", num_samples=4, height=28, width=28, seed=7), batch_size=2,
                  num_samples=4, min_depth=1e-3, max_depth=1000.0),
    ))
    put = lambda batch: {k: jnp.asarray(v) for k, v in batch.items()}
    perfect, samples = tasks.build_evaluate(config, _OracleTask())(None, {}, put)
    assert perfect["eval/abs_rel"] < 1e-4 and perfect["eval/delta1"] == 1.0
    # four samples (the default number) of 28 x 28 enlarged 5 times, three columns
    assert samples.shape == (sample_grids.HEADER + 4 * (140 + sample_grids.GAP), 3 * 140 + 2 * sample_grids.GAP, 3)
    wrong, _ = tasks.build_evaluate(config, _OracleTask(wrong=True))(None, {}, put)
    assert wrong["eval/abs_rel"] > 0.1 and wrong["eval/delta1"] < 0.9
    assert np.isfinite(list(wrong.values())).all()


def test_readme_command_with_relative_paths_trains_checkpoints_and_resumes(tmp_path):
    """The README's command verbatim (relative --config and --workdir, run from the repository root), cut short:
    the real DAv2 model under the mesh and logical rules, an evaluation, a checkpoint, then the same command
    resumes from it. Orbax refuses relative paths, so this fails unless the workdir is made absolute."""
    root = tmp_path / "clone"
    root.mkdir()
    for name in ("launch", "configs"):
        (root / name).symlink_to(ROOT / name)
    command = [
        sys.executable, "launch/train.py", "--config", "configs/demo_teacher.py", "--workdir", "runs/demo",
        "--config.total_steps=2", "--config.log_every=1", "--config.model.crop=28",
        "--config.eval.source.height=28", "--config.eval.source.width=28", "--config.eval.num_samples=4",
        "--config.eval.batch_size=2", "--config.batch_size=2", "--config.checkpoint_every=2",
    ]
    for stop, expected in (("--stop_after_steps=1", [1]), ("--stop_after_steps=5", [1, 2])):
        out = subprocess.run(command + [stop], capture_output=True, text=True, timeout=900, cwd=root)
        assert out.returncode == 0, out.stderr[-3000:]
        records = [json.loads(line) for line in (root / "runs/demo/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "loss" in r] == expected
    losses = [r["loss"] for r in records if "loss" in r]
    assert all(np.isfinite(losses)) and losses[0] > 0
    evals = [r for r in records if "eval/abs_rel" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(0 < r["eval/abs_rel"] and 0 <= r["eval/delta1"] <= 1 for r in evals)
    assert sorted(p.name for p in (root / "runs/demo/checkpoints").iterdir()) == ["1", "2"]
    # The run is a checkpoint the other command lines take by its relative path (Orbax reads it).
    Image.fromarray(skimage.data.coffee()[::8, ::8]).save(root / "photo.png")
    for command in (["launch/convert.py", "--input", "runs/demo", "--output", "runs/demo_jax", "--to", "jax"],
                    ["launch/infer.py", "--model", "runs/demo", "--input", "photo.png", "--output", "out"]):
        out = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=900, cwd=root)
        assert out.returncode == 0, out.stderr[-3000:]
    model, params = dav2_jax.load(str(root / "runs/demo_jax"))
    expected = dav2_jax.infer_image(model, params, np.asarray(Image.open(root / "photo.png")))
    np.testing.assert_allclose(np.load(root / "out/photo.npy"), expected, rtol=1e-5, atol=1e-6)
