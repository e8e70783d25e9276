"""Device mesh (data, fsdp, tensor), logical-axis -> mesh-axis rules, and multi-host start-up.

Parameters carry logical axis names (metadata `out_sharding`, e.g. ('embed', 'mlp')); `rules` maps each name to a
mesh axis, a list of mesh axes, or None. A mesh axis is left out of a dimension it does not divide or that another
dimension of the same parameter already uses, so any device count works (unsharded dims are replicated).
Batches are sharded over ('data', 'fsdp') on the batch dimension.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mdn_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

_DIST_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS")


def maybe_initialize_distributed() -> bool:
    """`jax.distributed.initialize()` (JAX's own runtime) when a multi-process launch is detected.

    Detected: JAX_COORDINATOR_ADDRESS / COORDINATOR_ADDRESS set, or SLURM / Open MPI with more than one task.
    Returns True when initialised here.
    """
    multi = any(os.environ.get(k) for k in _DIST_ENV)
    multi |= int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    multi |= int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    if not multi:
        return False
    jax.distributed.initialize()
    return True


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over all devices; one size may be -1 (filled from the device count)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = [int(data), int(fsdp), int(tensor)]
    if sizes.count(-1) > 1:
        raise UserError("at most one of mesh_data, mesh_fsdp, mesh_tensor may be -1")
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if known <= 0 or n % known:
            raise UserError(f"{n} devices are not divisible by the fixed mesh sizes {sizes}")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n or min(sizes) <= 0:
        raise UserError(f"mesh (data, fsdp, tensor) = {tuple(sizes)} does not use the {n} available devices")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(names, shape, rules: dict, mesh: Mesh) -> P:
    """PartitionSpec for one array with logical axis `names` (None entries / None names: replicated)."""
    if names is None:
        return P()
    used, out = set(), []
    for name, dim in zip(names, shape, strict=True):
        target = rules.get(name) if name is not None else None
        axes = [target] if isinstance(target, str) else list(target or [])
        chosen, size = [], 1
        for ax in axes:
            if ax not in mesh.shape:
                raise UserError(f"sharding rule {name!r} -> {ax!r}: not a mesh axis {MESH_AXES}")
            n = mesh.shape[ax]
            if ax in used or n == 1 or dim % (size * n):
                continue
            chosen.append(ax)
            size *= n
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*out)


def _names(var):
    meta = var.get_metadata() if hasattr(var, "get_metadata") else {}
    for key in ("out_sharding", "sharding_names", "sharding"):
        if meta.get(key) is not None:
            return tuple(meta[key])
    return None


def param_shardings(abstract_params: nnx.State, rules: dict, mesh: Mesh) -> dict:
    """Pure dict of NamedSharding matching `abstract_params.to_pure_dict()`."""
    flat = {}
    for path, var in nnx.to_flat_state(abstract_params):
        shape = jax.numpy.shape(var.get_value())
        flat[path] = NamedSharding(mesh, logical_to_spec(_names(var), shape, rules, mesh))
    return nnx.State.from_flat_path(flat).to_pure_dict()


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """[B, T] arrays: B over ('data', 'fsdp')."""
    return NamedSharding(mesh, P(BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_parallel_size(mesh: Mesh) -> int:
    return int(mesh.shape["data"] * mesh.shape["fsdp"])
