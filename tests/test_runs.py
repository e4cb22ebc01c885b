"""Training run directories are checkpoints: `dav2_jax.load(RUN_DIR)` and `launch/convert.py --input RUN_DIR`.

The run directories are written by the loop's own `Checkpointer` (train state, data iterator, config), so the
reader is tested against the real layout; the slow test trains a real run first. Exports must load strictly into
the official PyTorch class and into transformers and give the same outputs.
"""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax.linen import unbox

import dav2_jax
from launch import convert
from launch.checkpoint import Checkpointer
from oracles import OFFICIAL_CONFIGS, official_dav2

jax.config.update("jax_default_matmul_precision", "highest")
REL_TOL = 1e-4  # the parity bound of the other format tests: float32 through 12 blocks, relative to the range


def _state(params, ema, step):
    return {"step": jnp.int32(step), "params": params, "opt_state": {}, "ema": ema, "skipped": jnp.int32(0)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A ViT-S run with checkpoints at steps 1 and 2, each with params and a different EMA; and those EMAs."""
    model = dav2_jax.DepthAnythingV2("vits")
    params = jax.device_get(unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 3)))))["params"]

    def noisy(seed):
        rng = np.random.default_rng(seed)
        return jax.tree.map(lambda p: (p + 0.02 * rng.standard_normal(p.shape)).astype(np.float32), params)

    emas = {1: noisy(1), 2: noisy(2)}
    workdir = tmp_path_factory.mktemp("run")
    config = ml_collections.ConfigDict({"task": "dav2_teacher", "model": {"encoder": "vits", "crop": 28}})
    iterator = iter(grain.MapDataset.range(8).to_iter_dataset())
    checkpointer = Checkpointer(workdir, keep=3, every=1)
    for step, ema in emas.items():
        checkpointer.save(step, _state(params, ema, step), iterator, config, force=True)
    checkpointer.wait()
    checkpointer.close()
    return str(workdir), emas


def _assert_same(loaded, expected):
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_load_reads_the_newest_step_s_ema_or_the_step_asked_for(run_dir):
    path, emas = run_dir
    model, params = dav2_jax.load(path)
    assert (model.encoder, model.max_depth) == ("vits", None)
    _assert_same(params["params"], emas[2])
    _assert_same(dav2_jax.load(path, step=1)[1]["params"], emas[1])
    with pytest.raises(ValueError, match=r"no checkpoint of step 3; it has steps \[1, 2\]"):
        dav2_jax.load(path, step=3)


def test_run_exports_load_strictly_in_the_official_class_and_transformers_with_the_same_output(run_dir, tmp_path):
    path, _ = run_dir
    model, params = dav2_jax.load(path)
    pth, hf = str(tmp_path / "run.pth"), str(tmp_path / "run_hf")
    assert convert.main(["--input", path, "--output", pth, "--to", "official"]) == 0
    assert convert.main(["--input", path, "--step", "2", "--output", hf, "--to", "hf"]) == 0
    official = official_dav2().DepthAnythingV2(**OFFICIAL_CONFIGS["vits"]).eval()
    official.load_state_dict(torch.load(pth, weights_only=True), strict=True)
    hf_model = transformers.DepthAnythingForDepthEstimation.from_pretrained(hf).eval()
    small = np.random.RandomState(0).randn(1, 3, 70, 98).astype(np.float32)
    ours = np.asarray(model.apply(params, jnp.asarray(small.transpose(0, 2, 3, 1))))
    with torch.no_grad():
        theirs = official(torch.from_numpy(small)).numpy()
    assert np.abs(ours - theirs).max() <= REL_TOL * np.ptp(theirs)
    x = torch.from_numpy(np.random.RandomState(1).randn(1, 3, 518, 518).astype(np.float32))
    with torch.no_grad():  # transformers matches the official position embedding only at 518 x 518
        want, got = official(x).numpy(), hf_model(pixel_values=x).predicted_depth.numpy()
    assert np.abs(got - want).max() <= REL_TOL * np.ptp(want)


def test_a_folder_that_is_no_run_is_refused_with_a_hint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="checkpoints/STEP/"):
        dav2_jax.load(str(tmp_path))
