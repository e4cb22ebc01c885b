"""What a pod does to a run: several processes, SIGTERM before preemption, a resume with another process count;
and checkpoints written on the schedule only."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from test_loop import ToySource, ToyTask, toy_config

from launch import checkpoint, mesh, train
from launch.data import pipeline
from launch.metrics_log import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
TOTAL = 8


def _records(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir):
    return [(r["step"], r["loss"], r["sample_ids"]) for r in _records(workdir)]


def _config_file(tmp_path):
    path = tmp_path / "config.py"
    path.write_text(
        "from test_loop import toy_config\n\n\ndef get_config():\n"
        f"    return toy_config(total_steps={TOTAL}, checkpoint_every=4)\n"
    )
    return path


def _train_command(config_file, workdir, *extra):
    return [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={config_file}", f"--workdir={workdir}",
            *extra]


def _env(**extra):
    # JAX_PLATFORMS: CPU processes only, even where a TPU runtime is installed (it would probe for chips).
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]), JAX_PLATFORMS="cpu",
               **extra)
    for name in mesh.COORDINATOR_VARIABLES:
        env.pop(name, None)
    return env


def _wait_for(predicate, procs, seconds=300):
    deadline = time.time() + seconds
    while not predicate() and all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.05)
    return predicate()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted single-process run."""
    workdir = tmp_path_factory.mktemp("reference")
    train.run(toy_config(total_steps=TOTAL, checkpoint_every=4), workdir)
    return _losses(workdir)


def test_checkpoints_follow_the_schedule_without_an_initial_one(reference, tmp_path):
    train.run(toy_config(total_steps=TOTAL + 2, checkpoint_every=4, keep_checkpoints=5), tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 8, 10]  # 10: the end


def test_sigterm_saves_the_current_step_exits_cleanly_and_resumes_bit_identically(reference, tmp_path):
    workdir = tmp_path / "run"
    log = (tmp_path / "log.txt").open("w")
    proc = subprocess.Popen(
        _train_command(_config_file(tmp_path), workdir, "--config.data.sources.toy.delay=0.03"),
        env=_env(), stdout=log, stderr=log,
    )
    metrics = workdir / "metrics.jsonl"
    assert _wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 5, [proc]), \
        (tmp_path / "log.txt").read_text()[-2000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-2000:]
    stopped = _records(workdir)[-1]["step"]
    assert 5 <= stopped < TOTAL, "the run was not stopped mid-way"
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert saved == [4, stopped]
    assert "preempted at step" in (tmp_path / "log.txt").read_text()
    assert any((workdir / "compilation_cache").iterdir())  # the CLI keeps its compiled programs
    train.run(toy_config(total_steps=TOTAL, checkpoint_every=4), workdir)
    assert _losses(workdir) == reference


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_processes(command, log_dir):
    """`command` started as processes 0 and 1 of one JAX cluster on CPU, logging to log_dir/process_{i}.txt."""
    port = _free_port()
    procs = []
    for i in range(2):
        log = (log_dir / f"process_{i}.txt").open("a")
        env = _env(JAX_NUM_CPU_DEVICES="1")
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
        procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
    return procs


def _two_processes(config_file, workdir, log_dir, *extra):
    return launch_two_processes(_train_command(config_file, workdir, *extra), log_dir)


def _logs(log_dir):
    return "\n".join(p.read_text()[-1500:] for p in sorted(log_dir.glob("process_*.txt")))


def test_two_processes_match_one_and_resume_bit_identically_after_both_are_killed(tmp_path):
    config_file = _config_file(tmp_path)
    one = subprocess.run(_train_command(config_file, tmp_path / "one"), capture_output=True, text=True,
                         env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=2"), timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    expected = _losses(tmp_path / "one")

    whole = _two_processes(config_file, tmp_path / "two", tmp_path)
    assert [p.wait(timeout=600) for p in whole] == [0, 0], _logs(tmp_path)
    assert "2 process(es), 2 devices" in (tmp_path / "process_0.txt").read_text()
    # The same global batches (each process read half of each) and losses equal to float32 rounding.
    two = _losses(tmp_path / "two")
    assert [(s, ids) for s, _, ids in two] == [(s, ids) for s, _, ids in expected]
    assert all(abs(a - b) <= 1e-6 * abs(b) for (_, a, _), (_, b, _) in zip(two, expected))
    saved = sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "8" / "data").glob("process_*"))
    assert saved == ["process_0-of-2.json", "process_1-of-2.json"]

    cut = _two_processes(config_file, tmp_path / "cut", tmp_path, "--config.data.sources.toy.delay=0.03")
    marker = tmp_path / "cut" / "checkpoints" / "4" / "commit_success.txt"
    assert _wait_for(marker.exists, cut), _logs(tmp_path)
    for p in cut:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (tmp_path / "cut" / "checkpoints" / str(TOTAL)).exists(), "the run was not killed mid-way"
    resumed = _two_processes(config_file, tmp_path / "cut", tmp_path)
    assert [p.wait(timeout=600) for p in resumed] == [0, 0], _logs(tmp_path)
    assert _losses(tmp_path / "cut") == two

    # One process cannot take over the two processes' data positions: it says so instead of guessing.
    alone = subprocess.run(_train_command(config_file, tmp_path / "cut", f"--config.total_steps={TOTAL + 1}"),
                           capture_output=True, text=True, env=_env(), timeout=600)
    assert alone.returncode != 0 and "saved by 2 processes" in alone.stderr and "resume with 2" in alone.stderr


def test_coordinator_variables_must_come_together(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.delenv("JAX_NUM_PROCESSES", raising=False)
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID not"):
        mesh.initialize_distributed()


def test_each_process_prepares_only_its_share_of_the_held_out_set(monkeypatch):
    prepared = []

    def prepare(sample, rng):
        prepared.append(sample["index"])
        return {"index": np.int32(sample["index"])}

    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    batches = pipeline.eval_batches(ToySource(20), prepare, 4, num_samples=10)
    assert prepared == [2, 3, 6, 7] and [b["index"].tolist() for b in batches] == [[2, 3], [6, 7]]
    with pytest.raises(ValueError, match=r"held-out sample 2 .*toy/0/2.npy"):
        pipeline.eval_batches(ToySource(20, bad_every=2), prepare, 4)


def test_process_shares_stack_into_the_single_process_batches_with_the_same_augmentation(monkeypatch):
    task = ToyTask()
    make = lambda: pipeline.train_iterator(pipeline.mixture([ToySource(20)], [1.0], seed=3), task.prepare, seed=3,
                                           global_batch_size=6, read_threads=0)
    single = [next(it) for it in [make()] for _ in range(5)]
    shares = []
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    for index in range(3):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        it = make()
        shares.append([next(it) for _ in range(5)])
    for step, whole in enumerate(single):
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([share[step][key] for share in shares]), whole[key])


def test_metrics_of_a_gs_workdir_go_to_the_bucket_and_resume_there(monkeypatch):
    """`gs://` stays a URL (no local `gs:/...` folder) and metrics.jsonl is written and truncated through epath; an
    in-memory file system stands in for Cloud Storage (Orbax's own array I/O has no such stand-in)."""
    import importlib

    from fsspec.implementations.memory import MemoryFileSystem

    registry = importlib.import_module("fsspec.registry")  # the module; `fsspec.registry` is its read-only view
    for protocol in ("gs", "gcs"):
        monkeypatch.setitem(registry._registry, protocol, MemoryFileSystem)
    workdir = checkpoint.run_directory("gs://bucket-of-this-test/run")
    assert str(workdir) == "gs://bucket-of-this-test/run" and not Path("gs:").exists()
    log = MetricsLog(workdir / "metrics.jsonl", resume_step=0)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1.0 / step})
    MetricsLog(workdir / "metrics.jsonl", resume_step=2)
    assert [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert any(key.endswith("bucket-of-this-test/run/metrics.jsonl") for key in MemoryFileSystem.store)
