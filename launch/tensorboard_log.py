"""TensorBoard event files of a run, `WORKDIR/tensorboard/`, written by process 0 beside `metrics.jsonl`.

Written with the `tensorboard` package's own event-file writer and protocol buffers (the writer PyTorch's
`torch.utils.tensorboard` also uses), which need neither TensorFlow nor torch; the same package reads the files
back and serves them (`tensorboard --logdir runs/`). Every record is flushed to disk when written, so the event
files hold what `metrics.jsonl` holds at any moment, and a resumed run can drop exactly what the interrupted one
wrote after its checkpoint.
"""

import io
import time

import jax
import numpy as np
from etils import epath
from PIL import Image
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.summary.writer.record_writer import RecordWriter

EVENT_FILE_MARK = "tfevents"  # TensorBoard reads the files whose name holds this
CONFIG_TAG = "config"
FILE_VERSION = "brain.Event:2"  # the header TensorBoard expects first in a file
KEPT_FILE = "events.out.tfevents.0000000000.kept"  # what earlier invocations wrote, up to the resume step


class TensorBoardLog:
    """Scalars, images and text of one run as TensorBoard events; only process 0 writes.

    directory: the event-file folder (created; local, or a URL such as `gs://` where TensorFlow or an fsspec
    file system for it is installed); resume_step: the step the run (re)starts from. Events an
    interrupted run wrote after `resume_step` are removed from the folder's files first, as `MetricsLog` drops
    lines; so is a config text at `resume_step` itself, which this invocation writes anew.
    """

    def __init__(self, directory, resume_step):
        self.active = jax.process_index() == 0
        self.writer = None
        if not self.active:
            return
        directory = epath.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        drop_after(directory, resume_step, also_at_step={CONFIG_TAG})
        self.writer = EventFileWriter(str(directory), max_queue_size=1000, flush_secs=60)

    def scalars(self, step, record):
        """One event with every real-valued scalar of `record` ({name: value}) under its own name as tag.

        Lists, arrays, strings and booleans are left out: TensorBoard draws numbers only.
        """
        values = [
            summary_pb2.Summary.Value(tag=name, simple_value=float(value))
            for name, value in record.items()
            if name != "step" and isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))
        ]
        if values:
            self._write(step, values)

    def image(self, tag, step, rgb):
        """rgb: uint8 [H, W, 3], stored as PNG."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
            raise ValueError(f"expected an RGB uint8 image of shape [H, W, 3], got {rgb.dtype} {list(rgb.shape)}")
        png = io.BytesIO()
        Image.fromarray(rgb).save(png, format="PNG")
        image = summary_pb2.Summary.Image(
            height=rgb.shape[0], width=rgb.shape[1], colorspace=3, encoded_image_string=png.getvalue()
        )
        self._write(step, [summary_pb2.Summary.Value(tag=tag, image=image)])

    def text(self, tag, step, markdown):
        """A Markdown string, shown in TensorBoard's Text tab."""
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[markdown.encode()], tensor_shape=tensor_shape_pb2.TensorShapeProto()
        )
        metadata = text_metadata.create_summary_metadata(display_name=tag, description="")
        self._write(step, [summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])

    def config(self, step, config):
        """The run's `ConfigDict` as indented JSON under the tag "config"."""
        body = config.to_json_best_effort(indent=2, sort_keys=True)
        self.text(CONFIG_TAG, step, "```\n" + body + "\n```")

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _write(self, step, values):
        if self.writer is None:
            return
        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values))
        self.writer.add_event(event)
        self.writer.flush()


def event_files(directory):
    """The event files of `directory`, oldest first (the order TensorBoard reads them in)."""
    return sorted(p for p in epath.Path(directory).iterdir() if EVENT_FILE_MARK in p.name and p.is_file())


def drop_after(directory, step, also_at_step=frozenset()):
    """Rewrite the event files of `directory` as one file without the summaries of steps after `step`.

    also_at_step: tags whose summaries at exactly `step` go too. Events that carry no summary (file headers) are
    replaced by one header. The kept events go to `KEPT_FILE`, whose zero timestamp sorts
    it before every writer's file. Crash-safe: they are written under names TensorBoard ignores, and a finished
    `kept.ready` survives a crash to be completed by the next start.
    """
    directory = epath.Path(directory)
    ready = directory / "kept.ready"
    if not ready.exists():
        files = event_files(directory)
        if not files:
            return
        partial = directory / "kept.partial"
        with partial.open("wb") as f:
            writer = RecordWriter(f)
            writer.write(event_pb2.Event(wall_time=time.time(), file_version=FILE_VERSION).SerializeToString())
            for path in files:
                for raw in RawEventFileLoader(str(path)).Load():
                    event = event_pb2.Event.FromString(raw)
                    if not event.HasField("summary") or event.step > step:
                        continue
                    if event.step == step and any(v.tag in also_at_step for v in event.summary.value):
                        continue
                    writer.write(raw)
            writer.flush()
        partial.rename(ready)
    for path in event_files(directory):
        path.unlink()
    ready.rename(directory / KEPT_FILE)
