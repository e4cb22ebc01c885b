"""`launch/tensorboard_log.py`: event files read back with TensorBoard's own reader hold what was written, at the
steps it was written, and a resumed run drops what an interrupted one wrote after its checkpoint."""

import io
import json

import ml_collections
import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from launch import tensorboard_log
from launch.tensorboard_log import TensorBoardLog


def _read(directory):
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def _scalars(events):
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_event_files_hold_the_metrics(workdir):
    """WORKDIR/tensorboard holds every scalar of WORKDIR/metrics.jsonl, under its name, at its step, in order."""
    expected = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for name, value in record.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(name, []).append((record["step"], float(np.float32(value))))
    got = _scalars(_read(workdir / "tensorboard"))
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(np.array(got[name]), np.array(expected[name]), err_msg=name)


def _record(step):
    return {"step": step, "loss": 1.0 / step, "lr/encoder": 1e-4 * step, "skipped": step // 3,
            "sample_ids": [step, step + 1], "note": "text", "finite": True}


def test_scalars_read_back_at_their_steps_and_non_numbers_are_left_out(tmp_path):
    log = TensorBoardLog(tmp_path, 0)
    for step in (1, 2, 5):
        log.scalars(step, _record(step))
    log.close()
    got = _scalars(_read(tmp_path))
    assert sorted(got) == ["loss", "lr/encoder", "skipped"]
    for tag in got:
        # TensorBoard stores scalars as float32
        assert got[tag] == [(s, float(np.float32(_record(s)[tag]))) for s in (1, 2, 5)]


def test_images_and_the_config_read_back_unchanged(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    config = ml_collections.ConfigDict({"seed": 3, "optimizer": {"lr": {"encoder": 1e-5}}})
    log = TensorBoardLog(tmp_path, 0)
    log.config(0, config)
    log.image("samples", 7, rgb)
    log.close()
    events = _read(tmp_path)
    (image,) = events.Images("samples")
    assert (image.step, image.width, image.height) == (7, 20, 12)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))), rgb)
    (text,) = events.Tensors("config")
    body = text.tensor_proto.string_val[0].decode()
    assert text.step == 0 and body.startswith("```\n") and body.endswith("\n```")
    assert json.loads(body[4:-4]) == config.to_dict()


def test_a_resumed_log_drops_what_came_after_the_checkpoint_and_continues_in_order(tmp_path):
    first = TensorBoardLog(tmp_path, 0)
    first.config(0, ml_collections.ConfigDict({"seed": 0}))
    for step in range(1, 11):
        first.scalars(step, _record(step))
    first.image("samples", 5, np.zeros((4, 4, 3), np.uint8))
    first.image("samples", 10, np.zeros((4, 4, 3), np.uint8))
    first.config(6, ml_collections.ConfigDict({"seed": 0}))  # an earlier resume at the same step
    # killed here: never closed
    second = TensorBoardLog(tmp_path, 6)
    second.config(6, ml_collections.ConfigDict({"seed": 1}))
    for step in range(7, 13):
        second.scalars(step, _record(step))
    second.close()
    events = _read(tmp_path)
    assert _scalars(events)["loss"] == [(s, float(np.float32(1.0 / s))) for s in range(1, 13)]
    assert [e.step for e in events.Images("samples")] == [5]
    configs = events.Tensors("config")
    assert [e.step for e in configs] == [0, 6] and b'"seed": 1' in configs[1].tensor_proto.string_val[0]
    assert [p.name for p in tensorboard_log.event_files(tmp_path)][0] == tensorboard_log.KEPT_FILE
    assert len(tensorboard_log.event_files(tmp_path)) == 2


def test_a_compaction_interrupted_before_removing_the_old_files_is_completed_at_the_next_start(tmp_path):
    log = TensorBoardLog(tmp_path, 0)
    for step in range(1, 6):
        log.scalars(step, _record(step))
    log.close()
    tensorboard_log.drop_after(tmp_path, 3)
    # as if killed after the kept events were complete but before the old files went
    (tmp_path / tensorboard_log.KEPT_FILE).rename(tmp_path / "kept.ready")
    stale = TensorBoardLog(tmp_path / "other", 0)
    stale.scalars(4, _record(4))
    stale.close()
    (only,) = tensorboard_log.event_files(tmp_path / "other")
    only.rename(tmp_path / only.name)
    TensorBoardLog(tmp_path, 3).close()
    assert [s for s, _ in _scalars(_read(tmp_path))["loss"]] == [1, 2, 3]
    assert not (tmp_path / "kept.ready").exists()
