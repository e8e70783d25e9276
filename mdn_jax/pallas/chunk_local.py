"""Pallas kernel (Triton lowering) for the chunk-local stage: gates, Gamma, WY representation (spec 3.1-3.4).

One program per (row x value head, chunk); every C x C tile lives in registers:

    Dalpha, Dmu = exp(masked segment sums of log gates)       (recipe F: every exponent <= 0)
    Gamma = Dalpha diag(beta) Dmu,  b = Dalpha (beta m),  a, m, rho, d, e
    W = (P Kt^T) o shift_down(Gamma)
    T = (I + W)^-1 by blockwise doubling on full tiles:  T_1 = I,  T_2s = T_s - T_s Wo_s T_s
        (Wo_s: the entries of W inside one 2s-block of the diagonal but not inside one s-block; T_s Wo_s is
        nilpotent of order 2, so this is exact): 2 C x C products per level, log2 C levels, no row loop
    U = T V,  Y = T diag(d) P,  Z = T diag(e) P,  attn = Gamma o (Qb Kt^T),  Kg = Kt diag(Gamma_L),  Kr = Kt diag(rho)

Gate math (segment sums as products with 0/1 masks, Gamma, the shift) runs in IEEE float32; the inverse in
float32 with TF32x3 products on the GPU; the tensor-sized products take op_dtype operands (bf16 in training)
with float32 accumulation, as the XLA stage (`mdn_jax.ops.chunked.prepare_chunks`) does. Log gates are floored
at -1e4 (exp(-1e4) is exactly 0 in float32, as exp(-inf) is), so mu = 0 and segment resets stay exact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.ops.chunked import LOG_GATE_FLOOR
from mdn_jax.pallas import common

U_BLOCK = 128  # value columns of U per product (bounds the live accumulator at large V)


def _local_kernel(la_ref, lm_ref, beta_ref, qb_ref, kt_ref, p_ref, v_ref,
                  a_ref, b_ref, decay_ref, qbo_ref, attn_ref, u_ref, y_ref, z_ref, kg_ref, kr_ref,
                  *, num_heads, chunk, precision, inv_precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    ts = pl.ds(c * chunk, chunk)
    f32, op_dtype = jnp.float32, y_ref.dtype
    exact = functools.partial(jnp.dot, precision=lax.Precision.HIGHEST, preferred_element_type=f32)
    dot = functools.partial(common.dot, precision=precision, acc=f32)
    inv_dot = functools.partial(common.dot, precision=inv_precision, acc=f32)

    i = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    j = lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    lower, strict = i >= j, i > j
    ones_above = strict.astype(f32)  # [r, l]: 1 if r > l

    la = jnp.maximum(la_ref[bh, c].astype(f32), LOG_GATE_FLOOR)
    lm = jnp.maximum(lm_ref[bh, c].astype(f32), LOG_GATE_FLOOR)
    beta = beta_ref[bh, c].astype(f32)

    def decay_matrix(x):  # exp(sum_{r=l+1..t} x_r) for l <= t, else 0
        seg = exact(jnp.where(lower, x[None, :], 0.0), ones_above)
        return jnp.where(lower, jnp.exp(seg), 0.0)

    d_alpha, d_mu = decay_matrix(la), decay_matrix(lm)
    a = jnp.exp(jnp.sum(jnp.where(lower, la[None, :], 0.0), axis=1))
    m = jnp.exp(jnp.sum(jnp.where(lower, lm[None, :], 0.0), axis=1))
    d = jnp.exp(jnp.sum(jnp.where(strict, la[None, :], 0.0), axis=1))  # a shifted down, d_0 = 1
    gamma = exact(d_alpha, beta[:, None] * d_mu)
    b = jnp.sum(d_alpha * (beta * m)[None, :], axis=1)
    prev = (j == i - 1).astype(f32)  # [t, r]: 1 if r = t - 1
    gamma_down = exact(prev, gamma)
    e = jnp.sum(exact(prev, d_alpha) * (beta * m)[None, :], axis=1)  # b shifted down, e_0 = 0
    last = i == chunk - 1
    gamma_last = jnp.sum(jnp.where(last, gamma, 0.0), axis=0)
    rho = jnp.sum(jnp.where(last, d_mu, 0.0), axis=0)

    qb = qb_ref[row, ts, head, :].astype(op_dtype)
    ktf = kt_ref[row, ts, head, :].astype(f32)
    pf = p_ref[row, ts, head, :].astype(f32)
    kt, p = ktf.astype(op_dtype), pf.astype(op_dtype)
    w = dot(p, kt.T) * gamma_down

    t_inv = (i == j).astype(f32)
    s = 1
    while s < chunk:
        outer = jnp.logical_and(i // (2 * s) == j // (2 * s), i // s != j // s)
        w_outer = jnp.where(outer, w, 0.0)
        t_inv = t_inv - inv_dot(inv_dot(t_inv, w_outer), t_inv)
        s *= 2
    t_op = t_inv.astype(op_dtype)

    V = v_ref.shape[-1]
    for v0 in range(0, V, min(V, U_BLOCK)):
        vs = pl.ds(v0, min(V, U_BLOCK))
        u_ref[bh, c, :, vs] = dot(t_op, v_ref[row, ts, head, vs].astype(op_dtype)).astype(u_ref.dtype)
    y_ref[bh, c] = dot(t_op, (d[:, None] * pf).astype(op_dtype)).astype(y_ref.dtype)
    z_ref[bh, c] = dot(t_op, (e[:, None] * pf).astype(op_dtype)).astype(z_ref.dtype)
    attn_ref[bh, c] = (dot(qb, kt.T) * gamma).astype(attn_ref.dtype)
    qbo_ref[bh, c] = qb.astype(qbo_ref.dtype)
    kg_ref[bh, c] = (ktf * gamma_last[:, None]).astype(kg_ref.dtype)
    kr_ref[bh, c] = (ktf * rho[:, None]).astype(kr_ref.dtype)
    a_ref[bh, c] = a
    b_ref[bh, c] = b
    pos = lax.broadcasted_iota(jnp.int32, (chunk,), 0)
    is_last = pos == chunk - 1
    decay_ref[bh, c] = (jnp.where(pos == 0, jnp.sum(jnp.where(is_last, a, 0.0)), 0.0)
                        + jnp.where(pos == 1, jnp.sum(jnp.where(is_last, b, 0.0)), 0.0)
                        + jnp.where(pos == 2, jnp.sum(jnp.where(is_last, m, 0.0)), 0.0))


def chunk_local(qb, kt, p, v, log_alpha, log_mu, beta, *, chunk, op_dtype, interpret, num_warps=4):
    """The chunk-local stage in one kernel.

    qb, kt, p: [B, Tp, HV, K]; v: [B, Tp, HV, V]; gates: [B, Tp, HV] (Tp a multiple of chunk; K, V powers of
    two >= 16; chunk in 16/32/64). Returns a, b [BH, NC, C] f32; decay [BH, NC, C] f32 (a_L, b_L, m_L, 0, ...);
    qb, attn, u, y, z, kg, kr [BH, NC, C, .] in op_dtype (the layouts of `mdn_jax.pallas.chunk_pass`).
    """
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    NC, BH = Tp // chunk, B * HV
    f32 = jnp.float32

    def gate_rows(g):  # [B, Tp, HV] -> [BH, NC, C]
        return jnp.moveaxis(g.astype(f32).reshape(B, NC, chunk, HV), 3, 1).reshape(BH, NC, chunk)

    vec = jax.ShapeDtypeStruct((BH, NC, chunk), f32)
    tile = lambda n: jax.ShapeDtypeStruct((BH, NC, chunk, n), op_dtype)  # noqa: E731
    out_shape = (vec, vec, vec, tile(K), tile(chunk), tile(V), tile(K), tile(K), tile(K), tile(K))
    op_dtype = jnp.dtype(op_dtype)
    kernel = functools.partial(_local_kernel, num_heads=HV, chunk=chunk,
                               precision=common.dot_precision(op_dtype, interpret),
                               inv_precision=common.dot_precision(jnp.dtype(f32), interpret))
    return common.call(kernel, (BH, NC), out_shape, interpret, num_warps,
                       gate_rows(log_alpha), gate_rows(log_mu), gate_rows(beta), qb, kt, p, v)
