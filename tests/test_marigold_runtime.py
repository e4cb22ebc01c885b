"""The `marigold` task in the loop's runtime: exact resume after `kill -9`, and FSDP on 8 simulated devices giving the
losses of one device. The demo's configs at the tiny size of `marigold_runs` (the autoencoder run is written by the
checkpointer, so no autoencoder is trained here)."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
from marigold_runs import marigold_config, vae_config
from test_marigold_runs import _random, _shapes, _write_run
from test_pod_runtime import ROOT, _env, _records, _train_command, _wait_for

from launch import train
from marigold_jax.vae_training import AutoencoderTask

TOTAL = 6  # steps, checkpoints every 2


def _trajectory(workdir):
    """Every logged training record (loss, gradient norm, learning rates, ...) except the speed."""
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in _records(workdir) if "loss" in r]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "run"
    config = vae_config()
    _write_run(str(path), config, _random(_shapes(AutoencoderTask(**config.model)), 0), {})
    return path


def _config_file(tmp_path, vae_run, **overrides):
    """A config file of the tiny `marigold` run (slow reads: `delay` seconds per scene)."""
    arguments = ", ".join(f"{k!r}: {v!r}" for k, v in overrides.items())
    path = tmp_path / "config.py"
    path.write_text(textwrap.dedent(f"""
        from marigold_runs import marigold_config


        def get_config():
            return marigold_config({str(vae_run)!r}, total_steps={TOTAL}, **{{{arguments}}})
    """))
    return path


@pytest.mark.slow
def test_resume_after_kill_9_is_bit_identical(vae_run, tmp_path):
    overrides = {"checkpoint_every": 2, "data.sources.synthetic.reader": "marigold_runs:SlowScenes",
                 "data.read_buffer": 1, "optimizer.ema_decay": 0.9}  # slow reads slow the steps: no read-ahead
    train.run(marigold_config(str(vae_run), total_steps=TOTAL, **overrides), tmp_path / "reference")
    reference = _trajectory(tmp_path / "reference")
    assert [r["step"] for r in reference] == list(range(1, TOTAL + 1))

    workdir, log = tmp_path / "run", (tmp_path / "log.txt").open("w")
    slow = {**overrides, "data.sources.synthetic.delay": 0.3}
    proc = subprocess.Popen(_train_command(_config_file(tmp_path, vae_run, **slow), workdir), env=_env(),
                            stdout=log, stderr=log)
    marker = workdir / "checkpoints" / "2" / "commit_success.txt"
    assert _wait_for(marker.exists, [proc], seconds=900), (tmp_path / "log.txt").read_text()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= _records(workdir)[-1]["step"] < TOTAL, "the run was not killed mid-way"
    train.run(marigold_config(str(vae_run), total_steps=TOTAL, **overrides), workdir)
    assert _trajectory(workdir) == reference


SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import jax
    from marigold_runs import marigold_config
    from launch import loop, tasks

    assert jax.device_count() == 8, jax.devices()
    report = {}
    for name, overrides in {"one_device": {}, "fsdp": {"sharding": "fsdp", "mesh.data": 1, "mesh.fsdp": -1}}.items():
        config = marigold_config(sys.argv[1], total_steps=3, batch_size=8, **overrides)
        task = tasks.build_task(config)
        iterator, example = tasks.build_train_data(config, task)
        workdir = tempfile.mkdtemp()
        devices = jax.devices()[:1] if name == "one_device" else None
        state, frozen = loop.train(config, task, iterator, example, workdir, devices=devices)
        report[name] = [json.loads(line)["loss"] for line in open(workdir + "/metrics.jsonl")]
        leaves = {"unet": state.params, "vae": frozen["vae"]}
        report[name + "_sharded"] = {k: sum(len(x.sharding.device_set) > 1 and not x.sharding.is_fully_replicated
                                            for x in jax.tree.leaves(v)) for k, v in leaves.items()}
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.slow
def test_fsdp_on_8_devices_gives_the_losses_of_one_device(vae_run):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(vae_run)], env=env, capture_output=True, text=True,
                         timeout=1800, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("REPORT"))[len("REPORT"):])
    assert report["fsdp_sharded"]["unet"] > 0 and report["fsdp_sharded"]["vae"] > 0
    assert report["one_device_sharded"] == {"unet": 0, "vae": 0}
    assert len(report["one_device"]) == 3
    # The same per-sample arithmetic in another reduction order: the loss, a mean of n = 8 x 8 x 8 x 4 latent
    # elements, then differs by about eps * sqrt(n) = 5e-6 relative at most per step (measured: 2e-7).
    for a, b in zip(report["fsdp"], report["one_device"], strict=True):
        assert abs(a - b) <= 2 * 1.2e-7 * (8 * 8 * 8 * 4) ** 0.5 * abs(b)
