"""SwiGLU MLP (FLA GatedMLP): down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mdn_jax.model.params import linear


class SwiGLU(nnx.Module):
    """x: [..., D] -> [..., D]. Parameters gate_proj, up_proj [D, I], down_proj [I, D] (logical 'embed'/'mlp')."""

    def __init__(self, hidden_size: int, intermediate_size: int, *, std: float = 0.02, rngs: nnx.Rngs,
                 dtype=jnp.float32, param_dtype=jnp.float32):
        kw = dict(std=std, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.gate_proj = linear(hidden_size, intermediate_size, ("embed", "mlp"), **kw)
        self.up_proj = linear(hidden_size, intermediate_size, ("embed", "mlp"), **kw)
        self.down_proj = linear(intermediate_size, hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
