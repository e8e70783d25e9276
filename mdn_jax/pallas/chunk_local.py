"""Pallas kernel (Triton lowering) for the chunk-local stage: gates, Gamma, WY representation (spec 3.1-3.4).

One program per (row x value head, chunk), everything in registers:
    Dalpha, Dmu = exp(masked segment sums of log gates)        (recipe F: every exponent <= 0)
    Gamma = Dalpha diag(beta) Dmu,  b = Dalpha (beta m),  a, m, rho, d, e
    W = (P Kt^T) o shift_down(Gamma),  T = (I + W)^-1 by forward substitution (row by row, in registers)
    U = T V,  Y = T diag(d) P,  Z = T diag(e) P,  attn = Gamma o (Qb Kt^T),  Kg = Kt diag(Gamma_L),  Kr = Kt diag(rho)

The masked segment sums are products with 0/1 masks in IEEE float32; log gates are floored at -1e4
first (exp(-1e4) is exactly 0 in float32, as exp(-inf) is), so mu = 0 and segment resets stay exact
and no -inf meets a 0 in a product.
Its VJP is the autodiff of the jnp stage (`mdn_jax.ops.chunked.prepare_chunks`), recomputed in XLA.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.pallas import common

LOG_GATE_FLOOR = -1e4


def _prep_kernel(la_ref, lm_ref, beta_ref, qb_ref, kt_ref, p_ref, v_ref,
                 a_ref, b_ref, decay_ref, qbo_ref, attn_ref, u_ref, y_ref, z_ref, kg_ref, kr_ref,
                 *, num_heads, chunk, precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    ts = pl.ds(c * chunk, chunk)
    f32 = jnp.float32
    op_dtype = y_ref.dtype
    exact = functools.partial(jnp.dot, precision=lax.Precision.HIGHEST, preferred_element_type=f32)
    dot = functools.partial(common.dot, precision=precision, acc=f32)

    i = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    j = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    lower = i >= j
    strict_upper_ones = (i > j).astype(f32)  # [r, l]: 1 if r > l

    la = jnp.maximum(la_ref[bh, c].astype(f32), LOG_GATE_FLOOR)
    lm = jnp.maximum(lm_ref[bh, c].astype(f32), LOG_GATE_FLOOR)
    beta = beta_ref[bh, c].astype(f32)

    def decay_matrix(x):  # exp(sum_{r=l+1..tau} x_r) for l <= tau, else 0
        seg = exact(jnp.where(lower, x[None, :], 0.0), strict_upper_ones)
        return jnp.where(lower, jnp.exp(seg), 0.0)

    d_alpha, d_mu = decay_matrix(la), decay_matrix(lm)
    a = jnp.exp(jnp.sum(jnp.where(lower, la[None, :], 0.0), axis=1))
    m = jnp.exp(jnp.sum(jnp.where(lower, lm[None, :], 0.0), axis=1))
    gamma = exact(d_alpha, beta[:, None] * d_mu)
    b = jnp.sum(d_alpha * (beta * m)[None, :], axis=1)
    last = i == chunk - 1
    gamma_last = jnp.sum(jnp.where(last, gamma, 0.0), axis=0)
    rho = jnp.sum(jnp.where(last, d_mu, 0.0), axis=0)
    prev = j == i - 1  # [tau, r]: r = tau - 1
    gamma_down = exact(prev.astype(f32), gamma)
    pos = lax.broadcasted_iota(jnp.int32, (chunk,), 0)
    first, is_last = pos == 0, pos == chunk - 1
    d = jnp.sum(jnp.where(prev, a[None, :], 0.0), axis=1) + first.astype(f32)
    e = jnp.sum(jnp.where(prev, b[None, :], 0.0), axis=1)

    qb = qb_ref[row, ts, head, :].astype(op_dtype)
    kt = kt_ref[row, ts, head, :].astype(op_dtype)
    p = p_ref[row, ts, head, :].astype(op_dtype)
    v = v_ref[row, ts, head, :].astype(op_dtype)
    w = dot(p, kt.T) * gamma_down

    eye = (i == j).astype(f32)

    def substitute(r, t):  # row r of (I + W)^-1 from the rows above it
        w_r = jnp.sum(jnp.where(i == r, w, 0.0), axis=0)
        new_row = -jnp.sum(w_r[:, None] * t, axis=0)
        return jnp.where(i == r, new_row[None, :] + eye, t)

    t_inv = lax.fori_loop(1, chunk, substitute, eye).astype(op_dtype)
    u_ref[bh, c] = dot(t_inv, v).astype(u_ref.dtype)
    y_ref[bh, c] = dot(t_inv, (d[:, None] * p.astype(f32)).astype(op_dtype)).astype(y_ref.dtype)
    z_ref[bh, c] = dot(t_inv, (e[:, None] * p.astype(f32)).astype(op_dtype)).astype(z_ref.dtype)
    attn_ref[bh, c] = (dot(qb, kt.T) * gamma).astype(attn_ref.dtype)
    qbo_ref[bh, c] = qb.astype(qbo_ref.dtype)
    ktf = kt.astype(f32)
    kg_ref[bh, c] = (ktf * gamma_last[:, None]).astype(kg_ref.dtype)
    kr_ref[bh, c] = (ktf * rho[:, None]).astype(kr_ref.dtype)
    a_ref[bh, c] = a
    b_ref[bh, c] = b
    decay_ref[bh, c] = (jnp.where(pos == 0, jnp.sum(jnp.where(is_last, a, 0.0)), 0.0)
                        + jnp.where(pos == 1, jnp.sum(jnp.where(is_last, b, 0.0)), 0.0)
                        + jnp.where(pos == 2, jnp.sum(jnp.where(is_last, m, 0.0)), 0.0))


def chunk_local(qb, kt, p, v, log_alpha, log_mu, beta, *, chunk, op_dtype, interpret, num_warps=4):
    """qb, kt, p: [B, Tp, HV, K]; v: [B, Tp, HV, V]; gates: [B, Tp, HV] (Tp a multiple of chunk, K and V
    powers of two >= 16). Returns (a, b [BH, NC, C] f32, decay [BH, NC, C] f32 (a_L, b_L, m_L, 0, ...),
    qb, attn, u, y, z, kg, kr [BH, NC, C, .] in op_dtype)."""
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    NC, BH = Tp // chunk, B * HV

    def gate_rows(g):  # [B, Tp, HV] -> [BH, NC, C]
        return jnp.moveaxis(g.astype(jnp.float32).reshape(B, NC, chunk, HV), 3, 1).reshape(BH, NC, chunk)

    f32 = jnp.float32
    out_shape = (jax.ShapeDtypeStruct((BH, NC, chunk), f32), jax.ShapeDtypeStruct((BH, NC, chunk), f32),
                 jax.ShapeDtypeStruct((BH, NC, chunk), f32), jax.ShapeDtypeStruct((BH, NC, chunk, K), op_dtype),
                 jax.ShapeDtypeStruct((BH, NC, chunk, chunk), op_dtype),
                 jax.ShapeDtypeStruct((BH, NC, chunk, V), op_dtype),
                 *(jax.ShapeDtypeStruct((BH, NC, chunk, K), op_dtype) for _ in range(4)))
    kernel = functools.partial(_prep_kernel, num_heads=HV, chunk=chunk,
                               precision=common.dot_precision(jnp.dtype(op_dtype), interpret))
    return common.call(kernel, (BH, NC), out_shape, interpret, num_warps,
                       gate_rows(log_alpha), gate_rows(log_mu), gate_rows(beta), qb, kt, p, v)
