"""`launch/infer.py` on a video: per-frame depth equal to the image path's, at the input's frame rate."""

import fractions

import av
import jax
import numpy as np
import skimage.data
from PIL import Image

import dav2_jax
from launch import infer

SIZE = 56


def _write_clip(path, frames, rate):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for rgb in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _decode(path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return stream.average_rate, np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])


def test_a_ten_frame_video_gives_the_per_frame_depths_of_the_image_path(tmp_path):
    model = dav2_jax.DepthAnythingV2("vits", attention_impl="heads_first")
    params = model.init(jax.random.key(3), np.zeros((1, 28, 28, 3), np.float32))
    dav2_jax.save(model, params, str(tmp_path / "model"), format="jax")
    scene = skimage.data.chelsea()[::4, ::4][:74, :112]  # 74 x 112: even sizes, as H.264 wants
    rate = fractions.Fraction(12, 1)
    _write_clip(tmp_path / "clip.mp4", np.stack([np.roll(scene, 5 * t, axis=1) for t in range(10)]), rate)
    _, decoded = _decode(tmp_path / "clip.mp4")  # the frames as any reader sees them (H.264 is lossy)
    (tmp_path / "frames").mkdir()
    for t, rgb in enumerate(decoded):
        Image.fromarray(rgb).save(tmp_path / "frames" / f"{t:02d}.png")
    common = ["--model", str(tmp_path / "model"), "--input-size", str(SIZE), "--batch-size", "4",
              "--compilation-cache", "off", "--attention", "heads_first"]
    assert infer.main([*common, "--input", str(tmp_path / "clip.mp4"), "--output", str(tmp_path / "out")]) == 0
    assert infer.main([*common, "--input", str(tmp_path / "frames"), "--output", str(tmp_path / "images")]) == 0
    stack = np.load(tmp_path / "out" / "clip_depth.npy")
    assert stack.shape == (10, *scene.shape[:2]) and stack.dtype == np.float32
    images = np.stack([np.load(tmp_path / "images" / f"{t:02d}.npy") for t in range(10)])
    np.testing.assert_array_equal(stack, images)  # the same program on the same pixels in the same batches
    out_rate, coloured = _decode(tmp_path / "out" / "clip_depth.mp4")
    assert out_rate == rate and coloured.shape == (10, *scene.shape[:2], 3)
