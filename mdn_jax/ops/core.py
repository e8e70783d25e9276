"""What every implementation of the operator core receives: kernel-level inputs on whole chunks.

The core computes spec (R1)-(R4) on preprocessed inputs (q, k, p already L2-normalised and scaled:
``qb = s * qhat``, ``kt = eta * khat``, ``p = alpha * phat``), one value head per state.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class CoreInputs(NamedTuple):
    """Kernel-level operands; Tp is a multiple of the chunk size.

    qb, kt, p: [B, Tp, HV, K]; v: [B, Tp, HV, V]; log_alpha, log_mu, beta: [B, Tp, HV];
    s0, m0: [N, HV, K, V] initial states; chunk_init, chunk_final: [B, NC] int32 (see layout.py).
    """

    qb: jax.Array
    kt: jax.Array
    p: jax.Array
    v: jax.Array
    log_alpha: jax.Array
    log_mu: jax.Array
    beta: jax.Array
    s0: jax.Array
    m0: jax.Array
    chunk_init: jax.Array
    chunk_final: jax.Array


def start_state(carry: jax.Array, table: jax.Array, init: jax.Array) -> jax.Array:
    """Chunk-start state per row: the carry, or ``table[init]`` where ``init >= 0``. carry [B, ...]."""
    picked = table[jnp.clip(init, 0, table.shape[0] - 1)]
    keep = (init < 0).reshape((-1,) + (1,) * (carry.ndim - 1))
    return jnp.where(keep, carry, picked)


def record_final(table: jax.Array, final: jax.Array, state: jax.Array) -> jax.Array:
    """Writes ``state[b]`` into ``table[final[b]]`` where ``final[b] < N``."""
    return table.at[final].set(state.astype(table.dtype), mode="drop")
