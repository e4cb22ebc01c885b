"""Device mesh, logical-axis rules and the shardings derived from them; multi-host start-up.

The mesh always has the three axes `("data", "fsdp", "tensor")`. Data parallel, FSDP (ZeRO-3) and FSDP + tensor
parallel are three rule tables over the same logical names, not three code paths.
"""

import math
import os

import flax.linen as nn
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")

# Priority-ordered (logical name, mesh axes) pairs, resolved per array as Flax does: a logical axis takes the
# first rule whose mesh axes are still free in that array. Logical names without a rule are replicated.
RULE_SETS = {
    "dp": (
        ("batch", ("data", "fsdp", "tensor")),
    ),
    "fsdp": (
        ("batch", ("data", "fsdp", "tensor")),
        ("embed", "fsdp"),
        ("mlp", "fsdp"),
        ("heads", "fsdp"),
        ("conv_out", "fsdp"),
        ("conv_in", "fsdp"),
    ),
    # Convolutions are not split over "tensor": two stacked 3x3 convolutions whose kernels were split
    # (conv_in over fsdp, conv_out over tensor) got wrong gradients from XLA's partitioned program on 8 CPU
    # devices (Depth Anything V2's DPT head under FSDP + TP; tests/test_student_metric_mesh.py).
    "fsdp_tp": (
        ("batch", ("data", "fsdp")),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("embed", "fsdp"),
        ("conv_in", "fsdp"),
        ("mlp", "fsdp"),
        ("conv_out", "fsdp"),
    ),
}


COORDINATOR_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def cluster_detected():
    """Whether JAX's own cluster detection finds a multi-process environment (Cloud TPU VMs and GKE, SLURM,
    Open MPI, Kubernetes): the environments in which `jax.distributed.initialize()` needs no arguments."""
    from jax._src import clusters  # JAX's detection table; no public API exposes it

    return any(not env.opt_in_only_method and env.is_env_present() for env in clusters.ClusterEnv._cluster_types)


def initialize_distributed():
    """Start JAX's distributed runtime when this process is one of several; returns the process count.

    With `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` set, those are
    passed explicitly (jax 0.10 does not read them itself; on CPU the processes talk through Gloo). Otherwise, where
    JAX detects a cluster (a TPU VM slice, SLURM, ...), `jax.distributed.initialize()` finds its own parameters. A
    lone process needs no coordinator and starts none.
    """
    given = [name for name in COORDINATOR_VARIABLES if name in os.environ]
    if given:
        if len(given) != len(COORDINATOR_VARIABLES):
            missing = sorted(set(COORDINATOR_VARIABLES) - set(given))
            raise ValueError(f"{', '.join(given)} set but {', '.join(missing)} not: set all three or none")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif cluster_detected():
        jax.distributed.initialize()
    return jax.process_count()


def mesh_shape(data, fsdp, tensor, num_devices):
    """Resolve the sizes of the three axes; at most one may be -1 ("all remaining devices")."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one of mesh.data/fsdp/tensor may be -1, got {sizes}; give explicit sizes")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"{num_devices} devices cannot be split into mesh {sizes}: the fixed axes ({known}) must divide "
                "the device count"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, but "
            f"{num_devices} are available; set one of --config.mesh.data/fsdp/tensor to -1"
        )
    return tuple(sizes)


def make_mesh(data=-1, fsdp=1, tensor=1, devices=None):
    """A `Mesh` with axes ("data", "fsdp", "tensor"), all `AxisType.Auto` (what Linen's logical constraints need)."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_rules(sharding, extra=()):
    """The rule table for `sharding` ("dp" | "fsdp" | "fsdp_tp"), preceded by task-specific `extra` rules."""
    if sharding not in RULE_SETS:
        raise ValueError(f"config.sharding must be one of {sorted(RULE_SETS)}, got {sharding!r}")
    return tuple(extra) + RULE_SETS[sharding]


def _axes_tuple(mesh_axes):
    return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)


def partition_spec(shape, names, rules, mesh):
    """PartitionSpec for an array of `shape` whose dimensions carry logical `names`.

    Flax's priority resolution, plus divisibility: a rule is used only if the dimension divides evenly over its
    mesh axes (a 3-channel patch kernel is replicated rather than padded). Mesh axes of size 1 are dropped.
    """
    result = [None] * len(shape)
    used = set()
    for logical, mesh_axes in rules:
        if logical not in names or mesh_axes is None:
            continue
        pos = names.index(logical)
        axes = tuple(a for a in _axes_tuple(mesh_axes) if mesh.shape[a] > 1)
        if result[pos] is not None or not axes or used.intersection(axes):
            continue
        if shape[pos] % math.prod(mesh.shape[a] for a in axes):
            continue
        result[pos] = axes[0] if len(axes) == 1 else axes
        used.update(axes)
    return PartitionSpec(*result)


def tree_shardings(boxed_tree, mesh, rules):
    """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes (others are replicated)."""

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            return NamedSharding(mesh, partition_spec(leaf.value.shape, leaf.names, rules, mesh))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, boxed_tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _batch_axes(mesh, rules):
    for logical, mesh_axes in rules:
        if logical == "batch" and mesh_axes is not None:
            return tuple(a for a in _axes_tuple(mesh_axes) if mesh.shape[a] > 1)
    return ()


def batch_sharding(mesh, rules):
    """Sharding of any batch array: the leading axis split as the "batch" rule says, other axes replicated."""
    axes = _batch_axes(mesh, rules)
    return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def batch_shards(mesh, rules):
    """Into how many pieces the global batch is split (the global batch size must be a multiple of it)."""
    return math.prod(mesh.shape[a] for a in _batch_axes(mesh, rules))
