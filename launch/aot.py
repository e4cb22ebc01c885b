"""Ahead-of-time TPU plan of a config on this machine: does the train step fit a slice, how fast, at what MFU.

    python launch/aot.py --config configs/teacher_g.py --topology v5p:2x2x2 [--num_slices N] [--json]
        [--mode train|infer] [--config.a.b=value ...]
    python launch/aot.py --table [--table_reports DIR]   # recompile the docs/tpu.md table and rewrite it

Compiles the very train step `launch/train.py` runs (`launch.loop.prepare_training`: same mesh, shardings and
donation) for the TPU topology with libtpu (`pip install -e '.[tpu]'`), from abstract arrays only: no parameter
is initialised and no data is read (the example batch is one procedurally generated scene of the config's size,
passed through the task's `prepare`). Reports per chip the HBM of parameters, optimizer state, activations and
temporaries against the chip's budget, the model FLOPs of a step (counted from the program, `launch/model_flops`),
the cost model's step time and the resulting cost-model MFU. Exit status 1 when the step does not fit.
`--mode infer` compiles the task's `predict` (the forward used for evaluation and inference) instead.
"""

import os

# Compile-only TPU devices need no TPU and no metadata server; computations of the tool itself stay on the CPU.
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Other JAX processes on this machine may hold libtpu's lock file; compile-only use does not need it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import hlo_cost, loop, model_flops, tasks  # noqa: E402
from launch.data import synthetic  # noqa: E402
from launch.optimizer import trained_mask  # noqa: E402

GIB = 2 ** 30


# Per JAX device: bf16 dense peak (TFLOP/s), HBM budget (GiB: usable HBM less ~10 % for fragmentation and the
# runtime), HBM bandwidth (GB/s), ICI bandwidth per chip (GB/s, both directions), TensorCore clock (GHz; None where
# not published), JAX devices per chip; topology-name prefix -> figures (Cloud TPU documentation).
CHIPS = {
    "v5p": dict(peak_tflops=459.0, budget_gib=85.0, hbm_gbps=2765.0, ici_gbps=600.0, clock_ghz=1.75,
                devices_per_chip=1),
    "v5e": dict(peak_tflops=197.0, budget_gib=14.0, hbm_gbps=819.0, ici_gbps=200.0, clock_ghz=1.5, devices_per_chip=1),
    "v6e": dict(peak_tflops=918.0, budget_gib=28.0, hbm_gbps=1638.0, ici_gbps=448.0, clock_ghz=1.75,
                devices_per_chip=1),
    "v4": dict(peak_tflops=275.0, budget_gib=28.0, hbm_gbps=1200.0, ici_gbps=300.0, clock_ghz=1.05, devices_per_chip=1),
    "tpu7x": dict(peak_tflops=1153.5, budget_gib=85.0, hbm_gbps=3700.0, ici_gbps=1200.0, clock_ghz=None,
                  devices_per_chip=2),
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "training config file (a get_config() Python file)")
_TOPOLOGY = flags.DEFINE_string("topology", "v5p:2x2x2", "TPU topology, e.g. v5p:2x2x2, v5e:4x4, v6e:2x4, tpu7x:2x2x1")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "slices joined by the data-centre network (multi-slice job)")
_JSON = flags.DEFINE_bool("json", False, "print one JSON object instead of the human-readable report")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "infer"], "train step, or the task's predict (inference)")
_SAMPLE = flags.DEFINE_string("sample_size", "", "HxW of the generated example scene (default: the config's crop)")
_DUMP_HLO = flags.DEFINE_string("dump_hlo", "", "write the compiled program's optimised HLO text to this file")
_TABLE = flags.DEFINE_bool("table", False, "recompile every row of the docs/tpu.md table and rewrite it")
_TABLE_REPORTS = flags.DEFINE_string("table_reports", "", "with --table: keep each row's report here and reuse it")


def topology_devices(topology, num_slices=1):
    """Compile-only TPU devices of `topology` ("v5p:2x2x2"), and the per-device figures of its chip."""
    from jax.experimental import topologies

    chip = topology.split(":")[0]
    if chip not in CHIPS:
        raise ValueError(f"unknown TPU generation {chip!r} in --topology {topology!r}; expected one of {sorted(CHIPS)}")
    kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
    if chip == "v4":
        kwargs["chip_config_name"] = "megacore"  # one JAX device per chip, as on a real v4 slice
    try:
        devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices
    except Exception as error:  # libtpu absent or a name it does not know
        raise RuntimeError(
            f"could not describe TPU topology {topology!r} ({error}); install libtpu with pip install -e '.[tpu]' "
            "and use a name like v5p:2x2x2, v5e:4x4, v6e:2x4 or tpu7x:2x2x1"
        ) from error
    return devices, CHIPS[chip]


def sample_size(config, override=""):
    """(height, width) of the generated example scene: --sample_size, else `model.crop`, else the first source's
    (its `resize`, else its `crop`, else its height and width)."""
    if override:
        h, w = (int(v) for v in override.lower().split("x"))
        return h, w
    if "model" in config and "crop" in config.model:
        return int(config.model.crop), int(config.model.crop)
    for entry in dict(config.data.sources).values():
        for shaped in ("resize", "crop"):
            if entry.get(shaped):
                return tuple(int(v) for v in entry[shaped])
        if "height" in entry and "width" in entry:
            return int(entry["height"]), int(entry["width"])
    raise ValueError("the config has no model.crop and no source with height/width: pass --sample_size HxW")


def example_batch(config, task, size):
    """One prepared example (leading batch axis 1) from a generated scene: every field a reader may deliver."""
    sample = synthetic.generate(0, 0, size[0], size[1], "mixed")
    sample["disparity"] = np.where(sample["valid"], 1.0 / np.maximum(sample["depth"], 1e-6), 0.0).astype(np.float32)
    return {k: np.asarray(v)[None] for k, v in task.prepare(sample, np.random.default_rng(0)).items()}


def for_tpu(config, scratch):
    """The config as a TPU host would run it: attention "auto" resolves to XLA's fused kernels there (here the
    tracing backend is the CPU, on which "auto" would pick the CPU formulation). A Marigold `model.base` (SD2) or
    `model.teacher` (Marigold v1.1) folder that does not exist here is replaced by its published configuration
    files, written under `scratch` (`marigold_jax.architecture`): compiling needs the shapes, never the weights.
    Returns (config, the replaced fields)."""
    config = config.copy_and_resolve_references()
    if "model" in config and config.model.get("attention_impl") == "auto":
        config.model.attention_impl = "xla"
    replaced = []
    for field, modality in (("base", None), ("teacher", config.get("model", {}).get("modality", "depth"))):
        path = config.get("model", {}).get(field)
        if config.task.startswith("marigold") and isinstance(path, str) and path and not os.path.exists(path):
            from marigold_jax import architecture

            config.model[field] = architecture.write_folder(os.path.join(scratch, field), modality)
            replaced.append(field)
    return config, replaced


def _shard_bytes(tree):
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings."""
    return sum(
        int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)
    )


def _hbm_from_error(message):
    """HBM the compiler said the program needs, from its out-of-memory message, in GiB (None if not stated)."""
    found = re.search(r"Used ([\d.]+)([KMGT]) of ([\d.]+)([KMGT]) hbm", message)
    if not found:
        return None
    scale = {"K": 2 ** -20, "M": 2 ** -10, "G": 1.0, "T": 2 ** 10}
    return float(found.group(1)) * scale[found.group(2)]


def plan(config, topology, num_slices=1, mode="train", sample_override="", dump_hlo=""):
    """Compile `config`'s train step (or predict) for `topology`; returns the report dict (see module doc).

    dump_hlo: a file to write the compiled program's optimised HLO text to ("" = none)."""
    with tempfile.TemporaryDirectory() as scratch:
        config, replaced = for_tpu(config, scratch)
        report = _plan(config, topology, num_slices, mode, sample_override, dump_hlo)
    if replaced:
        report["architecture_only"] = replaced
    return report


def _plan(config, topology, num_slices, mode, sample_override, dump_hlo):
    devices, chip = topology_devices(topology, num_slices)
    task = tasks.build_task(config)
    example = example_batch(config, task, sample_size(config, sample_override))
    setup = loop.prepare_training(config, task, example, devices)
    replicated = NamedSharding(setup.mesh, PartitionSpec())
    batch = {
        k: jax.ShapeDtypeStruct((config.batch_size, *v.shape[1:]), v.dtype, sharding=setup.batch_sharding)
        for k, v in example.items()
    }
    key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=replicated)
    state, frozen = setup.abstract_state, setup.abstract_frozen
    report = dict(config=None, topology=topology, num_slices=num_slices, mode=mode, devices=len(devices),
                  chips=len(devices) // chip["devices_per_chip"], batch_size=int(config.batch_size),
                  sharding=config.sharding, mesh=dict(setup.mesh.shape), hbm_budget_gib=chip["budget_gib"])
    if "model" in config:
        report.update({k: config.model[k] for k in ("dtype", "remat") if k in config.model})
    start = time.perf_counter()
    with jax.set_mesh(setup.mesh), nn.logical_axis_rules(setup.rules):
        if mode == "train":
            labels = task.param_groups(state.params)
            mask = trained_mask(config.optimizer, labels)
            flops = model_flops.count(task.loss, (mask, False, False, False, False, False), state.params, frozen,
                                      batch, key, state.step, state.targets)
            model_step = flops.step()
            jitted, args = setup.step, (state, frozen, batch, key)
        else:
            flops = model_flops.count(task.predict, (False,) * 4, state.params, frozen, batch, key)
            model_step = flops.forward()
            jitted = jax.jit(task.predict, in_shardings=(setup.state_shardings.params, setup.frozen_shardings,
                                                         setup.batch_sharding, replicated))
            args = (state.params, frozen, batch, key)
        try:
            compiled = jitted.lower(*args).compile()
        except Exception as error:  # the compiler's out-of-memory error is the authoritative "does not fit"
            if "RESOURCE_EXHAUSTED" not in str(error) and "hbm" not in str(error).lower():
                raise
            compiled, oom = None, str(error).splitlines()[0]
    report["compile_seconds"] = round(time.perf_counter() - start, 1)
    report["model_tflops_per_step"] = model_step / 1e12
    report["frozen_tflops_per_step"] = flops.frozen / 1e12
    report["params_gib"] = _shard_bytes(state.params) / GIB
    report["optimizer_gib"] = (_shard_bytes(state.opt_state) if mode == "train" else 0) / GIB
    report["frozen_gib"] = _shard_bytes(frozen) / GIB
    if compiled is None:
        report.update(fits=False, hbm_gib=_hbm_from_error(oom), error=oom, step_seconds=None, mfu=None)
        return report
    if dump_hlo:
        with open(dump_hlo, "w") as f:
            f.write(compiled.as_text())
    mem = compiled.memory_analysis()
    counted = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
               + mem.temp_size_in_bytes)
    hbm = max(counted, getattr(mem, "peak_memory_in_bytes", 0)) / GIB
    report.update(activations_gib=mem.temp_size_in_bytes / GIB, hbm_gib=hbm, fits=hbm <= chip["budget_gib"])
    report.update(step_time(compiled, chip, model_step / len(devices), len(devices)))
    step = report["step_seconds"]
    if step:
        report["mfu"] = model_step / (len(devices) * chip["peak_tflops"] * 1e12 * step)
        if report.get("cost_model_seconds"):
            report["mfu_cost_model"] = model_step / (len(devices) * chip["peak_tflops"] * 1e12
                                                     * report["cost_model_seconds"])
        report["images_per_second_per_chip"] = config.batch_size / step / report["chips"]
        if mode == "train":
            report["schedule_hours"] = config.total_steps * step / 3600
    else:
        report["mfu"] = None
    return report


def step_time(compiled, chip, model_flops_per_device, devices):
    """Step time of the compiled program, and where it came from.

    Preferred: the compiler's per-operation estimates summed over the program (`launch.hlo_cost`: compute, and
    communication at the ICI bandwidth assumed overlapped with it). Where the chip's clock is not known, the cost
    model's `optimal_seconds`; where that declines too (a negative value), the roofline bound
    max(FLOPs / peak, HBM bytes / bandwidth) of the per-device counts, with FLOPs the larger of XLA's count
    (recomputation included) and the model FLOPs. `optimal_seconds` is reported beside the per-operation estimate:
    it is a bound that overlaps everything (a 32768×8192 by 8192×8192 product: per-op 2.66 ms, cost model 2.79 ms;
    a bilinear resize with its layout copies: per-op 2.9 ms, cost model 0.63 ms).
    The per-operation estimate counts a loop body once per trip; the cost model and XLA's counts read it once, so
    a looping program gets no step time where the clock is unknown.
    """
    text = compiled.as_text()
    loops = re.search(r"\bwhile\(", text) is not None
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    optimal = cost.get("optimal_seconds", -1.0)
    out = dict(xla_tflops_per_device=cost.get("flops", 0.0) / 1e12,
               xla_hbm_gb_per_device=cost.get("bytes accessed", 0.0) / 1e9,
               cost_model_seconds=optimal if optimal > 0 and not loops else None)
    if chip["clock_ghz"]:
        ops = hlo_cost.estimate(text, chip["clock_ghz"] * 1e9, chip["ici_gbps"] * 1e9 / 2, devices)
        out.update(step_seconds=ops["step_seconds"], step_source=f"per-op estimate ({ops['bound']} bound)",
                   compute_seconds=ops["compute_seconds"], communication_seconds=ops["communication_seconds"],
                   collective_gb_per_device=ops["collective_gb"], unestimated_ops=ops["unestimated"])
        return out
    if loops:
        return dict(out, step_seconds=None, step_source="none: the program loops and the chip's clock is unknown")
    if optimal > 0:
        return dict(out, step_seconds=optimal, step_source="cost model")
    flops = max(cost.get("flops", 0.0), model_flops_per_device)
    roof = max(flops / (chip["peak_tflops"] * 1e12), cost.get("bytes accessed", 0.0) / (chip["hbm_gbps"] * 1e9))
    return dict(out, step_seconds=roof, step_source=f"roofline (cost model declined: {optimal:.3g})")


def format_report(r):
    lines = [
        f"{r['config']} on {r['topology']} x{r['num_slices']} ({r['devices']} devices), {r['mode']}, batch "
        f"{r['batch_size']}, sharding {r['sharding']} mesh {r['mesh']}, dtype {r.get('dtype')}, remat {r.get('remat')}",
        f"per chip: parameters {r['params_gib']:.2f} GiB, optimizer state {r['optimizer_gib']:.2f} GiB, frozen "
        f"{r['frozen_gib']:.2f} GiB, activations/temporaries "
        + (f"{r['activations_gib']:.2f} GiB" if "activations_gib" in r else "?"),
        "HBM per chip: " + (f"{r['hbm_gib']:.2f}" if r["hbm_gib"] is not None else "?")
        + f" GiB of a {r['hbm_budget_gib']:.0f} GiB budget: " + ("fits" if r["fits"] else "DOES NOT FIT"),
        f"model FLOPs per step: {r['model_tflops_per_step']:.1f} TFLOP (frozen parts {r['frozen_tflops_per_step']:.1f})",
    ]
    if r.get("architecture_only"):
        lines.append(f"weights: none read; model.{' and model.'.join(r['architecture_only'])} not found here, "
                     "compiled from the published configuration")
    if r.get("error"):
        lines.append(f"compiler: {r['error']}")
    if r.get("step_seconds"):
        lines.append(f"step time ({r['step_source']}): {r['step_seconds'] * 1e3:.1f} ms; estimated MFU "
                     f"{100 * r['mfu']:.1f} %; {r['images_per_second_per_chip']:.1f} images/s/chip"
                     + (f"; full schedule {r['schedule_hours']:.1f} h" if "schedule_hours" in r else ""))
        if "compute_seconds" in r:
            lines.append(f"  compute {r['compute_seconds'] * 1e3:.1f} ms, communication "
                         f"{r['communication_seconds'] * 1e3:.1f} ms ({r['collective_gb_per_device']:.2f} GB per "
                         "device), operations without an estimate "
                         f"(not counted): {r['unestimated_ops'] or 'none'}")
        if r.get("cost_model_seconds"):
            lines.append(f"  cost model's bound (overlaps everything): {r['cost_model_seconds'] * 1e3:.1f} ms, MFU "
                         f"{100 * r['mfu_cost_model']:.1f} %")
    elif "step_source" in r:
        lines.append(f"step time: {r['step_source']}")
    lines.append(f"compiled in {r['compile_seconds']:.0f} s")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _TABLE.value:
        from launch import aot_table

        aot_table.regenerate(reports_dir=_TABLE_REPORTS.value or None)
        return
    if _CONFIG.value is None:
        raise app.UsageError("--config is required (or --table)")
    report = plan(_CONFIG.value, _TOPOLOGY.value, _NUM_SLICES.value, _MODE.value, _SAMPLE.value, _DUMP_HLO.value)
    report["config"] = flags.FLAGS["config"].config_filename
    print(json.dumps(report) if _JSON.value else format_report(report))
    sys.exit(0 if report["fits"] else 1)


if __name__ == "__main__":
    app.run(main)
