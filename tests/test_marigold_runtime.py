"""The `marigold` task in the loop's runtime: exact resume after `kill -9`, and DP, FSDP and FSDP + TP on 8 simulated
devices giving the losses of one device. The demo's configs at the tiny size of `marigold_runs` (the autoencoder run is written by the
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


MODES = {
    "one_device": {},
    "dp": {"sharding": "dp", "mesh.data": 8, "mesh.fsdp": 1, "mesh.tensor": 1},
    "fsdp": {"sharding": "fsdp", "mesh.data": 1, "mesh.fsdp": 8, "mesh.tensor": 1},
    "fsdp_tp": {"sharding": "fsdp_tp", "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},
}

SCRIPT = textwrap.dedent(
    """
    import json, math, sys, tempfile
    import jax
    from marigold_runs import marigold_config
    from launch import loop, tasks

    assert jax.device_count() == 8, jax.devices()
    report = {}
    for name, overrides in json.loads(sys.argv[2]).items():
        config = marigold_config(sys.argv[1], total_steps=3, batch_size=8, **overrides)
        task = tasks.build_task(config)
        iterator, example = tasks.build_train_data(config, task)
        workdir = tempfile.mkdtemp()
        devices = jax.devices()[:1] if name == "one_device" else None
        state, frozen = loop.train(config, task, iterator, example, workdir, devices=devices)
        losses = [json.loads(line)["loss"] for line in open(workdir + "/metrics.jsonl")]
        axes = lambda tree: {axis: sum(any(axis in ((p,) if isinstance(p, str) else tuple(p or ()))
                                           for p in x.sharding.spec) for x in jax.tree.leaves(tree))
                             for axis in ("data", "fsdp", "tensor")}
        kernels = [x.shape for path, x in jax.tree_util.tree_leaves_with_path(state.params)
                   if "kernel" in jax.tree_util.keystr(path)]
        report[name] = {"losses": losses, "unet": axes(state.params), "vae": axes(frozen["vae"]),
                        "kernels": len(kernels), "longest_contraction": max(math.prod(k[:-1]) for k in kernels)}
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.slow
def test_dp_fsdp_and_fsdp_tp_on_8_devices_give_the_losses_of_one_device(vae_run):
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(vae_run), json.dumps(MODES)], env=env,
                         capture_output=True, text=True, timeout=3000, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("REPORT"))[len("REPORT"):])
    none = {"data": 0, "fsdp": 0, "tensor": 0}
    assert report["one_device"]["unet"] == report["one_device"]["vae"] == none
    assert report["dp"]["unet"] == report["dp"]["vae"] == none  # parameters replicated, the batch split
    for part in ("unet", "vae"):
        assert report["fsdp"][part]["fsdp"] > 0 and report["fsdp"][part]["tensor"] == 0
        assert report["fsdp_tp"][part]["fsdp"] > 0 and report["fsdp_tp"][part]["tensor"] > 0
    reference = report["one_device"]["losses"]
    assert len(reference) == 3
    eps, n = 1.2e-7, 8 * 8 * 8 * 4  # float32 epsilon; latent elements averaged into the loss
    # DP and FSDP do each sample's arithmetic as one device does, in another reduction order over the batch: the
    # loss, a mean of n elements, then differs by about eps * sqrt(n) = 5e-6 relative (measured: at most 5e-7).
    # FSDP + TP also splits contractions over the tensor axis (heads, MLP units, convolution outputs) and adds the
    # partial sums: each of the D contractions on a sample's path (D <= the U-Net's kernels plus QK^T and AV, bounded
    # by twice the kernel count) is a sum of at most K terms in another order, a relative change of about
    # eps * sqrt(K) each, which add along the path to at most D * eps * sqrt(K) (asserted with the same factor 2:
    # 5.7e-4 relative; measured: 1.7e-7 at step 1, 1.5e-5 and 6.5e-5 at steps 2 and 3, where Adam's updates,
    # g / sqrt(v), pass on the gradients' reordered sums).
    tp = report["fsdp_tp"]
    bound = {"dp": eps * n**0.5, "fsdp": eps * n**0.5,
             "fsdp_tp": eps * (n**0.5 + 2 * tp["kernels"] * tp["longest_contraction"] ** 0.5)}
    for mode, limit in bound.items():
        for a, b in zip(report[mode]["losses"], reference, strict=True):
            assert abs(a - b) <= 2 * limit * abs(b), (mode, a, b)
