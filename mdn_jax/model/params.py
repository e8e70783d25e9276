"""Parameter types, logical sharding axes and initialisers shared by the model modules.

Every parameter carries logical axis names (metadata key ``out_sharding``, read by
``nnx.get_partition_spec``) so that training code can map them onto a mesh with its own rules, e.g.
``{"embed": "fsdp", "heads": "tp", "kv_heads": "tp", "mlp": "tp", "vocab": "tp"}``. Eager sharding is
off: the model itself never needs a mesh.

Logical axes used:
  ``vocab``    vocabulary rows of the embedding / columns of the LM head
  ``embed``    the model width D
  ``heads``    flattened (head, head-dim) features of q/k/v/g and the per-head gate parameters
  ``kv_heads`` flattened key/value features of attention with grouped KV heads
  ``kv``       a per-head feature dimension that is shared by all heads (o_norm weight)
  ``mlp``      the SwiGLU hidden width
  ``conv``     the short-convolution taps (never sharded in practice)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

AXES = ("vocab", "embed", "heads", "kv_heads", "kv", "mlp", "conv")


class NoDecayParam(nnx.Param):
    """A parameter the authors exclude from weight decay (A_log, Mu_log, dt_bias, mu_bias, log_factor, D_log).

    It is an `nnx.Param` (trained as usual); select it with `nnx.state(model, NoDecayParam)` or mask it
    with `no_weight_decay_mask(model)`.
    """


def param(value: jax.Array, axes: tuple[str | None, ...], cls=nnx.Param) -> nnx.Param:
    """Wrap `value` as a parameter of type `cls` with logical axis names `axes`."""
    if len(axes) != value.ndim:
        raise ValueError(f"axes {axes} do not match the rank of a {value.shape} parameter")
    return cls(value, out_sharding=tuple(axes), eager_sharding=False)


def normal_init(std: float, axes: tuple[str | None, ...]):
    """N(0, std^2) initializer carrying logical axes, for nnx.Linear / nnx.Embed."""
    return nnx.with_partitioning(nnx.initializers.normal(std), axes, eager_sharding=False)


def zeros_init(axes: tuple[str | None, ...]):
    return nnx.with_partitioning(nnx.initializers.zeros_init(), axes, eager_sharding=False)


def linear(in_dim: int, out_dim: int, axes: tuple[str | None, str | None], *, std: float, rngs: nnx.Rngs,
           dtype=jnp.float32, param_dtype=jnp.float32, use_bias: bool = False) -> nnx.Linear:
    """Bias-free (by default) dense layer, kernel [in, out] ~ N(0, std^2), bias zeros, with logical axes."""
    return nnx.Linear(in_dim, out_dim, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=normal_init(std, axes), bias_init=zeros_init((axes[1],)),
                      precision=None, rngs=rngs)


def softplus_inverse(x: jax.Array) -> jax.Array:
    """softplus^-1(x) = x + log(-expm1(-x)) for x > 0."""
    return x + jnp.log(-jnp.expm1(-x))


def log_uniform_init(key, shape, low: float, high: float) -> jax.Array:
    """log U(low, high) (spec 5.2: A_log, Mu_log ~ log U(0, 16); log_factor ~ log U(0, 4); D_log ~ log U(0, 1))."""
    return jnp.log(jax.random.uniform(key, shape, jnp.float32, low, high))


def dt_bias_init(key, shape, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4) -> jax.Array:
    """softplus^-1(dt), dt = exp(U(log dt_min, log dt_max)) clamped >= floor (spec 5.2)."""
    u = jax.random.uniform(key, shape, jnp.float32)
    dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return softplus_inverse(jnp.maximum(dt, floor))


def no_weight_decay_mask(module: nnx.Module):
    """A pytree over `nnx.state(module, nnx.Param)`: True (decay) for every >= 2-D parameter that is not a
    NoDecayParam (kernels, embeddings, conv weights); False for NoDecayParam, norm weights and biases.

    Returns a State with bool leaves, usable as an optax mask (`optax.add_decayed_weights(wd, mask=...)`).
    """
    state = nnx.state(module, nnx.Param)
    flat = nnx.to_flat_state(state)
    leaves = []
    for path, var in flat:
        decay = not isinstance(var, NoDecayParam) and var.get_value().ndim >= 2
        leaves.append((path, decay))
    return nnx.State.from_flat_path(dict(leaves))
