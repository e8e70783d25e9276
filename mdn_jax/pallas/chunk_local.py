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
and rho for the backward (`LocalResiduals`). Without differentiation (`chunk_local_infer`) only stages 1 (W, attn
and the [C] vectors: no Kg, Kr) and 2 run; the inference pass forms the WY products from T itself.
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


class _Chunk(NamedTuple):
    """What both coefficient kernels compute for one chunk."""

    cf: gates.Coeffs
    qb: jax.Array  # [C, K] operand dtype
    kt: jax.Array  # [C, K]
    w: jax.Array  # [C, C] float32: (P Kt^T) o Gamma_down
    attn: jax.Array  # [C, C] float32: Gamma o (Qb Kt^T)
    e: jax.Array  # [C]: [0, b_0 .. b_{C-2}]
    g_last: jax.Array  # [C]: the last row of Gamma
    rho: jax.Array  # [C]: the last row of D_mu
    decay: jax.Array  # [C]: (a_L, b_L, m_L, 0, ...)


def _chunk(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref, acc, chunk, num_heads, precision, gate_precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    ts = pl.ds(c * chunk, chunk)
    cf = gates.coefficients(la_ref[row, ts, head].astype(acc), lm_ref[row, ts, head].astype(acc),
                            beta_ref[row, ts, head].astype(acc), gate_precision)
    qb, kt, p = qb_ref[row, ts, head, :], kt_ref[row, ts, head, :], p_ref[row, ts, head, :]
    dot = functools.partial(common.dot, precision=precision, acc=acc)
    decay = common.scalars_vector(chunk, gates.last(cf.a), gates.last(cf.b), gates.last(cf.m))
    return _Chunk(cf, qb, kt, dot(p, kt.T) * cf.gamma_down, dot(qb, kt.T) * cf.gamma, gates.shift_down(cf.b),
                  common.pick_row(cf.gamma, chunk - 1), common.pick_row(cf.d_mu, chunk - 1), decay)


def _coeff_kernel(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref,
                  w_ref, attn_ref, qbo_ref, kg_ref, kr_ref, a_ref, b_ref, d_ref, e_ref, decay_ref, *res_refs,
                  chunk, num_heads, precision, gate_precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    x = _chunk(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref, w_ref.dtype, chunk, num_heads, precision,
               gate_precision)
    cf = x.cf
    w_ref[bh, c] = x.w
    attn_ref[bh, c] = x.attn.astype(attn_ref.dtype)
    qbo_ref[bh, c] = x.qb.astype(qbo_ref.dtype)
    ktf = x.kt.astype(w_ref.dtype)
    kg_ref[bh, c] = (ktf * x.g_last[:, None]).astype(kg_ref.dtype)
    kr_ref[bh, c] = (ktf * x.rho[:, None]).astype(kr_ref.dtype)
    a_ref[bh, c] = cf.a
    b_ref[bh, c] = cf.b
    d_ref[bh, c] = cf.d
    e_ref[bh, c] = x.e
    decay_ref[bh, c] = x.decay
    if res_refs:  # the coefficients the backward reads (`LocalResiduals`)
        gamma_ref, gdown_ref, vec_ref = res_refs
        gamma_ref[bh, c] = cf.gamma
        gdown_ref[bh, c] = cf.gamma_down
        for i, v in enumerate((cf.d, x.e, x.rho)):
            vec_ref[bh, c, i] = v


def _coeff_infer_kernel(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref, w_ref, attn_ref, vec_ref, decay_ref, *,
                        chunk, num_heads, precision, gate_precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    x = _chunk(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref, w_ref.dtype, chunk, num_heads, precision,
               gate_precision)
    w_ref[bh, c] = x.w
    attn_ref[bh, c] = x.attn.astype(attn_ref.dtype)
    for i, v in enumerate((x.cf.a, x.cf.b, x.cf.d, x.e, x.g_last, x.rho)):
        vec_ref[bh, c, i] = v
    decay_ref[bh, c] = x.decay


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


def _solve(w, grid, interpret, num_warps, stages, op_dtype):
    """T = (I + W)^-1 per chunk, [B*HV, NC, C, C] in op_dtype."""
    C = w.shape[-1]
    solve = functools.partial(_solve_kernel, chunk=C, gate_precision=gates.gate_precision(op_dtype, interpret))
    (t,) = common.call(solve, grid, (jax.ShapeDtypeStruct(w.shape, op_dtype),), interpret, num_warps, w,
                       stages=stages)
    return t


def _acc_dtype(op_dtype):
    return jnp.float64 if op_dtype == jnp.float64 else jnp.float32


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
    acc = _acc_dtype(op_dtype)
    qb, kt, p, v = (x.astype(op_dtype) for x in (qb, kt, p, v))
    grid, stages = (BH, NC), tuning.num_stages("local", K, op_dtype)
    shape = lambda *s, dtype=op_dtype: jax.ShapeDtypeStruct((BH, NC) + s, dtype)  # noqa: E731
    coeff = functools.partial(_coeff_kernel, chunk=C, num_heads=HV, precision=common.dot_precision(op_dtype, interpret),
                              gate_precision=gates.gate_precision(op_dtype, interpret))
    coeff_shapes = ((shape(C, C, dtype=acc), shape(C, C), shape(C, K), shape(C, K), shape(C, K))
                    + tuple(shape(C, dtype=acc) for _ in range(5)))
    if with_t:
        coeff_shapes += (shape(C, C, dtype=acc), shape(C, C, dtype=acc), shape(3, C, dtype=acc))
    w, attn, qbo, kg, kr, a, b, d, e, decay, *coeff_res = common.call(
        coeff, grid, coeff_shapes, interpret, num_warps, qb, kt, p, log_alpha, log_mu, beta, stages=stages)
    t = _solve(w, grid, interpret, num_warps, stages, op_dtype)
    wy = functools.partial(_wy_kernel, chunk=C, num_heads=HV, block=min(64, K, V),
                           precision=common.dot_precision(op_dtype, interpret))
    u, y, z = common.call(wy, grid, (shape(C, V), shape(C, K), shape(C, K)), interpret, num_warps,
                          t, p, v, d, e, stages=stages)
    outs = (a, b, decay, qbo, attn, u, y, z, kg, kr)
    return (outs, LocalResiduals(t, *coeff_res)) if with_t else outs


def chunk_local_infer(qb, kt, p, log_alpha, log_mu, beta, *, chunk, op_dtype, interpret, num_warps=4):
    """The chunk-local stage of the forward without differentiation (`chunk_pass.chunk_pass_infer` forms U, Y S,
    Z M and Kg^T N from T, P, V and Kt itself, so there are no WY products and no Kg, Kr here).

    qb, kt, p: [B, Tp, HV, K] (K a power of two >= 16); log_alpha, log_mu, beta: [B, Tp, HV]. Returns
    t = (I + W)^-1 and attn [B*HV, NC, C, C] in op_dtype, vecs [B*HV, NC, 6, C] float32 (a, b, d, e, the last
    row of Gamma, rho) and decay [B*HV, NC, C] float32 (a_L, b_L, m_L, 0, ...).
    """
    B, Tp, HV, K = kt.shape
    BH, NC, C = B * HV, Tp // chunk, chunk
    op_dtype = jnp.dtype(op_dtype)
    acc = _acc_dtype(op_dtype)
    qb, kt, p = (x.astype(op_dtype) for x in (qb, kt, p))
    grid, stages = (BH, NC), tuning.num_stages("local", K, op_dtype)
    coeff = functools.partial(_coeff_infer_kernel, chunk=C, num_heads=HV,
                              precision=common.dot_precision(op_dtype, interpret),
                              gate_precision=gates.gate_precision(op_dtype, interpret))
    shapes = tuple(jax.ShapeDtypeStruct((BH, NC) + s, dt)
                   for s, dt in (((C, C), acc), ((C, C), op_dtype), ((6, C), acc), ((C,), acc)))
    w, attn, vecs, decay = common.call(coeff, grid, shapes, interpret, num_warps, qb, kt, p, log_alpha, log_mu,
                                       beta, stages=stages)
    return _solve(w, grid, interpret, num_warps, stages, op_dtype), attn, vecs, decay
