"""Short causal depthwise convolution + SiLU (spec 5.1, 5.5), with a decode state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mdn_jax.model.params import param


class ShortConv(nnx.Module):
    """Depthwise causal conv of width W over time, then SiLU.

    y_t[c] = silu(sum_{w<W} weight[w, c] * x_{t-W+1+w}[c] (+ bias[c])).

    Parameters: ``weight`` [W, C] (logical axes ('conv', 'heads'); PyTorch Conv1d layout is [C, 1, W]),
    optional ``bias`` [C]. State: the last W-1 *pre-activation inputs*, [B, W-1, C] (zeros = empty).
    """

    def __init__(self, channels: int, width: int = 4, *, use_bias: bool = False, std: float = 0.02,
                 rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.channels, self.width = channels, width
        self.weight = param(std * jax.random.normal(rngs.params(), (width, channels), param_dtype), ("conv", "heads"))
        self.bias = param(jnp.zeros((channels,), param_dtype), ("heads",)) if use_bias else None

    def init_state(self, batch: int, dtype=jnp.float32) -> jax.Array:
        """Empty decode state [B, W-1, C]."""
        return jnp.zeros((batch, self.width - 1, self.channels), dtype)

    def __call__(self, x: jax.Array, *, state: jax.Array | None = None, segment_ids: jax.Array | None = None):
        """x: [B, T, C]; state: [B, W-1, C] or None (zeros); segment_ids: [B, T] or None.

        With segment_ids, taps never reach across a change of id (packed documents stay independent).
        Returns (y [B, T, C] in x.dtype, new state [B, W-1, C] in the state dtype (x.dtype if None)).
        """
        B, T, C = x.shape
        W = self.width
        if state is None:
            state = jnp.zeros((B, W - 1, C), x.dtype)
        x_ext = jnp.concatenate([state.astype(x.dtype), x], axis=1)  # [B, T+W-1, C]
        w = self.weight[...].astype(x.dtype)
        if segment_ids is not None:
            seg_ext = jnp.concatenate([jnp.full((B, W - 1), -1, segment_ids.dtype), segment_ids], axis=1)
        y = jnp.zeros_like(x)
        for tap in range(W):
            xs = jax.lax.slice_in_dim(x_ext, tap, tap + T, axis=1)
            if segment_ids is not None and tap < W - 1:
                same = jax.lax.slice_in_dim(seg_ext, tap, tap + T, axis=1) == segment_ids
                xs = jnp.where(same[..., None], xs, 0)
            y = y + xs * w[tap]
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        new_state = x_ext[:, x_ext.shape[1] - (W - 1):].astype(state.dtype)
        return jax.nn.silu(y), new_state
