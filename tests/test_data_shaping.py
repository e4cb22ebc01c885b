"""Per-source batching of a mixture (`pipeline.per_source_batches`) and the per-source crops and resizes
(`launch/data/shaping.py`): batches from one source each, in the weighted proportion, deterministic and resumable;
the resizes against PIL, the crop against numpy slicing."""

import collections

import ml_collections
import numpy as np
import pytest
from PIL import Image

from launch import tasks
from launch.data import pipeline, shaping
from launch.data.sources import BadSample

EPS32 = np.finfo(np.float32).eps


class Images:
    """`num_samples` images uint8 [height, width, 3] of source `tag` (a fixed function of the index)."""

    def __init__(self, num_samples, height, width, tag, bad_every=0):
        self.num_samples, self.height, self.width, self.tag, self.bad_every = num_samples, height, width, tag, bad_every

    def __len__(self):
        return self.num_samples

    def __getitem__(self, index):
        if self.bad_every and index % self.bad_every == 0:
            raise BadSample(f"{self.tag}/{index}", "corrupt file")
        rng = np.random.default_rng((self.tag, index))
        return {"image": rng.integers(0, 256, (self.height, self.width, 3), dtype=np.uint8), "tag": self.tag,
                "index": index}


def prepare(sample, rng):
    return {"image": sample["image"].astype(np.float32) / 255 + rng.uniform(), "tag": sample["tag"],
            "index": sample["index"]}


def _iterator(sources, weights, batch=4, seed=3):
    dataset = pipeline.per_source_batches(sources, weights, seed, batch, max_bad_fraction=0.2)
    return pipeline.train_iterator(dataset, [prepare] * len(sources), seed, batch, read_threads=0)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_every_batch_comes_from_one_source_in_the_weighted_proportion():
    large, small = Images(30, 4, 6, tag=0), Images(10, 2, 3, tag=1)
    batches = _take(_iterator([large, small], [3.0, 1.0]), 400)
    shapes = {0: (4, 4, 6, 3), 1: (4, 2, 3, 3)}
    for b in batches:
        assert len(set(b["tag"])) == 1 and b["image"].shape == shapes[b["tag"][0]]
    # Binomial(400, 3/4) batches of the first source: mean 300, standard deviation 8.7; 5 deviations of margin.
    first = sum(b["tag"][0] == 0 for b in batches)
    assert abs(first - 300) <= 5 * (400 * 0.75 * 0.25) ** 0.5
    # Each source's stream is its own shuffled epochs: its first len // 4 batches hold distinct samples.
    for source in (large, small):
        ids = np.concatenate([b["index"] for b in batches if b["tag"][0] == source.tag])
        epoch = ids[: len(source) // 4 * 4]
        assert len(set(epoch)) == len(epoch)


def test_per_source_stream_is_deterministic_and_resumes_from_a_saved_state():
    sources = lambda: [Images(12, 4, 6, tag=0), Images(8, 2, 3, tag=1)]
    it = _iterator(sources(), [1.0, 1.0])
    _take(it, 5)
    state = it.get_state()
    expected = _take(it, 9)
    again = _take(_iterator(sources(), [1.0, 1.0]), 14)[5:]
    resumed = _iterator(sources(), [1.0, 1.0])
    resumed.set_state(state)
    for want, fresh, got in zip(expected, again, _take(resumed, 9), strict=True):
        for key in want:
            np.testing.assert_array_equal(fresh[key], want[key])
            np.testing.assert_array_equal(got[key], want[key])
    other_seed = _take(pipeline.train_iterator(pipeline.per_source_batches(sources(), [1.0, 1.0], 4, 4),
                                               [prepare] * 2, 4, 4, read_threads=0), 14)
    assert [b["tag"][0] for b in other_seed] != [b["tag"][0] for b in _take(_iterator(sources(), [1.0, 1.0]), 14)]


def test_bad_samples_are_replaced_from_the_same_source():
    it = _iterator([Images(20, 4, 6, tag=0, bad_every=10), Images(8, 2, 3, tag=1)], [1.0, 1.0])
    for b in _take(it, 12):
        assert len(b["tag"]) == 4 and len(set(b["tag"])) == 1
        assert not any(i % 10 == 0 for i in b["index"][b["tag"] == 0])


def test_per_source_batching_needs_one_prepare_per_source_and_the_same_batch():
    dataset = pipeline.per_source_batches([Images(4, 2, 2, tag=0)], [1.0], 0, 4)
    with pytest.raises(ValueError, match="one prepare function per source"):
        pipeline.train_iterator(dataset, prepare, 0, 4)
    with pytest.raises(ValueError, match="the global batch is 8"):
        pipeline.train_iterator(dataset, [prepare], 0, 8)


@pytest.mark.parametrize("size_in, size_out", [((5, 7), (3, 4)), ((3, 4), (7, 9)), ((6, 10), (4, 4))])
def test_resizes_equal_pil(size_in, size_out):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size_in, 3), dtype=np.uint8)
    values = rng.normal(size=(*size_in, 2)).astype(np.float32)
    (h, w), pil_size = size_out, size_out[::-1]
    nearest = np.stack([np.asarray(Image.fromarray(image[..., c]).resize(pil_size, Image.NEAREST))
                        for c in range(3)], axis=-1)
    np.testing.assert_array_equal(shaping.resize(image, h, w, "nearest"), nearest)
    bilinear = np.stack([np.asarray(Image.fromarray(values[..., c], mode="F").resize(pil_size, Image.BILINEAR))
                         for c in range(2)], axis=-1)
    # PIL rounds its horizontal pass and its result to float32 (we round once): two roundings of values <= max|x|.
    np.testing.assert_allclose(shaping.resize(values, h, w, "bilinear"), bilinear, rtol=0,
                               atol=2 * EPS32 * np.abs(values).max())
    mask = rng.uniform(size=size_in) < 0.5
    np.testing.assert_array_equal(shaping.resize(mask, h, w, "bilinear"),
                                  np.asarray(Image.fromarray(mask).resize(pil_size, Image.NEAREST)))


def test_resize_example_resizes_rasters_only():
    example = {"image": np.ones((4, 6, 3), np.float32), "valid": np.ones((4, 6), bool), "tag": np.int64(1),
               "row": np.zeros((6,), np.float32)}
    out = shaping.resize_example(example, 2, 3, "bilinear")
    assert out["image"].shape == (2, 3, 3) and out["valid"].shape == (2, 3) and out["valid"].dtype == bool
    assert out["tag"] == 1 and out["row"].shape == (6,)


def test_bottom_centre_crop_is_the_kitti_benchmark_crop():
    rng = np.random.default_rng(1)
    sample = {"image": rng.integers(0, 256, (7, 11, 3), dtype=np.uint8), "depth": rng.uniform(size=(7, 11)),
              "name": "a/b.png"}
    out = shaping.bottom_centre_crop(sample, 4, 6)
    # top = 7 - 4 = 3, left = (11 - 6) // 2 = 2
    np.testing.assert_array_equal(out["image"], sample["image"][3:7, 2:8])
    np.testing.assert_array_equal(out["depth"], sample["depth"][3:7, 2:8])
    assert out["name"] == "a/b.png"
    with pytest.raises(BadSample, match="smaller than the crop 8 x 6"):
        shaping.bottom_centre_crop(sample, 8, 6)


class _PrepareTask:
    prepare = staticmethod(lambda sample, rng: {"image": sample["image"].astype(np.float32),
                                                "valid": sample["valid"]})


def _config(batch_per_source):
    c = ml_collections.ConfigDict()
    c.seed, c.batch_size = 0, 2
    c.data = ml_collections.ConfigDict(dict(max_bad_fraction=0.0, worker_count=0, read_threads=0, read_buffer=1))
    scenes = dict(reader="synthetic", num_samples=4, seed=0)
    c.data.sources = ml_collections.ConfigDict({
        "a": dict(scenes, height=16, width=16, weight=1.0, resize=(8, 12), resize_method="nearest"),
        "b": dict(scenes, height=10, width=14, weight=1.0, crop=(4, 8)),
    })
    c.data.batch_per_source = batch_per_source
    return c


def test_config_sources_are_cropped_resized_and_batched_per_source():
    iterator, example = tasks.build_train_data(_config(True), _PrepareTask())
    assert example["image"].shape == (1, 8, 12, 3)
    shapes = collections.Counter(b["image"].shape for b in _take(iterator, 8))
    assert set(shapes) == {(2, 8, 12, 3), (2, 4, 8, 3)}
    with pytest.raises(ValueError, match="batch_per_source=True"):
        tasks.build_train_data(_config(False), _PrepareTask())
