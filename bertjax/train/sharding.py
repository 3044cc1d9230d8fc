"""The device mesh ('data', 'fsdp', 'tensor') and logical-axis rules -> NamedShardings.

'data' replicates parameters and splits the batch (pmap-style data parallelism), 'fsdp'
splits the batch *and* the parameters and optimizer state (ZeRO-3), 'tensor' splits
the hidden, MLP, head and vocabulary dimensions of each matmul (Megatron-style).
"""

import math

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from bertjax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
# The batch dimension is split over both batch-parallel axes.
BATCH_AXES = ("data", "fsdp")
# Logical axis -> mesh axes, first match wins: the default of every config. "batch" comes first
# so that activations keep it on ('data', 'fsdp') and "embed" falls back to unsplit on them;
# parameters (which have no batch axis) get "embed" split over 'fsdp'.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("position", None),
    ("segment", None),
    ("embed_out", None),
    ("layers", None),  # the stacked layers' axis (model.scan_layers): each device holds all
)


def mesh_shape(mesh_cfg, num_devices: int) -> dict[str, int]:
    """Resolves the config's axis sizes, -1 meaning "the remaining devices"."""
    sizes = {axis: int(mesh_cfg[axis]) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise UserError(
            f"mesh: only one axis may be -1, got {', '.join('mesh.' + a for a in free)}"
        )
    bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
    if bad:
        raise UserError(f"mesh.{bad[0]}={sizes[bad[0]]}: axis sizes are positive or -1")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise UserError(
                f"mesh: {num_devices} devices are not divisible by the fixed axis sizes "
                f"{_describe(sizes)} (product {fixed})"
            )
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise UserError(
            f"mesh: axis sizes {_describe(sizes)} multiply to {fixed}, "
            f"but there are {num_devices} devices"
        )
    return sizes


def _describe(sizes):
    return " x ".join(f"{axis}={size}" for axis, size in sizes.items())


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
    """One mesh over all devices of all processes (or `devices`), axes MESH_AXES.

    The axes are Auto: shardings come from the logical rules and the compiler propagates
    them, rather than explicit-sharding types on every array.
    """
    devices = jax.devices() if devices is None else list(devices)
    sizes = mesh_shape(mesh_cfg, len(devices))
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    try:
        return jax.make_mesh(
            shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
        )
    except NotImplementedError:  # jax lays each mesh axis along whole sides of a TPU torus
        torus = "x".join(
            str(max(d.coords[i] for d in devices) + 1) for i in range(len(devices[0].coords))
        )
        raise UserError(
            f"mesh: axis sizes {_describe(sizes)} cannot be laid onto the {torus} torus of "
            f"the {len(devices)} {devices[0].device_kind} chips: each axis size must be a "
            f"product of whole sides of the torus (of {torus.replace('x', ', ')})"
        ) from None


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    """How many ways the batch is split."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def logical_rules(config) -> tuple[tuple[str, object], ...]:
    """The config's logical-axis rules as a tuple of (logical name, mesh axes) pairs."""
    return tuple(
        (name, tuple(axes) if isinstance(axes, list) else axes)
        for name, axes in config.logical_axis_rules
    )


def tree_shardings(abstract_boxed_tree, mesh: jax.sharding.Mesh, rules):
    """NamedShardings for a tree whose leaves are (possibly) `nn.LogicallyPartitioned`.

    Unboxed leaves (step counters, optimizer scalars) are replicated.
    """
    specs = nn.get_partition_spec(abstract_boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, rules)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (example) dimension split over the batch-parallel axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def micro_batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """[K, b, ...] micro-batches: each micro-batch split like a batch."""
    return NamedSharding(mesh, PartitionSpec(None, BATCH_AXES))


def global_batch(
    local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
    """Assembles each process's slice of the batch into global arrays split over BATCH_AXES.

    Process p holds rows [p*b, (p+1)*b) of the global batch (b = its local batch size).
    """
    sharding = batch_sharding(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }


def check_divisible(abstract_tree, shardings) -> None:
    """Raises UserError if a parameter dimension does not split evenly over its mesh axes
    (jit requires even splits), naming the parameter and the rule to change."""
    from flax import linen as nn

    leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract_tree))
    for (path, leaf), named in zip(leaves, jax.tree_util.tree_leaves(shardings)):
        mesh_shape = dict(named.mesh.shape)
        for dim, axes in zip(leaf.shape, named.spec):
            axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            ways = math.prod(mesh_shape[a] for a in axes)
            if dim % ways:
                name = jax.tree_util.keystr(path, simple=True, separator="/")
                raise UserError(
                    f"parameter {name} of shape {tuple(leaf.shape)} cannot be split {ways} ways "
                    f"over mesh axes {axes} (dimension {dim}): change the mesh or the "
                    "logical_axis_rules entry that maps this dimension to "
                    f"{axes[0] if len(axes) == 1 else axes}"
                )
