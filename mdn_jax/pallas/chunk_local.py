"""Pallas kernels (Triton lowering) for the chunk-local stage of the forward (spec 3.1-3.4), in three stages.

Each kernel runs one program per (row x value head, chunk) and keeps few tiles live (the structure of FLA's
chunked delta-rule forward: gates and products, triangular solve, WY products):

1. `_coeff_kernel`: gate coefficients by recipe F (`mdn_jax.pallas.gates`), W = (P Kt^T) o Gamma_down (float32),
   attn = Gamma o (Qb Kt^T), Kg = diag(Gamma_L) Kt, Kr = diag(rho) Kt, a, b, d, e and (a_L, b_L, m_L).
2. `_solve_kernel`: T = (I + W)^-1: 16 x 16 diagonal blocks by forward substitution, then the off-diagonal
   blocks X_ij = -X_ii sum_k W_ik X_kj by 16 x 16 products (float32 accumulation; see `gates.gate_precision`).
3. `_wy_kernel`: U = T V, Y = T diag(d) P, Z = T diag(e) P (operand-dtype products, float32 accumulation).

Inputs stay in the op's [B, Tp, HV, ...] layout (no transposes); outputs are in the layouts of
`mdn_jax.pallas.chunk_pass`. Under differentiation the coefficient kernel also writes Gamma, Gamma_down, d, e
and rho for the backward (`LocalResiduals`).
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


class LocalResiduals(NamedTuple):
    """What the chunk-local stage saves for its backward, [B*HV, NC, ...] per chunk."""

    t: jax.Array  # [C, C] (I + W)^-1, operand dtype
    gamma: jax.Array  # [C, C] float32
    gamma_down: jax.Array  # [C, C] float32
    vecs: jax.Array  # [3, C] float32: d, e, rho


def _coeff_kernel(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref,
                  w_ref, attn_ref, qbo_ref, kg_ref, kr_ref, a_ref, b_ref, d_ref, e_ref, decay_ref, *res_refs,
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
    qbo_ref[bh, c] = qb.astype(qbo_ref.dtype)
    ktf = kt.astype(acc)
    rho = common.pick_row(cf.d_mu, chunk - 1)
    kg_ref[bh, c] = (ktf * common.pick_row(cf.gamma, chunk - 1)[:, None]).astype(kg_ref.dtype)
    kr_ref[bh, c] = (ktf * rho[:, None]).astype(kr_ref.dtype)
    a_ref[bh, c] = cf.a
    b_ref[bh, c] = cf.b
    e = gates.shift_down(cf.b)
    d_ref[bh, c] = cf.d
    e_ref[bh, c] = e
    decay_ref[bh, c] = common.scalars_vector(chunk, gates.last(cf.a), gates.last(cf.b), gates.last(cf.m))
    if res_refs:  # the coefficients the backward reads (`LocalResiduals`)
        gamma_ref, gdown_ref, vec_ref = res_refs
        gamma_ref[bh, c] = cf.gamma
        gdown_ref[bh, c] = cf.gamma_down
        for i, x in enumerate((cf.d, e, rho)):
            vec_ref[bh, c, i] = x


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


def _wy_kernel(t_ref, p_ref, v_ref, d_ref, e_ref, u_ref, y_ref, z_ref, *, chunk, num_heads, block, precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    ts = pl.ds(c * chunk, chunk)
    op_dtype, acc = t_ref.dtype, d_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)
    t = t_ref[bh, c]
    d, e = d_ref[bh, c][:, None], e_ref[bh, c][:, None]
    for k0 in range(0, y_ref.shape[-1], block):
        ks = pl.ds(k0, block)
        p = p_ref[row, ts, head, ks].astype(acc)
        y_ref[bh, c, :, ks] = dot(t, (d * p).astype(op_dtype)).astype(y_ref.dtype)
        z_ref[bh, c, :, ks] = dot(t, (e * p).astype(op_dtype)).astype(z_ref.dtype)
    for v0 in range(0, u_ref.shape[-1], block):
        vs = pl.ds(v0, block)
        u_ref[bh, c, :, vs] = dot(t, v_ref[row, ts, head, vs].astype(op_dtype)).astype(u_ref.dtype)


def chunk_local(qb, kt, p, v, log_alpha, log_mu, beta, *, chunk, op_dtype, interpret, num_warps=4, with_t=False):
    """The chunk-local stage of the forward in Pallas kernels.

    qb, kt, p: [B, Tp, HV, K]; v: [B, Tp, HV, V] (K, V powers of two >= 16); log_alpha, log_mu, beta:
    [B, Tp, HV]; chunk in 16/32/64 divides Tp. Returns, as `mdn_jax.pallas.core._xla_local` does,
    (a, b, decay) float32 [B*HV, NC, C] and (qb, attn, u, y, z, kg, kr) [B*HV, NC, C, .] in op_dtype;
    with_t: also the `LocalResiduals` of the backward (T = (I + W)^-1 and the gate coefficients).
    """
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    BH, NC, C = B * HV, Tp // chunk, chunk
    op_dtype = jnp.dtype(op_dtype)
    acc = jnp.float64 if op_dtype == jnp.float64 else jnp.float32
    precision = common.dot_precision(op_dtype, interpret)
    gate_precision = gates.gate_precision(op_dtype, interpret)
    qb, kt, p, v = (x.astype(op_dtype) for x in (qb, kt, p, v))
    grid, stages = (BH, NC), tuning.num_stages("local", K, op_dtype)
    shape = lambda *s, dtype=op_dtype: jax.ShapeDtypeStruct((BH, NC) + s, dtype)  # noqa: E731
    coeff = functools.partial(_coeff_kernel, chunk=C, num_heads=HV, precision=precision,
                              gate_precision=gate_precision)
    coeff_shapes = ((shape(C, C, dtype=acc), shape(C, C), shape(C, K), shape(C, K), shape(C, K))
                    + tuple(shape(C, dtype=acc) for _ in range(5)))
    if with_t:
        coeff_shapes += (shape(C, C, dtype=acc), shape(C, C, dtype=acc), shape(3, C, dtype=acc))
    w, attn, qbo, kg, kr, a, b, d, e, decay, *coeff_res = common.call(
        coeff, grid, coeff_shapes, interpret, num_warps, qb, kt, p, log_alpha, log_mu, beta, stages=stages)
    solve = functools.partial(_solve_kernel, chunk=C, gate_precision=gate_precision)
    (t,) = common.call(solve, grid, (shape(C, C),), interpret, num_warps, w, stages=stages)
    wy = functools.partial(_wy_kernel, chunk=C, num_heads=HV, block=min(64, K, V), precision=precision)
    u, y, z = common.call(wy, grid, (shape(C, V), shape(C, K), shape(C, K)), interpret, num_warps,
                          t, p, v, d, e, stages=stages)
    outs = (a, b, decay, qbo, attn, u, y, z, kg, kr)
    return (outs, LocalResiduals(t, *coeff_res)) if with_t else outs
