"""Exact resume: the data pipeline's position and the train state survive interruption bit for bit.

An uninterrupted run is the oracle. Runs stopped by `--stop_after_steps` and killed with SIGKILL right after a
checkpoint, then resumed with the same command, must log the same losses step for step and draw the same samples,
each exactly once per epoch.
"""

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from test_loop import ToySource, ToyTask, toy_config
from test_tensorboard_log import assert_event_files_hold_the_metrics

from launch import train
from launch.data import pipeline

ROOT = Path(__file__).resolve().parents[1]
TOTAL = 12  # steps; 40 samples / batch 8 = 5 steps per epoch, so runs cross epoch boundaries


def _records(workdir):
    lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _losses_and_samples(workdir):
    records = _records(workdir)
    return [(r["step"], r["loss"], r["sample_ids"]) for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    workdir = tmp_path_factory.mktemp("reference")
    train.run(toy_config(total_steps=TOTAL), workdir)
    return _losses_and_samples(workdir)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_pipeline_state_restores_the_exact_continuation():
    task = ToyTask()
    make = lambda: pipeline.train_iterator(
        pipeline.mixture([ToySource(10, seed=0), ToySource(30, seed=1)], [1.0, 3.0], seed=5),
        task.prepare, seed=5, global_batch_size=4, read_threads=0,
    )
    it = make()
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 7)
    resumed = make()
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 7)):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_worker_processes_give_the_same_stream_and_resume_exactly():
    # Grain's worker processes read absl flags, which `launch/train.py` parses and pytest does not.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    task = ToyTask()
    make = lambda workers: pipeline.train_iterator(
        pipeline.mixture([ToySource(20)], [1.0], seed=3), task.prepare, seed=3, global_batch_size=4,
        worker_count=workers, read_threads=0,
    )
    expected = _take(make(0), 7)
    it = make(1)
    got = _take(it, 3)
    state = it.get_state()
    it.close()
    resumed = make(1)
    resumed.set_state(state)
    got += _take(resumed, 4)
    resumed.close()
    for want, have in zip(expected, got):
        for key in want:
            np.testing.assert_array_equal(have[key], want[key])


def test_mixture_follows_weights_and_each_sample_appears_once_per_epoch():
    task = ToyTask()
    small, large = ToySource(10, seed=0), ToySource(30, seed=1)
    it = pipeline.train_iterator(
        pipeline.mixture([small, large], [1.0, 3.0], seed=0), task.prepare, seed=0, global_batch_size=4,
        read_threads=0,
    )
    # 40 draws at weights 1:3 take 10 from the first source and 30 from the second: one epoch of each.
    xs = np.concatenate([b["x"] for b in _take(it, 10)])
    small_x = {tuple(small[i]["x"]) for i in range(10)}
    large_x = {tuple(large[i]["x"]) for i in range(30)}
    drawn = collections.Counter(tuple(x) for x in xs)
    assert set(drawn) == small_x | large_x and set(drawn.values()) == {1}


def test_augmentation_rng_depends_on_seed_and_stream_position_only():
    task = ToyTask()
    runs = [
        np.concatenate([b["y"] for b in _take(pipeline.train_iterator(
            pipeline.mixture([ToySource(16)], [1.0], seed=seed), task.prepare, seed=seed, global_batch_size=4,
            read_threads=threads), 4)])
        for seed, threads in [(0, 0), (0, 2), (1, 0)]
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(np.sort(runs[0]), np.sort(runs[2]))  # other seed: other order and other noise


def test_bad_samples_are_skipped_and_logged_by_name(caplog):
    task = ToyTask()
    it = pipeline.train_iterator(
        pipeline.mixture([ToySource(40, bad_every=10)], [1.0], seed=0, max_bad_fraction=0.2),
        task.prepare, seed=0, global_batch_size=4, read_threads=0,
    )
    with caplog.at_level(logging.WARNING):
        ids = np.concatenate([b["index"] for b in _take(it, 9)])
    assert sorted(ids) == [i for i in range(40) if i % 10]
    assert "toy/0/0.npy" in caplog.text and "corrupt file" in caplog.text


def test_too_many_bad_samples_stop_the_run_with_a_clear_error():
    task = ToyTask()
    it = pipeline.train_iterator(
        pipeline.mixture([ToySource(40, bad_every=2)], [1.0], seed=0, max_bad_fraction=0.2),
        task.prepare, seed=0, global_batch_size=4, read_threads=0,
    )
    with pytest.raises(RuntimeError, match=r"unusable, more than data.max_bad_fraction=0.2"):
        _take(it, 20)


def test_resume_after_stop_after_steps_is_bit_identical(reference, tmp_path):
    config = toy_config(total_steps=TOTAL)
    train.run(config, tmp_path, stop_after_steps=5)
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3, 4, 5]
    assert (tmp_path / "checkpoints" / "5").is_dir()  # the forced checkpoint of the interruption
    train.run(config, tmp_path, stop_after_steps=4)
    train.run(config, tmp_path)
    assert _losses_and_samples(tmp_path) == reference
    assert_event_files_hold_the_metrics(tmp_path)


def test_resume_after_kill_9_following_a_checkpoint_is_bit_identical(reference, tmp_path):
    config_file = tmp_path / "config.py"
    config_file.write_text(
        "from test_loop import toy_config\n\n\ndef get_config():\n"
        f"    return toy_config(total_steps={TOTAL}, checkpoint_every=4)\n"
    )
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    # Slow reads (30 ms per sample) keep the run busy long enough to be killed mid-way.
    log_file = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "launch" / "train.py"), f"--config={config_file}", f"--workdir={workdir}",
         "--config.data.sources.toy.delay=0.03"],
        env=env, stdout=log_file, stderr=log_file,
    )
    marker = workdir / "checkpoints" / "4" / "commit_success.txt"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists(), (tmp_path / "stderr.txt").read_text()[-2000:]
    steps_before_kill = [r["step"] for r in _records(workdir)]
    assert 4 <= steps_before_kill[-1] < TOTAL, "the run was not killed mid-way"
    assert not (workdir / "checkpoints" / str(TOTAL)).exists()
    train.run(toy_config(total_steps=TOTAL, checkpoint_every=4), workdir)
    assert _losses_and_samples(workdir) == reference
    assert_event_files_hold_the_metrics(workdir)  # without what the killed run logged after step 4
    first_epoch = [i for _, _, ids in reference[:5] for i in ids]
    assert sorted(first_epoch) == list(range(40))


class _TargetTask(ToyTask):
    def ema_targets(self):
        return {"target": 0.9}


def _as_layout_1(workdir):
    """Rewrite every checkpoint of `workdir` as the loop wrote them before layouts were versioned: a train state
    without `targets` and no `layout` item."""
    import shutil

    import orbax.checkpoint as ocp

    for step_dir in (Path(workdir) / "checkpoints").iterdir():
        shutil.rmtree(step_dir / "layout")
        state_dir = (step_dir / "state").resolve()
        with ocp.PyTreeCheckpointer() as checkpointer:
            tree = checkpointer.restore(state_dir)
        assert tree.pop("targets") in ({}, None)
        shutil.rmtree(state_dir)
        with ocp.PyTreeCheckpointer() as checkpointer:
            checkpointer.save(state_dir, tree)


def test_a_checkpoint_of_layout_1_resumes_bit_identically(reference, tmp_path):
    from launch.checkpoint import Checkpointer

    config = toy_config(total_steps=TOTAL)
    train.run(config, tmp_path, stop_after_steps=5)
    checkpointer = Checkpointer(tmp_path, 2, 1)
    assert checkpointer.layout_version(5) == 2
    _as_layout_1(tmp_path)
    assert checkpointer.layout_version(5) == 1
    checkpointer.close()
    train.run(config, tmp_path)
    assert _losses_and_samples(tmp_path) == reference


def test_a_checkpoint_of_layout_1_refuses_a_task_with_target_networks_and_says_why(tmp_path):
    config = toy_config(total_steps=TOTAL)
    train.run(config, tmp_path, stop_after_steps=3)
    _as_layout_1(tmp_path)
    config.task = "test_checkpoint:_TargetTask"
    with pytest.raises(ValueError, match="before train states held EMA target networks"):
        train.run(config, tmp_path)


def test_a_checkpoint_of_a_newer_layout_is_refused(tmp_path):
    config = toy_config(total_steps=TOTAL)
    train.run(config, tmp_path, stop_after_steps=3)
    metadata = tmp_path / "checkpoints" / "3" / "layout" / "metadata"
    metadata.write_text(json.dumps({"version": 99, "state_fields": []}))
    with pytest.raises(ValueError, match="layout version 99, newer than this code's"):
        train.run(config, tmp_path)
