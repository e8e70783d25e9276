"""The step recurrence (spec 2.2) with `jax.lax.scan`: the ground truth of the project."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mdn_jax.ops.core import CoreInputs, record_final, start_state


def _step(state, x):
    """One token for all rows and heads. state: (S, M) [B, HV, K, V]."""
    S, M = state
    qb, kt, p, v, la, lm, beta = x
    r = jnp.einsum("bhk,bhkv->bhv", p, S, precision="highest") - v  # (R1)
    M = jnp.exp(lm)[..., None, None] * M + kt[..., :, None] * r[..., None, :]  # (R2)
    S = jnp.exp(la)[..., None, None] * S - beta[..., None, None] * M  # (R3)
    o = jnp.einsum("bhk,bhkv->bhv", qb, S, precision="highest")  # (R4)
    return (S, M), o


def scan_core(x: CoreInputs, chunk_size: int):
    """Returns o [B, Tp, HV, V] and final (S, M) [N, HV, K, V], all in the compute dtype."""
    B, Tp, HV, K = x.kt.shape
    V = x.v.shape[-1]
    C = chunk_size
    nc = Tp // C
    dtype = x.s0.dtype

    def chunked(a):  # [B, Tp, ...] -> [NC, C, B, ...]
        a = a.reshape((B, nc, C) + a.shape[2:]).astype(dtype)
        return jnp.moveaxis(jnp.moveaxis(a, 1, 0), 2, 1)

    xs = tuple(chunked(a) for a in (x.qb, x.kt, x.p, x.v, x.log_alpha, x.log_mu, x.beta))

    def chunk_body(carry, inputs):
        S, M, fs, fm = carry
        xc, init, final = inputs
        S = start_state(S, x.s0, init)
        M = start_state(M, x.m0, init)
        (S, M), o = jax.lax.scan(_step, (S, M), xc)
        return (S, M, record_final(fs, final, S), record_final(fm, final, M)), o

    zeros = jnp.zeros((B, HV, K, V), dtype)
    carry0 = (zeros, zeros, jnp.zeros_like(x.s0), jnp.zeros_like(x.m0))
    (_, _, fs, fm), o = jax.lax.scan(chunk_body, carry0, (xs, x.chunk_init.T, x.chunk_final.T))
    o = jnp.moveaxis(o, 2, 0).reshape(B, Tp, HV, V)
    return o, (fs, fm)
