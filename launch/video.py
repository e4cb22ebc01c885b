"""Video depth for `launch/infer.py` (Depth Anything V2), as upstream's `run_video.py` does it.

A video `clip.ext` becomes `clip_depth.mp4`: each frame's depth, min-max normalised per frame and coloured like
the images (`Spectral_r` for disparity), at the input's frame rate (H.264, yuv420p; an odd width or height is
padded by one replicated pixel, as the format needs even sizes). With `npy` in `--save`, `clip_depth.npy` also
holds the raw per-frame outputs, float32 [T, H, W]. Frames are decoded, predicted (`--batch-size` at a time, the
images' program) and encoded one batch at a time, so memory does not grow with the video's length.

PyAV (`av`) reads and writes the containers: its wheels bundle FFmpeg's libraries, so no system ffmpeg is needed.
"""

import os
import shutil

import numpy as np
import tqdm

from launch import outputs


def suffixes(kinds) -> list[str]:
    """What a video input writes after its stem."""
    return ["_depth.mp4"] + (["_depth.npy"] if "npy" in kinds else [])


def _av():
    try:
        import av
    except ImportError as e:
        raise SystemExit("video needs PyAV: pip install -e '.[video]'") from e
    return av


def frames(path: str, batch_size: int):
    """(frame rate as a Fraction, frame count or None, iterator over lists of ≤ batch_size RGB uint8 frames)."""
    av = _av()

    container = av.open(path)
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate

    def batches():
        batch = []
        with container:
            for frame in container.decode(stream):
                batch.append(frame.to_ndarray(format="rgb24"))
                if len(batch) == batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    return rate, stream.frames or None, batches()


class _NpyStack:
    """Append [H, W] float32 frames to STEM.npy without holding them: raw data first, the header at the end."""

    def __init__(self, path: str):
        self.path, self.count, self.shape = path, 0, None
        self.part = open(path + ".part", "wb")

    def append(self, depth: np.ndarray) -> None:
        self.shape = depth.shape
        self.part.write(np.ascontiguousarray(depth, np.float32).tobytes())
        self.count += 1

    def close(self) -> None:
        self.part.close()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (self.count, *(self.shape or (0, 0)))}
        with open(self.path, "wb") as out, open(self.path + ".part", "rb") as part:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(part, out, 1 << 24)
        os.remove(self.path + ".part")


class _Mp4:
    """An H.264 writer of RGB uint8 frames at `rate`, opened at the first frame (when its size is known)."""

    def __init__(self, path: str, rate):
        self.path, self.rate, self.container, self.stream = path, rate, None, None

    def write(self, rgb: np.ndarray) -> None:
        av = _av()

        rgb = np.pad(rgb, ((0, rgb.shape[0] % 2), (0, rgb.shape[1] % 2), (0, 0)), mode="edge")
        if self.container is None:
            self.container = av.open(self.path, "w")
            self.stream = self.container.add_stream("libx264", rate=self.rate)
            self.stream.width, self.stream.height = rgb.shape[1], rgb.shape[0]
            self.stream.pix_fmt = "yuv420p"
        for packet in self.stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()


def run_dav2(runner, path: str, stem: str, kinds, cmap: str, batch_size: int) -> int:
    """Predict every frame of the video `path` with `runner` (`launch.infer_dav2.Runner`); returns 1 when written.

    Writes STEM_depth.mp4 (and STEM_depth.npy with "npy" in `kinds`) as the module docstring says.
    """
    rate, count, batches = frames(path, batch_size)
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    video = _Mp4(stem + "_depth.mp4", rate)
    stack = _NpyStack(stem + "_depth.npy") if "npy" in kinds else None
    pending = None
    with tqdm.tqdm(total=count, unit="frame", desc=os.path.basename(path), disable=None) as bar:
        for batch in batches:
            submitted = runner.submit(batch)
            _write(runner, pending, video, stack, cmap, bar)
            pending = submitted
        _write(runner, pending, video, stack, cmap, bar)
    video.close()
    if stack is not None:
        stack.close()
    return 1


def _write(runner, pending, video, stack, cmap, bar) -> None:
    if pending is None:
        return
    for depth in runner.result(pending):
        video.write(outputs.colorize(depth, cmap))
        if stack is not None:
            stack.append(depth)
        bar.update(1)
