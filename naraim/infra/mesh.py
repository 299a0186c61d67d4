"""Device mesh and shardings: data parallel by default; FSDP shards params and optimizer state over 'data'."""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from naraim.infra.options import Option

DATA_AXIS = "data"
MESH_OPTIONS = {"fsdp": Option(False, "shard params and optimizer state over the data axis")}


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: all devices of all processes), axis 'data'."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch arrays are split along their first (example) dimension."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], num_shards: int, min_size: int = 2**10) -> P:
    """Shards the largest dimension divisible by `num_shards`; small or indivisible arrays stay replicated."""
    if num_shards == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % num_shards == 0:
            spec = [None] * len(shape)
            spec[dim] = DATA_AXIS
            return P(*spec)
    return P()


def state_shardings(mesh: Mesh, abstract_state, fsdp: bool):
    """NamedShardings for a pytree of arrays/ShapeDtypeStructs: replicated, or FSDP-sharded when `fsdp`."""
    n = mesh.shape[DATA_AXIS]

    def one(x):
        return NamedSharding(mesh, fsdp_spec(tuple(x.shape), n) if fsdp else P())

    return jax.tree_util.tree_map(one, abstract_state)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Per-process numpy batch -> global jax.Arrays sharded along the batch axis (no host-side
    concatenation)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
