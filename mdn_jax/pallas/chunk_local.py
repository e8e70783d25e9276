"""Pallas kernels (Triton lowering) for the chunk-local stage of the forward (spec 3.1-3.4), in three stages.

Each kernel runs one program per (row x value head, chunk) and keeps few tiles live (the structure of FLA's
chunked delta-rule forward: gates and products, triangular solve, WY products):

1. `_coeff_kernel`: gate coefficients by recipe F (masked segment sums as cumulative sums of non-positive
   terms), Gamma_down = D_alpha_down diag(beta) D_mu (one product) and Gamma from it by the row recursion,
   W = (P Kt^T) o Gamma_down (float32),
   attn = Gamma o (Qb Kt^T), Kg = diag(Gamma_L) Kt, Kr = diag(rho) Kt, a, b, d, e and (a_L, b_L, m_L).
2. `_solve_kernel`: T = (I + W)^-1: 16 x 16 diagonal blocks by forward substitution, then the off-diagonal
   blocks X_ij = -X_ii sum_k W_ik X_kj by 16 x 16 products (float32 accumulation; see `_gate_precision`).
3. `_wy_kernel`: U = T V, Y = T diag(d) P, Z = T diag(e) P (operand-dtype products, float32 accumulation).

Inputs stay in the op's [B, Tp, HV, ...] layout (no transposes); outputs are in the layouts of
`mdn_jax.pallas.chunk_pass`. The differentiated path keeps the XLA stage (`mdn_jax.pallas.core`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.ops.chunked import LOG_GATE_FLOOR
from mdn_jax.pallas import common, tuning

_BLOCK = 16  # diagonal block of the triangular solve


def _gate_precision(op_dtype, interpret: bool):
    """Products of float32 gate matrices: exact in interpret mode; on the GPU TF32x3 (about float32) for float32
    operands, one TF32 pass (10-bit mantissa, finer than the bf16/fp16 operands downstream) otherwise."""
    if interpret:
        return lax.Precision.HIGHEST
    if op_dtype == jnp.float32:
        return lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return lax.DotAlgorithmPreset.TF32_TF32_F32


def _shift_down(x):
    """y[r] = x[r - 1], y[0] = 0, for a vector x [C]."""
    C = x.shape[0]
    rows, cols = common.iota((C, C), 0), common.iota((C, C), 1)
    return jnp.sum(jnp.where(cols == rows - 1, x[None, :], 0.0), axis=1)


def _segment_decay(x, offset):
    """exp(sum_{r = l + 1 + offset .. tau} y_r) below the diagonal (+offset), 0 elsewhere: [C] -> [C, C].

    offset 0: y = x, the lower-triangular D of recipe F (1 on the diagonal). offset 1: y = x shifted down
    one step, which gives row tau - 1 of D in row tau (strictly lower). Terms are <= 0 and summed by a
    cumulative sum (never a difference of prefix sums).
    """
    C = x.shape[0]
    rows, cols = common.iota((C, C), 0), common.iota((C, C), 1)
    y = _shift_down(x) if offset else x
    seg = jnp.cumsum(jnp.where(rows > cols + offset, y[:, None], 0.0), axis=0)
    return jnp.where(rows >= cols + offset, jnp.exp(seg), 0.0)


def _coeff_kernel(qb_ref, kt_ref, p_ref, la_ref, lm_ref, beta_ref,
                  w_ref, attn_ref, qbo_ref, kg_ref, kr_ref, a_ref, b_ref, d_ref, e_ref, decay_ref,
                  *, chunk, num_heads, precision, gate_precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    ts = pl.ds(c * chunk, chunk)
    acc = w_ref.dtype
    la = jnp.maximum(la_ref[row, ts, head].astype(acc), LOG_GATE_FLOOR)
    lm = jnp.maximum(lm_ref[row, ts, head].astype(acc), LOG_GATE_FLOOR)
    beta = beta_ref[row, ts, head].astype(acc)

    d_alpha, d_mu = _segment_decay(la, 0), _segment_decay(lm, 0)
    # Gamma_down = D_alpha_down diag(beta) D_mu (row tau holds Gamma's row tau - 1), then Gamma by the row
    # recursion Gamma_tau = alpha_tau Gamma_{tau-1} + beta_tau D_mu_tau (sums of non-negative terms).
    gamma_down = jnp.dot(_segment_decay(la, 1), beta[:, None] * d_mu, precision=gate_precision,
                         preferred_element_type=acc)
    gamma = jnp.exp(la)[:, None] * gamma_down + beta[:, None] * d_mu
    a = jnp.exp(jnp.cumsum(la))
    m = jnp.exp(jnp.cumsum(lm))
    b = jnp.sum(d_alpha * (beta * m)[None, :], axis=1)

    qb, kt, p = qb_ref[row, ts, head, :], kt_ref[row, ts, head, :], p_ref[row, ts, head, :]
    dot = functools.partial(common.dot, precision=precision, acc=acc)
    w_ref[bh, c] = dot(p, kt.T) * gamma_down
    attn_ref[bh, c] = (dot(qb, kt.T) * gamma).astype(attn_ref.dtype)
    qbo_ref[bh, c] = qb.astype(qbo_ref.dtype)
    ktf = kt.astype(acc)
    kg_ref[bh, c] = (ktf * common.pick_row(gamma, chunk - 1)[:, None]).astype(kg_ref.dtype)
    kr_ref[bh, c] = (ktf * common.pick_row(d_mu, chunk - 1)[:, None]).astype(kr_ref.dtype)
    a_ref[bh, c] = a
    b_ref[bh, c] = b
    d_ref[bh, c] = jnp.exp(jnp.cumsum(_shift_down(la)))
    e_ref[bh, c] = _shift_down(b)
    idx = common.iota((chunk,), 0)
    last = lambda x: jnp.sum(jnp.where(idx == chunk - 1, x, 0.0))  # noqa: E731
    decay_ref[bh, c] = common.scalars_vector(chunk, last(a), last(b), last(m))


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
    with_t: also T = (I + W)^-1 [B*HV, NC, C, C] in op_dtype (the residual of `mdn_jax.pallas.local_vjp`).
    """
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    BH, NC, C = B * HV, Tp // chunk, chunk
    op_dtype = jnp.dtype(op_dtype)
    acc = jnp.float64 if op_dtype == jnp.float64 else jnp.float32
    precision = common.dot_precision(op_dtype, interpret)
    gate_precision = _gate_precision(op_dtype, interpret)
    qb, kt, p, v = (x.astype(op_dtype) for x in (qb, kt, p, v))
    grid, stages = (BH, NC), tuning.num_stages("local", K, op_dtype)
    shape = lambda *s, dtype=op_dtype: jax.ShapeDtypeStruct((BH, NC) + s, dtype)  # noqa: E731
    coeff = functools.partial(_coeff_kernel, chunk=C, num_heads=HV, precision=precision,
                              gate_precision=gate_precision)
    w, attn, qbo, kg, kr, a, b, d, e, decay = common.call(
        coeff, grid, (shape(C, C, dtype=acc), shape(C, C), shape(C, K), shape(C, K), shape(C, K))
        + tuple(shape(C, dtype=acc) for _ in range(5)), interpret, num_warps,
        qb, kt, p, log_alpha, log_mu, beta, stages=stages)
    solve = functools.partial(_solve_kernel, chunk=C, gate_precision=gate_precision)
    (t,) = common.call(solve, grid, (shape(C, C),), interpret, num_warps, w, stages=stages)
    wy = functools.partial(_wy_kernel, chunk=C, num_heads=HV, block=min(64, K, V), precision=precision)
    u, y, z = common.call(wy, grid, (shape(C, V), shape(C, K), shape(C, K)), interpret, num_warps,
                          t, p, v, d, e, stages=stages)
    outs = (a, b, decay, qbo, attn, u, y, z, kg, kr)
    return (outs, t) if with_t else outs
