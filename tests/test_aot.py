"""Model FLOPs counted from programs (default suite) and ahead-of-time TPU plans of real configs (slow).

The AOT tests compile for TPU with libtpu, which is the `[tpu]` extra (`pip install -e '.[tpu]'`, a 213 MB wheel,
~684 MB installed): it is not part of `[test]`, so these tests are marked slow and need that extra. Each compile
of the small ViT-S config takes about two minutes of CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from dav2_jax.vit import PATCH, DinoVisionTransformer
from launch import model_flops

ROOT = Path(__file__).resolve().parents[1]


def _spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_products_count_twice_their_macs_trained_thrice_frozen_once():
    b, i, h, o = 5, 7, 11, 3

    def f(w_frozen, w_trained, x):
        return jnp.tanh(x @ w_frozen) @ w_trained

    flops = model_flops.count(f, (False, True, False), _spec(i, h), _spec(h, o), _spec(b, i))
    assert flops.frozen == 2 * b * i * h
    assert flops.trained == 2 * b * h * o
    assert flops.step() == 3 * 2 * b * h * o + 2 * b * i * h


def test_convolutions_count_per_group_and_scans_per_trip():
    n, hw, c, k, trips = 2, 9, 6, 3, 4

    def f(depthwise, dense, x):
        y = jax.lax.conv_general_dilated(x, depthwise, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=c)
        y = jax.lax.conv_general_dilated(y, dense, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        flat = y.reshape(n, -1)
        carry, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ jnp.ones((flat.shape[1],) * 2)), None), flat, None,
                                length=trips)
        return carry

    out = (hw - k) // 2 + 1
    flops = model_flops.count(f, (True, True, False), _spec(k, k, 1, c), _spec(k, k, c, c), _spec(n, hw, hw, c))
    expected = 2 * n * hw * hw * c * k * k + 2 * n * out * out * c * c * k * k
    expected += trips * 2 * n * (out * out * c) ** 2
    assert flops.trained == expected
    assert flops.frozen == 0


def test_transposed_convolutions_count_only_products_with_real_inputs():
    n, hw, c_in, c_out, k = 2, 5, 3, 4, 4

    def f(kernel, x):  # DPT's 4x upsampling: kernel 4, stride 4, every output pixel meets exactly one input pixel
        return jax.lax.conv_transpose(x, kernel, (k, k), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    flops = model_flops.count(f, (True, False), _spec(k, k, c_in, c_out), _spec(n, hw, hw, c_in))
    assert flops.trained == 2 * n * (hw * k) ** 2 * c_in * c_out


def test_vit_s_encoder_matches_the_closed_form_count():
    """DINOv2 ViT-S at 518²: patch embedding + 12 × (qkv, 4·N²·C attention, projection, 4C MLP), batch 2."""
    b, side, c, depth = 2, 518, 384, 12
    model = DinoVisionTransformer("vits", attention_impl="xla")  # heads-first pads the queries to 256-blocks
    images = _spec(b, side, side, 3)
    params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), images)["params"])
    taps = (depth - 1,)
    flops = model_flops.count(lambda p, x: model.apply({"params": p}, x, taps), (True, False), params, images)
    n = (side // PATCH) ** 2 + 1
    block = 2 * n * c * 3 * c + 4 * n * n * c + 2 * n * c * c + 2 * 2 * n * c * 4 * c
    patch = 2 * (n - 1) * PATCH * PATCH * 3 * c
    assert flops.trained == b * (patch + depth * block)


def _aot(*args):
    command = [sys.executable, str(ROOT / "launch" / "aot.py"), "--json", *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=ROOT, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, done.stderr[-3000:]
    return done.returncode, json.loads(lines[-1])


SMALL = ("--config", str(ROOT / "configs" / "teacher_s.py"), "--config.batch_size=8", "--config.model.crop=28")


@pytest.mark.slow
def test_small_config_fits_a_v5p_slice_with_its_memory_and_flops_accounted():
    code, r = _aot(*SMALL, "--topology", "v5p:2x2x1")
    assert code == 0 and r["fits"] is True
    assert r["devices"] == 4 and r["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
    # data parallel: every chip holds all float32 parameters and Adam's two moments of each
    assert r["optimizer_gib"] == pytest.approx(2 * r["params_gib"], rel=1e-3)
    assert r["params_gib"] + r["optimizer_gib"] <= r["hbm_gib"] <= r["hbm_budget_gib"]
    assert r["model_tflops_per_step"] > 0 and r["frozen_tflops_per_step"] == 0
    assert 0 < r["mfu"] <= 1 and r["step_seconds"] > 0
    assert r["images_per_second_per_chip"] == pytest.approx(8 / r["step_seconds"] / 4)

    code, infer = _aot(*SMALL, "--topology", "v5p:2x2x1", "--mode", "infer")
    assert code == 0 and infer["fits"] is True and infer["optimizer_gib"] == 0
    # a forward is a third of a train step whose every product is trained
    assert infer["frozen_tflops_per_step"] * 3 == pytest.approx(r["model_tflops_per_step"], rel=1e-9)


@pytest.mark.slow
def test_config_too_big_for_the_chip_is_reported_and_exits_1():
    code, r = _aot(*SMALL[:2], "--config.batch_size=2048", "--config.model.crop=140", "--topology", "v5e:2x2")
    assert code == 1
    assert r["fits"] is False and r["hbm_budget_gib"] == 14.0
    assert r["hbm_gib"] is None or r["hbm_gib"] > 14.0


def test_remat_policies_give_the_gradients_of_no_remat_and_unknown_names_are_refused():
    images = jax.random.normal(jax.random.key(1), (2, 28, 28, 3))
    grads = {}
    for remat in (False, "dots", True):
        model = DinoVisionTransformer("vits", attention_impl="xla", remat=remat)
        params = model.init(jax.random.key(0), images)["params"]
        loss = lambda p, model=model: jnp.sum(model.apply({"params": p}, images, (0,))[0] ** 2)
        grads[remat] = jax.jit(jax.grad(loss))(params)
    eps = float(jnp.finfo(jnp.float32).eps)
    for remat in ("dots", True):
        # recomputation changes what is stored, not the maths: only XLA's fusion (float32 rounding) may differ;
        # the longest reduction of one block is over tokens x MLP width (5 x 1536)
        for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[remat])):
            assert float(jnp.max(jnp.abs(a - b))) <= 16 * eps * (5 * 1536) ** 0.5 * float(jnp.max(jnp.abs(a)))
    with pytest.raises(ValueError, match="remat must be a bool or one of"):
        DinoVisionTransformer("vits", remat="some").init(jax.random.key(0), images)
