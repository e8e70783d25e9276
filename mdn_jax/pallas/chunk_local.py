"""Pallas kernels (Triton lowering) for the chunk-local stage of the forward (spec 3.1-3.4), in two stages.

Each kernel runs one program per (row x value head, chunk) and keeps few tiles live (the structure of FLA's
chunked delta-rule forward):

1. `_coeff_kernel`: gate coefficients by recipe F (`mdn_jax.pallas.gates`), W = (P Kt^T) o Gamma_down (float32),
   attn = Gamma o (Qb Kt^T), and per chunk the [C] vectors a, b, d, e, Gamma_L (the last row of Gamma), rho and
   (a_L, b_L, m_L).
2. `_solve_kernel`: T = (I + W)^-1: 16 x 16 diagonal blocks by forward substitution, then the off-diagonal
   blocks X_ij = -X_ii sum_k W_ik X_kj by 16 x 16 products (float32 accumulation; see `gates.gate_precision`).

The WY products U = T V, Y = T diag(d) P, Z = T diag(e) P and Kg = diag(Gamma_L) Kt, Kr = diag(rho) Kt are not
formed: the sequential pass (`mdn_jax.pallas.chunk_pass`) applies T, d, e, Gamma_L and rho to P, V and Kt
itself. Inputs stay in the op's [B, Tp, HV, ...] layout (no transposes). Under differentiation the coefficient
kernel also writes Gamma and Gamma_down for the backward (`LocalResiduals`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.pallas import common, gates, tuning

_BLOCK = 16  # diagonal block of the triangular solve
VECS = ("a", "b", "d", "e", "g_last", "rho")  # the rows of `LocalOutputs.vecs`


def vec_columns(vec_ref, bh, c):
    """Chunk c's [C] vectors of `LocalOutputs.vecs` (in a kernel) as columns [C, 1], by name (`VECS`)."""
    return {name: vec_ref[bh, c, i][:, None] for i, name in enumerate(VECS)}


class LocalOutputs(NamedTuple):
    """The chunk-local stage's outputs, [B*HV, NC, ...] per chunk."""

    t: jax.Array  # [C, C] (I + W)^-1, operand dtype
    attn: jax.Array  # [C, C] Gamma o (Qb Kt^T), operand dtype
    vecs: jax.Array  # [6, C] float32, rows named by VECS
    decay: jax.Array  # [C] float32: (a_L, b_L, m_L, 0, ...)


class LocalResiduals(NamedTuple):
    """What the chunk-local stage also writes under differentiation, [B*HV, NC, ...] per chunk."""

    gamma: jax.Array  # [C, C] float32
    gamma_down: jax.Array  # [C, C] float32


def _coeff_kernel(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref, w_ref, attn_ref, vec_ref, decay_ref, *res_refs,
                  chunk, num_heads, precision, gate_precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    ts = pl.ds(c * chunk, chunk)
    acc = w_ref.dtype
    cf = gates.coefficients(la_ref[row, ts, head].astype(acc), lm_ref[row, ts, head].astype(acc),
                            beta_ref[row, ts, head].astype(acc), gate_precision)
    qb, kt, p = qb_ref[row, ts, head, :], kt_ref[row, ts, head, :], p_ref[row, ts, head, :]
    dot = functools.partial(common.dot, precision=precision, acc=acc)
    w_ref[bh, c] = dot(p, kt.T) * cf.gamma_down
    attn_ref[bh, c] = (dot(qb, kt.T) * cf.gamma).astype(attn_ref.dtype)
    vecs = dict(a=cf.a, b=cf.b, d=cf.d, e=cf.e, g_last=common.pick_row(cf.gamma, chunk - 1),
                rho=common.pick_row(cf.d_mu, chunk - 1))
    for i, name in enumerate(VECS):
        vec_ref[bh, c, i] = vecs[name]
    decay_ref[bh, c] = common.scalars_vector(chunk, gates.last(cf.a), gates.last(cf.b), gates.last(cf.m))
    if res_refs:  # `LocalResiduals`
        gamma_ref, gdown_ref = res_refs
        gamma_ref[bh, c] = cf.gamma
        gdown_ref[bh, c] = cf.gamma_down


def _solve_kernel(w_ref, t_ref, *, chunk, gate_precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    acc = w_ref.dtype
    nb, n = chunk // _BLOCK, _BLOCK
    block = lambda i, j: w_ref[bh, c, pl.ds(i * n, n), pl.ds(j * n, n)]  # noqa: E731
    rows, cols = common.iota((n, n), 0), common.iota((n, n), 1)
    eye = (rows == cols).astype(acc)
    diag = [block(i, i) for i in range(nb)]

    def substitute(r, xs):  # row r of each diagonal-block inverse: e_r - sum_j W_rj X_j
        unit = (common.iota((n,), 0) == r).astype(acc)
        new = [unit - jnp.sum(common.pick_row(w, r)[:, None] * x, axis=0) for w, x in zip(diag, xs, strict=True)]
        return tuple(jnp.where(rows == r, v[None, :], x) for v, x in zip(new, xs, strict=True))

    inv = {(i, i): x for i, x in enumerate(lax.fori_loop(1, n, substitute, (eye,) * nb))}
    mm = functools.partial(jnp.dot, precision=gate_precision, preferred_element_type=acc)
    for i in range(1, nb):
        for j in range(i - 1, -1, -1):
            s = sum(mm(block(i, k), inv[k, j]) for k in range(j, i))
            inv[i, j] = -mm(inv[i, i], s)
    for i in range(nb):
        for j in range(nb):
            x = inv[i, j] if j <= i else jnp.zeros((n, n), acc)
            t_ref[bh, c, pl.ds(i * n, n), pl.ds(j * n, n)] = x.astype(t_ref.dtype)


def chunk_local(qb, kt, p, log_alpha, log_mu, beta, *, chunk, op_dtype, interpret, num_warps=4, solve_warps=1,
                with_residuals=False):
    """The chunk-local stage of the forward in Pallas kernels.

    qb, kt, p: [B, Tp, HV, K] (K a power of two >= 16); log_alpha, log_mu, beta: [B, Tp, HV]; chunk in 16/32/64
    divides Tp; num_warps, solve_warps: Triton warps of the coefficient and solve kernels. Returns `LocalOutputs`
    (T, attn, vecs, decay); with_residuals: (LocalOutputs, LocalResiduals).
    """
    B, Tp, HV, K = kt.shape
    BH, NC, C = B * HV, Tp // chunk, chunk
    op_dtype = jnp.dtype(op_dtype)
    acc = common.acc_dtype(op_dtype)
    qb, kt, p = (x.astype(op_dtype) for x in (qb, kt, p))
    grid, stages = (BH, NC), tuning.num_stages("local", K, op_dtype)
    gate_precision = gates.gate_precision(op_dtype, interpret)
    coeff = functools.partial(_coeff_kernel, chunk=C, num_heads=HV, precision=common.dot_precision(op_dtype, interpret),
                              gate_precision=gate_precision)
    shape = lambda *s, dtype=acc: jax.ShapeDtypeStruct((BH, NC) + s, dtype)  # noqa: E731
    shapes = (shape(C, C), shape(C, C, dtype=op_dtype), shape(len(VECS), C), shape(C))
    if with_residuals:
        shapes += (shape(C, C), shape(C, C))
    w, attn, vecs, decay, *res = common.call(coeff, grid, shapes, interpret, num_warps, qb, kt, p, log_alpha, log_mu,
                                             beta, stages=stages)
    solve = functools.partial(_solve_kernel, chunk=C, gate_precision=gate_precision)
    (t,) = common.call(solve, grid, (shape(C, C, dtype=op_dtype),), interpret, solve_warps, w, stages=stages)
    outs = LocalOutputs(t, attn, vecs, decay)
    return (outs, LocalResiduals(*res)) if with_residuals else outs
