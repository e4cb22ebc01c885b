"""Step time of a compiled TPU program from the TPU compiler's own per-operation estimates.

The compiler's cost model (`cost_analysis()["optimal_seconds"]`) reads a loop body once, and every FSDP train
step loops (XLA computes each FSDP product as a windowed loop over the weight shards); it also declines (returns a
negative number) for a whole program as soon as one operation has no estimate. Every top-level operation of the
optimised program carries the compiler's estimate in its backend config (`"estimated_cycles"`, the operation's
cycles on the TensorCores of one chip). This module sums them and adds the rest:

- compute: Σ estimated cycles of the entry computation's operations (and of `call` bodies, the longest branch
  of a `conditional`, a `while` body and condition times the trip count: the compiler's, or N for a condition
  `counter < N`, which is how the windowed all-gather matmuls of FSDP loop over the shards) ÷ the chip's clock.
  Operations run one after the other on the TensorCores, so the sum is the compute time of a step. Fusions count
  once, at their call site.
- operations without an estimate (sorts, work offloaded to the SparseCores): named and counted, with their bytes;
  they are not in the compute time (a sort of a few MB is ~1 ms).
- communication: bytes each device sends or receives in all-gathers, reduce-scatters, all-reduces, all-to-alls and
  collective permutes, ÷ the chip's ICI bandwidth. XLA runs these asynchronously, overlapped with compute, so
  the step time is max(compute, communication) and the report says which bounds it.

Calibration: a 32768×8192 by 8192×8192 bfloat16 product on one v5p chip (1.1 TFLOP) is estimated at 4.65 M
cycles = 2.66 ms at 1.75 GHz, 90 % of peak (the cost model's own figure for that program: 2.79 ms).
"""

import re

# Bytes per element of HLO element types.
_ITEMSIZE = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "bf16": 2, "f16": 2,
             "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_UNKNOWN = 2 ** 63 - 1  # the compiler's "no estimate"
_FREE_CUSTOM_CALLS = ("AllocateBuffer", "AssumeGatherIndicesInBound")  # markers, no work
_COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(?P<name>[\w.\-]+) = (?P<shape>.*?) (?P<op>[\w\-]+)\((?P<rest>.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")


def _bytes(shape):
    """Bytes of an HLO shape string (an array or a tuple of arrays)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in _ITEMSIZE:
            count = 1
            for d in filter(None, dims.split(",")):
                count *= int(d)
            total += count * _ITEMSIZE[dtype]
    return total


def _largest_array_bytes(shape):
    return max((_bytes(f"{t}[{d}]") for t, d in _ARRAY.findall(shape)), default=0)


def _computations(text):
    """name -> list of instruction lines, and the name of the entry computation."""
    comps, entry, current = {}, None, None
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%([\w.\-]+) .*\{\s*$", line)
        if header:
            current = header.group(2)
            comps[current] = []
            if header.group(1):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps, entry


def _group_size(rest, devices):
    """Devices in one replica group of a collective (its `replica_groups`), else all devices."""
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", rest)
    if mesh:
        sizes = dict((k, int(v)) for k, v in re.findall(r"'(\w+)'=(\d+)", mesh.group(1)))
        size = 1
        for axis in re.findall(r"'(\w+)'", mesh.group(2)):
            size *= sizes.get(axis, 1)
        return size
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=", rest)
    if iota:
        return int(iota.group(1).split(",")[-1])
    explicit = re.search(r"replica_groups=\{\{([\d,]+)\}", rest)
    if explicit:
        return len(explicit.group(1).split(","))
    return devices


def _collective_bytes(op, shape, rest, devices):
    """Bytes one device sends (= receives) in a collective, from its output shape and group size n."""
    n = _group_size(rest, devices)
    if n <= 1:
        return 0.0
    array = _largest_array_bytes(shape)
    if op.startswith("all-gather"):
        return array * (n - 1) / n
    if op.startswith("reduce-scatter"):
        return array * (n - 1)  # the output is 1/n of the reduced input
    if op.startswith("all-reduce"):
        return 2 * array * (n - 1) / n
    return float(array)


def _trip_count(rest, condition):
    """Trips of a while loop: the compiler's `known_trip_count`, else N when its condition is `counter < N` for a
    constant N (the windowed all-gather matmuls of FSDP count from 0 in steps of 1); None when neither is found."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
    if known:
        return int(known.group(1))
    constants = dict(re.findall(r"%([\w.\-]+) = [su]32\[\]\S* constant\((\d+)\)", "\n".join(condition)))
    root = next((line for line in condition if line.lstrip().startswith("ROOT ")), "")
    compared = re.search(r"compare\(%[\w.\-]+, %([\w.\-]+)\), direction=LT", root)
    return int(constants[compared.group(1)]) if compared and compared.group(1) in constants else None


def estimate(text, clock_hz, ici_bytes_per_second, devices):
    """Per-device step-time estimate of an optimised TPU HLO module (`compiled.as_text()`); see the module doc.

    Returns a dict: compute_seconds, communication_seconds, step_seconds (their max), bound ("compute" or
    "communication"), collective_gb (per device), unestimated (op name -> count) and unestimated_gb (their
    output bytes per device).
    """
    comps, entry = _computations(text)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    unestimated, totals = {}, dict(unestimated=0.0)

    def count(label):
        unestimated[label] = unestimated.get(label, 0) + 1

    def walk(name):
        """(cycles, collective bytes) of computation `name`, loops and calls included."""
        cycles, sent = 0, 0.0
        for line in comps.get(name, ()):
            found = _INSTRUCTION.match(line)
            if not found:
                continue
            op, shape, rest = found.group("op"), found.group("shape"), found.group("rest")
            if op.endswith("-done"):
                continue
            if any(op.startswith(c) for c in _COLLECTIVES):
                sent += _collective_bytes(op, shape, rest, devices)
                continue
            if op == "custom-call" and any(f'custom_call_target="{t}"' in rest for t in _FREE_CUSTOM_CALLS):
                continue
            if op == "conditional":
                branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
                costs = [walk(b) for b in re.findall(r"%([\w.\-]+)", branches.group(1) if branches else "")]
                if costs:
                    cycles, sent = cycles + max(c for c, _ in costs), sent + max(b for _, b in costs)
                continue
            if op in ("call", "while"):
                if op == "call":
                    times, callees = 1, re.findall(r"to_apply=%([\w.\-]+)", rest)
                else:
                    callees = re.findall(r"(?:body|condition)=%([\w.\-]+)", rest)
                    cond = re.search(r"condition=%([\w.\-]+)", rest)
                    times = _trip_count(rest, comps.get(cond.group(1), ()) if cond else ())
                    if times is None:
                        count("while (unknown trip count)")
                        continue
                for callee in callees:
                    c, b = walk(callee)
                    cycles, sent = cycles + times * c, sent + times * b
                continue
            value = re.search(r'"estimated_cycles":"(\d+)"', rest)
            if value and int(value.group(1)) != _UNKNOWN:
                cycles += int(value.group(1))
            elif op in ("sort", "call-start", "custom-call") or value:
                count("sort" if op == "sort" else found.group("name").split(".")[0])
                totals["unestimated"] += _bytes(shape)
        return cycles, sent

    cycles, sent = walk(entry)
    compute = cycles / clock_hz
    communication = sent / ici_bytes_per_second
    return dict(compute_seconds=compute, communication_seconds=communication,
                step_seconds=max(compute, communication),
                bound="compute" if compute >= communication else "communication",
                collective_gb=sent / 1e9, unestimated=unestimated,
                unestimated_gb=totals["unestimated"] / 1e9)
