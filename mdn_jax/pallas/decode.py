"""Pallas kernel (Triton lowering) for one decode step of the recurrence, states updated in place.

One program per (row, value head, block of V columns); S and M blocks [K, BV] are read once and written
once through `input_output_aliases` (donate the state under jit to update it in place):

    r = S^T p - v;   M <- mu M + kt r^T;   S <- alpha S - beta M;   o = S^T qb
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton


def _step_kernel(qb_ref, kt_ref, p_ref, v_ref, gates_ref, s_ref, m_ref, o_ref, s_out_ref, m_out_ref, *, block_v):
    b, h = pl.program_id(0), pl.program_id(1)
    vs = pl.ds(pl.program_id(2) * block_v, block_v)
    acc = s_ref.dtype
    S, M = s_ref[b, h, :, vs], m_ref[b, h, :, vs]
    qb, kt, p = qb_ref[b, h, :].astype(acc), kt_ref[b, h, :].astype(acc), p_ref[b, h, :].astype(acc)
    alpha, mu, beta = gates_ref[b, h, 0], gates_ref[b, h, 1], gates_ref[b, h, 2]
    r = jnp.sum(p[:, None] * S, axis=0) - v_ref[b, h, vs].astype(acc)
    M = mu * M + kt[:, None] * r[None, :]
    S = alpha * S - beta * M
    o_ref[b, h, vs] = jnp.sum(qb[:, None] * S, axis=0).astype(o_ref.dtype)
    s_out_ref[b, h, :, vs] = S
    m_out_ref[b, h, :, vs] = M


def decode_step(qb, kt, p, v, alpha, mu, beta, S, M, *, interpret=None, block_v=None, num_warps=4):
    """qb, kt, p: [B, HV, K] (preprocessed); v: [B, HV, V]; alpha, mu, beta: [B, HV]; S, M: [B, HV, K, V].

    K and V must be powers of two >= 16. Returns (o [B, HV, V] float32, S, M) with S, M aliased to the inputs.
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    B, HV, K = qb.shape
    V = v.shape[-1]
    block_v = min(V, block_v or 32)
    gates = jnp.stack([alpha, mu, beta, jnp.zeros_like(beta)], axis=-1).astype(S.dtype)
    out_shape = (jax.ShapeDtypeStruct((B, HV, V), S.dtype), jax.ShapeDtypeStruct(S.shape, S.dtype),
                 jax.ShapeDtypeStruct(M.shape, M.dtype))
    return pl.pallas_call(
        functools.partial(_step_kernel, block_v=block_v), out_shape=out_shape, grid=(B, HV, V // block_v),
        input_output_aliases={5: 1, 6: 2}, interpret=interpret,
        compiler_params=None if interpret else pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
    )(qb, kt, p, v, gates, S, M)
