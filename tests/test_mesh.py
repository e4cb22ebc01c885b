"""Sharding on 8 simulated CPU devices: DP, FSDP and FSDP+TP train like one device, and really shard.

The 8 devices exist only in a subprocess (`XLA_FLAGS=--xla_force_host_platform_device_count=8` must be set before
JAX starts, and must not leak into the other test modules), which runs every configuration once and reports JSON.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from launch import mesh as mesh_lib

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys, tempfile
    import flax.linen as nn
    import jax
    from test_loop import ToyTask, toy_config, toy_iterator
    from launch import loop, mesh as mesh_lib
    from dav2_jax import DepthAnythingV2

    assert jax.device_count() == 8, jax.devices()
    RUNS = {
        "one_device": dict(sharding="dp"),
        "dp": {"sharding": "dp", "mesh.data": -1},
        "fsdp": {"sharding": "fsdp", "mesh.data": 1, "mesh.fsdp": -1},
        "fsdp_tp": {"sharding": "fsdp_tp", "mesh.data": 1, "mesh.fsdp": 4, "mesh.tensor": 2},
        "data_fsdp_tp": {"sharding": "fsdp_tp", "mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},
    }

    def describe(tree):
        out = {}
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            out[jax.tree_util.keystr(path)] = [list(leaf.sharding.spec), list(leaf.addressable_shards[0].data.shape)]
        return out

    def run(name, overrides, workdir, stop_after_steps=None):
        config = toy_config(total_steps=5, batch_size=16, **overrides)
        task = ToyTask()
        devices = jax.devices()[:1] if name == "one_device" else None
        state, _ = loop.train(config, task, toy_iterator(task, 16), next(toy_iterator(task, 1)), workdir,
                              stop_after_steps=stop_after_steps, devices=devices)
        return state

    report = {}
    for name, overrides in RUNS.items():
        workdir = tempfile.mkdtemp()
        state = run(name, overrides, workdir)
        records = [json.loads(l) for l in open(workdir + "/metrics.jsonl")]
        report[name] = {"losses": [r["loss"] for r in records], "params": describe(state.params),
                        "opt_state": describe(state.opt_state)}

    # Restore into the sharded layout: interrupt an FSDP run, resume it, compare.
    workdir = tempfile.mkdtemp()
    run("fsdp", RUNS["fsdp"], workdir, stop_after_steps=2)
    state = run("fsdp", RUNS["fsdp"], workdir)
    records = [json.loads(l) for l in open(workdir + "/metrics.jsonl")]
    report["fsdp_resumed"] = {"losses": [r["loss"] for r in records], "params": describe(state.params)}

    # The real model's logical names under each rule set (shapes only, nothing is computed).
    images = jax.ShapeDtypeStruct((1, 14, 14, 3), "float32")
    boxed = jax.eval_shape(DepthAnythingV2("vitg").init, jax.random.key(0), images)
    for sharding, shape in [("fsdp", (1, 8, 1)), ("fsdp_tp", (1, 4, 2))]:
        mesh = mesh_lib.make_mesh(*shape)
        specs = mesh_lib.tree_shardings(boxed["params"], mesh, mesh_lib.logical_rules(sharding))
        flat = {jax.tree_util.keystr(p): list(s.spec) for p, s in jax.tree_util.tree_flatten_with_path(specs)[0]}
        report["vitg_" + sharding] = flat
    print("REPORT" + json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


@pytest.mark.parametrize("name", ["dp", "fsdp", "fsdp_tp", "data_fsdp_tp"])
def test_sharded_training_gives_the_losses_of_one_device(report, name):
    reference = report["one_device"]["losses"]
    assert len(reference) == 5
    np.testing.assert_allclose(report[name]["losses"], reference, rtol=1e-5)


def test_data_parallel_replicates_parameters(report):
    for spec, _ in report["dp"]["params"].values():
        assert all(axis is None for axis in spec)


def test_fsdp_shards_every_divisible_parameter_and_its_adam_moments(report):
    params = report["fsdp"]["params"]
    assert params["['encoder']['kernel']"] == [["fsdp", None], [1, 32]]  # embed 8 over 8 devices
    assert params["['decoder']['kernel']"] == [[None, "fsdp"], [32, 1]]  # (mlp, embed): embed has priority
    assert params["['head']['kernel']"] == [["fsdp", None], [1, 1]]
    assert params["['head']['bias']"] == [[], [1]]  # created without logical names: replicated
    moments = [v for k, v in report["fsdp"]["opt_state"].items() if "['encoder']['kernel']" in k]
    assert moments and all(m == [["fsdp", None], [1, 32]] for m in moments)


def test_fsdp_tp_splits_hidden_units_over_tensor_and_embeddings_over_fsdp(report):
    params = report["fsdp_tp"]["params"]
    assert params["['encoder']['kernel']"] == [["fsdp", "tensor"], [2, 16]]
    assert params["['decoder']['kernel']"] == [["tensor", "fsdp"], [16, 2]]
    assert params["['encoder']['bias']"] == [["tensor"], [16]]


def test_resume_restores_straight_into_the_sharded_layout(report):
    np.testing.assert_array_equal(report["fsdp_resumed"]["losses"], report["fsdp"]["losses"])
    assert report["fsdp_resumed"]["params"] == report["fsdp"]["params"]


def test_vitg_rules_shard_attention_and_mlp_and_replicate_what_cannot_divide(report):
    fsdp, tp = report["vitg_fsdp"], report["vitg_fsdp_tp"]
    qkv = "['pretrained']['blocks_0']['attn']['qkv']['kernel']"  # (embed, qkv, heads, head_dim)
    w12 = "['pretrained']['blocks_0']['mlp']['w12']['kernel']"  # (embed, glu, mlp)
    assert fsdp[qkv] == ["fsdp", None, None, None]
    assert tp[qkv] == ["fsdp", None, "tensor", None]
    assert tp[w12] == ["fsdp", None, "tensor"]
    patch = "['pretrained']['patch_embed_proj']['kernel']"  # (14, 14, conv_in=3, embed)
    assert fsdp[patch] == [None, None, None, "fsdp"]
    head = "['depth_head']['scratch_output_conv2_2']['kernel']"  # (1, 1, 32, 1): 32 over fsdp, 1 output channel
    assert fsdp[head] == [None, None, "fsdp", None]


def test_partition_spec_uses_the_first_free_divisible_rule():
    mesh = jax.sharding.AbstractMesh((2, 4, 2), mesh_lib.AXES)
    rules = mesh_lib.logical_rules("fsdp_tp")
    assert mesh_lib.partition_spec((8, 5), ("embed", "mlp"), rules, mesh) == jax.sharding.PartitionSpec("fsdp", None)
    assert mesh_lib.partition_spec((6, 8), ("embed", "mlp"), rules, mesh) == jax.sharding.PartitionSpec(None, "tensor")
    assert mesh_lib.partition_spec((16,), ("batch",), rules, mesh) == jax.sharding.PartitionSpec(("data", "fsdp"))


def test_mesh_shape_fills_the_remaining_axis_and_explains_bad_sizes():
    assert mesh_lib.mesh_shape(-1, 2, 2, 8) == (2, 2, 2)
    assert mesh_lib.mesh_shape(1, -1, 1, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="at most one"):
        mesh_lib.mesh_shape(-1, -1, 1, 8)
    with pytest.raises(ValueError, match="set one of --config.mesh"):
        mesh_lib.mesh_shape(2, 2, 1, 8)
    assert math.prod(mesh_lib.mesh_shape(-1, 1, 1, 3)) == 3
