"""Train state: model split into (graphdef, params), optimizer, shardings, and sharded initialisation.

The state is a plain pytree (a dict), so orbax saves it as is:
  params    pure dict of float32 (cfg.param_dtype) master arrays, sharded by logical-axis rules
  opt_state optax state; per-parameter moments sharded like the parameters, counters replicated
  step      int32 scalar: optimizer steps taken (including skipped ones)
  skipped   int32 scalar: steps whose gradients were non-finite (update not applied)
  rng       uint32[2] PRNG key data, folded with the step each step (for models with dropout)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from mdn_jax.train import sharding as shd
from mdn_jax.train.config import TrainConfig
from mdn_jax.train.optimizer import decay_mask, make_optimizer


@dataclasses.dataclass
class TrainSetup:
    """Everything static about a run: the model's graph, optimizer, mesh and shardings."""

    cfg: TrainConfig
    mesh: Mesh
    make_model: Callable[[], nnx.Module]
    model_config: Any
    graphdef: Any
    rest: Any                     # non-Param model state (kept constant)
    abstract_params: nnx.State    # Param variables with metadata, ShapeDtypeStruct values
    tx: optax.GradientTransformation
    param_shardings: dict
    state_shardings: dict
    n_params: int
    embedding_params: int

    def merge(self, params: dict) -> nnx.Module:
        """A model module from a pure-dict of parameter arrays (inside or outside jit)."""
        return nnx.merge(self.graphdef, nnx.State(params), self.rest)


def _opt_state_shardings(opt_abstract, params_abstract: dict, param_sh: dict, mesh: Mesh):
    """Subtrees of the optimizer state shaped like the params get the params' shardings; the rest replicated."""
    ptree = jax.tree.structure(params_abstract)
    rep = shd.replicated(mesh)

    def is_params_like(x):
        try:
            return jax.tree.structure(x) == ptree
        except Exception:  # noqa: BLE001
            return False

    return jax.tree.map(lambda x: param_sh if is_params_like(x) else rep, opt_abstract, is_leaf=is_params_like)


def make_setup(cfg: TrainConfig, mesh: Mesh, make_model: Callable[[], nnx.Module], model_config: Any) -> TrainSetup:
    """Trace the model abstractly (no allocation) and derive optimizer, mask and shardings."""
    abstract_model = nnx.eval_shape(make_model)
    graphdef, abstract_params, rest = nnx.split(abstract_model, nnx.Param, ...)
    rest = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x, rest)
    params_abs = abstract_params.to_pure_dict()
    mask = decay_mask(abstract_params, cfg.no_decay)
    tx = make_optimizer(cfg, mask)
    param_sh = shd.param_shardings(abstract_params, cfg.sharding_rules, mesh)
    opt_abs = jax.eval_shape(tx.init, params_abs)
    rep = shd.replicated(mesh)
    state_sh = {"params": param_sh, "opt_state": _opt_state_shardings(opt_abs, params_abs, param_sh, mesh),
                "step": rep, "skipped": rep, "rng": rep}
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(params_abs)))
    emb = 0
    for path, var in nnx.to_flat_state(abstract_params):
        names = (var.get_metadata() or {}).get("out_sharding") or ()
        if "embed" in "/".join(map(str, path)).lower() and "vocab" in tuple(names or ()):
            emb += int(np.prod(jnp.shape(var.get_value())))
    return TrainSetup(cfg, mesh, make_model, model_config, graphdef, rest, abstract_params, tx, param_sh, state_sh,
                      n_params, emb)


def init_state(setup: TrainSetup, eager: bool | None = None) -> dict:
    """Initialise params (cast to cfg.param_dtype) and optimizer state into their shardings.

    eager: run the initialisers op by op and place the result (one device: no sharded allocation is needed, and
    it skips the compile of one program holding every initialiser, ~46 s of the 400M model's ~55 s on CPU), or
    as one jit program whose outputs are born sharded (several devices). None picks eager on a one-device mesh.
    The two give the same random draws; values may differ in the last bit (XLA fuses the scaling differently).
    """
    pdt = jnp.dtype(setup.cfg.param_dtype)
    if eager is None:
        eager = setup.mesh.size == 1

    def init():
        params = nnx.split(setup.make_model(), nnx.Param, ...)[1].to_pure_dict()
        params = jax.tree.map(lambda x: x.astype(pdt) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
        return {"params": params, "opt_state": setup.tx.init(params), "step": jnp.zeros((), jnp.int32),
                "skipped": jnp.zeros((), jnp.int32),
                "rng": jax.random.key_data(jax.random.key(setup.cfg.seed + 1))}

    with jax.sharding.use_mesh(setup.mesh) if hasattr(jax.sharding, "use_mesh") else _null():
        if eager:
            return jax.device_put(_own_buffers(init()), setup.state_shardings)
        return jax.jit(init, out_shardings=setup.state_shardings)()


def _own_buffers(tree):
    """Copy every leaf that is the same array as an earlier one, so each leaf has its own buffer.

    Eager initialisers may alias (a model giving two parameters one array; astype to the same dtype returns its
    input), and a train step that donates the state then fails with "donate the same buffer twice". A jit
    program's outputs never alias, so only the eager path needs this.
    """
    seen: set[int] = set()

    def own(x):
        if not isinstance(x, jax.Array):
            return x
        if id(x) in seen:
            return jnp.copy(x)
        seen.add(id(x))
        return x

    return jax.tree.map(own, tree)


def abstract_state(setup: TrainSetup) -> dict:
    """ShapeDtypeStructs with shardings of the state (the restore target)."""
    shapes = jax.eval_shape(lambda: init_state_shapes(setup))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes,
                        setup.state_shardings)


def init_state_shapes(setup: TrainSetup) -> dict:
    pdt = jnp.dtype(setup.cfg.param_dtype)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, pdt if jnp.issubdtype(x.dtype, jnp.floating)
                                                         else x.dtype), setup.abstract_params.to_pure_dict())
    return {"params": params, "opt_state": setup.tx.init(params), "step": jnp.zeros((), jnp.int32),
            "skipped": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(0))}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def replicated_like(tree, mesh: Mesh):
    return jax.tree.map(lambda _: NamedSharding(mesh, jax.sharding.PartitionSpec()), tree)
