"""Model FLOPs counted from programs (default suite) and ahead-of-time TPU plans of real configs (slow).

The AOT tests compile for TPU with libtpu, which is the `[tpu]` extra (`pip install -e '.[tpu]'`, a 213 MB wheel,
~684 MB installed): it is not part of `[test]`, so these tests are marked slow and need that extra. Each compile
of the small ViT-S config takes about two minutes of CPU.
"""

import json
import os
import subprocess
import sys
import textwrap
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


HLO = """HloModule step, entry_computation_layout={()->f32[]}

%branch_a (p: f32[8]) -> f32[8] {
  %p = f32[8]{0} parameter(0)
  ROOT %small = f32[8]{0} fusion(%p), kind=kLoop, calls=%f1, backend_config={"window_config":{"estimated_cycles":"100"}}
}

%branch_b (q: f32[8]) -> f32[8] {
  %q = f32[8]{0} parameter(0)
  ROOT %large = f32[8]{0} fusion(%q), kind=kLoop, calls=%f2, backend_config={"window_config":{"estimated_cycles":"700"}}
}

%body (s: f32[8]) -> f32[8] {
  %s = f32[8]{0} parameter(0)
  ROOT %step = f32[8]{0} fusion(%s), kind=kLoop, calls=%f6, backend_config={"window_config":{"estimated_cycles":"50"}}
}

%more (c: f32[8]) -> pred[] {
  %c = f32[8]{0} parameter(0)
  ROOT %lt = pred[] fusion(%c), kind=kLoop, calls=%f7, backend_config={"window_config":{"estimated_cycles":"10"}}
}

%window_cond (w: (u32[], f32[8])) -> pred[] {
  %limit = u32[]{:T(128)} constant(4)
  %w = (u32[], f32[8]) parameter(0)
  %counter = u32[]{:T(128)} get-tuple-element(%w), index=0
  ROOT %lt.1 = pred[]{:T(512)} compare(%counter, %limit), direction=LT
}

%window_body (v: (u32[], f32[8])) -> (u32[], f32[8]) {
  %v = (u32[], f32[8]) parameter(0)
  %shift-start = (f32[64]{0}, f32[64]{0}) collective-permute-start(%v), source_target_pairs={{0,1},{1,0}}
  %shift-done = f32[64]{0} collective-permute-done(%shift-start)
  ROOT %part = (u32[], f32[8]) fusion(%v), kind=kOutput, calls=%f8, backend_config={"window_config":{"estimated_cycles":"25"}}
}

ENTRY %main (param: bf16[512,128], i: s32[]) -> f32[] {
  %param = bf16[512,128]{1,0:T(8,128)(2,1)} parameter(0)
  %all-gather.1 = bf16[2048,128]{1,0} all-gather(%param), replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, dimensions={0}
  %rs = f32[256]{0} reduce-scatter(%x), replica_groups=[2,4]<=[8], dimensions={0}, to_apply=%add
  %ar-start = (f32[1000]{0}, f32[1000]{0}) all-reduce-start(%y), replica_groups={{0,1}}, to_apply=%add
  %ar-done = f32[1000]{0} all-reduce-done(%ar-start)
  %matmul = bf16[512,64]{1,0} fusion(%param), kind=kOutput, calls=%f3, backend_config={"window_config":{"estimated_cycles":"3500"}}
  %offload = f32[4096]{0} fusion(%a, %b), kind=kCustom, calls=%f4, backend_config={"window_config":{"estimated_cycles":"9223372036854775807"}}
  %sort.3 = (f32[8,1024]{1,0}, s32[8,1024]{1,0}) sort(%c, %d), dimensions={1}, to_apply=%lt
  %cond = f32[8]{0} conditional(%i, %v, %w), branch_computations={%branch_a, %branch_b}
  %loop = f32[8]{0} while(%cond), condition=%more, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %windowed = (u32[], f32[8]) while(%init), condition=%window_cond, body=%window_body
  %buffer = f32[8]{0} custom-call(), custom_call_target="AllocateBuffer"
  ROOT %out = f32[] fusion(%cond), kind=kLoop, calls=%f5, backend_config={"window_config":{"estimated_cycles":"200"}}
}
"""


def test_per_op_estimate_sums_cycles_counts_collectives_and_names_what_it_cannot_cost():
    from launch import hlo_cost

    r = hlo_cost.estimate(HLO, clock_hz=1e9, ici_bytes_per_second=1e9, devices=8)
    # 3500 + 200 cycles, the longer branch of the conditional (700), 3 trips of the loop's body and condition
    # (50 + 10), 4 trips (`counter < 4`) of the windowed loop's body (25); the unknown estimate is left out
    assert r["compute_seconds"] == pytest.approx(4680e-9)
    # all-gather over axis_0 (4 devices) of 2048·128 bf16: 3/4 of the output; reduce-scatter over groups of 4:
    # 3 shards of 256 floats; all-reduce over 2 devices: twice half of 4000 bytes; 4 permutes of 64 floats
    sent = 2048 * 128 * 2 * 3 / 4 + 3 * 256 * 4 + 2 * 4000 / 2 + 4 * 64 * 4
    assert r["collective_gb"] == pytest.approx(sent / 1e9)
    assert r["communication_seconds"] == pytest.approx(sent / 1e9)
    assert r["step_seconds"] == pytest.approx(sent / 1e9) and r["bound"] == "communication"
    assert r["unestimated"] == {"offload": 1, "sort": 1}
    assert r["unestimated_gb"] == pytest.approx((4096 * 4 + 8 * 1024 * 8) / 1e9)


@pytest.mark.slow
def test_per_op_estimate_of_a_large_product_is_near_the_chip_peak():
    """A 1.1 TFLOP bfloat16 product on one v5p chip: the compiler's cycles at 1.75 GHz are 1 to 1.25 × the time
    at the 459 TFLOP/s peak; an FSDP all-gather of its weight is counted as 3/4 of the gathered bytes."""
    pytest.importorskip("libtpu")
    code = textwrap.dedent(
        """
        import json, os
        os.environ.update(TPU_SKIP_MDS_QUERY="1", JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
        import jax, jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from launch import aot, hlo_cost
        devices, chip = aot.topology_devices("v5p:2x2x1")
        mesh = Mesh(devices, ("fsdp",))
        a = jax.ShapeDtypeStruct((4 * 8192, 8192), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp", None)))
        b = jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16, sharding=NamedSharding(mesh, P("fsdp", None)))
        compiled = jax.jit(lambda a, b: a @ b).lower(a, b).compile()
        print(json.dumps(hlo_cost.estimate(compiled.as_text(), 1.75e9, 300e9, 4)))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.splitlines()[-1])
    peak = 2 * 8192 ** 3 / 459e12
    assert peak <= r["compute_seconds"] <= 1.25 * peak
    assert r["collective_gb"] == pytest.approx(8192 * 8192 * 2 * 3 / 4 / 1e9)


def test_table_is_written_from_kept_reports_without_compiling(tmp_path, monkeypatch):
    from launch import aot_table

    report = dict(config="configs/teacher_g.py", topology="v5p:2x2x2", chips=8, batch_size=64, sharding="fsdp",
                  mesh={"data": 1, "fsdp": 8, "tensor": 1}, dtype="bfloat16", remat="dots", hbm_gib=50.25,
                  hbm_budget_gib=85.0, params_gib=0.6, optimizer_gib=1.2, activations_gib=48.0, fits=True,
                  step_seconds=0.5, mfu=0.47, mfu_cost_model=0.61, images_per_second_per_chip=16.0,
                  schedule_hours=22.2)
    (tmp_path / "teacher_g_v5p_2x2x2.json").write_text(json.dumps(report))
    doc = tmp_path / "tpu.md"
    doc.write_text(f"intro\n{aot_table.BEGIN}\nold table\n{aot_table.END}\noutro\n")

    def no_compiles(*row):
        raise AssertionError(f"compiled {row} although its report was kept")

    monkeypatch.setattr(aot_table, "run_row", no_compiles)
    rows = (("configs/teacher_g.py", "v5p:2x2x2", ()),)
    assert aot_table.regenerate(rows, doc, reports_dir=tmp_path) == [report]
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    row = text.splitlines()[4]
    assert row.startswith("| `teacher_g` | v5p:2x2x2 (8 chips) | 64 | fsdp (fsdp 8) | bfloat16, dots |")
    assert "**50.2** / 85 GiB" in row and "| 500 ms | 47 % | 61 % | 16.0 | 22.2 h |" in row
