"""RMSNorm and the gated RMSNorm of the linear-attention output (spec 5.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mdn_jax.model.params import param


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) over the last axis, computed in float32."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """y = x / rms(x) * weight over the last axis (weight init 1). x: [..., dim] -> [..., dim] in x.dtype."""

    def __init__(self, dim: int, *, eps: float = 1e-6, axis_name: str | None = "embed", param_dtype=jnp.float32):
        self.eps = eps
        self.weight = param(jnp.ones((dim,), param_dtype), (axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return (rms_normalize(x, self.eps) * self.weight[...].astype(jnp.float32)).astype(x.dtype)


class GatedRMSNorm(nnx.Module):
    """y = RMSNorm(x) * act(g), shared over heads. x, g: [..., heads, dim] -> [..., heads, dim] in x.dtype.

    `activation` is 'sigmoid' (MDN) or 'swish' (FLA's GatedDeltaNet default).
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, activation: str = "sigmoid", param_dtype=jnp.float32):
        if activation not in ("sigmoid", "swish", "silu"):
            raise ValueError(f"unknown gate activation {activation!r}")
        self.eps = eps
        self.activation = activation
        self.weight = param(jnp.ones((dim,), param_dtype), ("kv",))

    def __call__(self, x: jax.Array, g: jax.Array) -> jax.Array:
        g32 = g.astype(jnp.float32)
        gate = jax.nn.sigmoid(g32) if self.activation == "sigmoid" else jax.nn.silu(g32)
        y = rms_normalize(x, self.eps) * self.weight[...].astype(jnp.float32) * gate
        return y.astype(x.dtype)
