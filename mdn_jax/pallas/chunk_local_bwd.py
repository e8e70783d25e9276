"""The chunk-local VJP (spec 4.2, B4) as one Pallas kernel (Triton lowering), parallel over chunks.

The same function as `mdn_jax.pallas.local_vjp.local_stage_vjp` (its XLA products are the reference of the
tests) with the tensor-sized work in one program per (row x value head, chunk) that reads the op's [B, Tp, HV, .]
layout directly (no transposes) and loops over blocks of K and V:

    V loop:  dT = dU V^T + ...,  dV = T^T dU
    K loop:  dT += dY (d o P)^T + dZ (e o P)^T,  Qb Kt^T,  P Kt^T,  row sums for d, e, the last row of Gamma, rho
    then:    dW = tril(-T^T dT T^T, -1),  dGamma = dattn o (Qb Kt^T) (+ the Kg row),  dGamma_down = dW o (P Kt^T)
    K loop:  dQb = gQb + (dattn o Gamma) Kt,  dP = d o T^T dY + e o T^T dZ + (dW o Gamma_down) Kt,
             dKt = (dattn o Gamma)^T Qb + dKg o Gamma_L + dKr o rho + (dW o Gamma_down)^T P

The gate coefficients (Gamma, Gamma_down; rho, d, e) are the forward's (`chunk_local.LocalResiduals`,
`chunk_local.LocalOutputs`); the VJP of their map from the gates is the kernel of `mdn_jax.pallas.gate_vjp`. The
default VJP of the chunk-local stage (`tuning`: `MDN_LOCAL_VJP_KERNEL=0` selects the XLA products instead); S400 on
an H200: fwd+bwd 5.19 ms vs 5.67.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.pallas import common, tuning
from mdn_jax.pallas.chunk_local import vec_columns
from mdn_jax.pallas.gate_vjp import gate_vjp
from mdn_jax.pallas.local_vjp import coefficients_with_vjp


def _local_bwd_kernel(qb_ref, kt_ref, p_ref, v_ref, t_ref, gamma_ref, gdown_ref, vec_ref, gattn_ref, gu_ref, gy_ref,
                      gz_ref, gkg_ref, gkr_ref, gqb_ref,
                      dqb_ref, dkt_ref, dp_ref, dv_ref, g_gamma_ref, g_gdown_ref, g_vec_ref,
                      *, num_heads, block_k, block_v, precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    C = t_ref.shape[-1]
    K, V = qb_ref.shape[-1], v_ref.shape[-1]
    ts = pl.ds(c * C, C)
    op, acc = t_ref.dtype, g_gamma_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)

    def dot_t(x, y):  # x y^T with operand-dtype operands
        return common.dot_t(x.astype(op), y.astype(op), precision, acc)

    t = t_ref[bh, c]
    x = vec_columns(vec_ref, bh, c)
    d, e, rho = x["d"], x["e"], x["rho"]  # [C, 1] each
    k_blocks = lambda body, init: lax.fori_loop(0, K // block_k, body, init)  # noqa: E731

    def v_step(j, g_t):
        vs = pl.ds(j * block_v, block_v)
        gu = gu_ref[bh, c, :, vs]
        dv_ref[row, ts, head, vs] = dot(t, gu.astype(op), trans_a=True).astype(dv_ref.dtype)
        return g_t + dot_t(gu, v_ref[row, ts, head, vs])

    g_t = lax.fori_loop(0, V // block_v, v_step, jnp.zeros((C, C), acc))

    def load(i):
        ks = pl.ds(i * block_k, block_k)
        return ks, tuple(r[row, ts, head, ks].astype(acc) for r in (qb_ref, kt_ref, p_ref)), tuple(
            r[bh, c, :, ks].astype(acc) for r in (gy_ref, gz_ref, gkg_ref, gkr_ref))

    def k_step(i, carry):
        g_t, qk, pk, g_d, g_e, g_last, g_rho = carry
        _, (qb, kt, p), (gy, gz, gkg, gkr) = load(i)
        t_gy, t_gz = dot(t, gy.astype(op), trans_a=True), dot(t, gz.astype(op), trans_a=True)
        return (g_t + dot_t(gy, d * p) + dot_t(gz, e * p), qk + dot_t(qb, kt), pk + dot_t(p, kt),
                g_d + jnp.sum(t_gy * p, axis=1), g_e + jnp.sum(t_gz * p, axis=1), g_last + jnp.sum(gkg * kt, axis=1),
                g_rho + jnp.sum(gkr * kt, axis=1))

    square, vec = jnp.zeros((C, C), acc), jnp.zeros((C,), acc)
    g_t, qk, pk, g_d, g_e, g_last, g_rho = k_blocks(k_step, (g_t, square, square, vec, vec, vec, vec))
    rows, cols = common.iota((C, C), 0), common.iota((C, C), 1)
    tt_gt = dot(t, g_t.astype(op), trans_a=True)  # T^T dT
    g_w = jnp.where(rows > cols, -dot_t(tt_gt, t), 0.0)
    gamma, gattn = gamma_ref[bh, c], gattn_ref[bh, c].astype(acc)
    g_gamma = gattn * qk
    g_gamma_ref[bh, c] = jnp.where(rows == C - 1, g_gamma + g_last[None, :], g_gamma)
    g_gdown_ref[bh, c] = g_w * pk
    for i, g in enumerate((g_d, g_e, g_rho)):
        g_vec_ref[bh, c, i] = g
    gamma_last = common.pick_row(gamma, C - 1)[:, None]  # Gamma_L as a column [C, 1]
    g_attn_gamma = (gattn * gamma).astype(op)
    g_w_gamma = (g_w * gdown_ref[bh, c]).astype(op)

    def out_step(i, carry):
        ks, (qb, kt, p), (gy, gz, gkg, gkr) = load(i)
        dqb_ref[row, ts, head, ks] = (gqb_ref[bh, c, :, ks].astype(acc) + dot(g_attn_gamma, kt.astype(op))
                                      ).astype(dqb_ref.dtype)
        dp = (d * dot(t, gy.astype(op), trans_a=True) + e * dot(t, gz.astype(op), trans_a=True)
              + dot(g_w_gamma, kt.astype(op)))
        dp_ref[row, ts, head, ks] = dp.astype(dp_ref.dtype)
        dkt = (dot(g_attn_gamma, qb.astype(op), trans_a=True) + gkg * gamma_last + gkr * rho
               + dot(g_w_gamma, p.astype(op), trans_a=True))
        dkt_ref[row, ts, head, ks] = dkt.astype(dkt_ref.dtype)
        return carry

    k_blocks(out_step, 0)


def local_stage_vjp_kernel(res, cot, chunk, op_dtype, *, interpret, block_k=32, block_v=64, num_warps=4,
                           gate_kernel=True):
    """`local_vjp.local_stage_vjp` with the tensor-sized products in one Pallas kernel and the gate-coefficient VJP
    in the kernel of `gate_vjp` (gate_kernel=False: XLA's autodiff of `local_vjp.coefficients`).

    res: (qb, kt, p, v) [B, Tp, HV, .], (log_alpha, log_mu, beta) [B, Tp, HV] and the stage's
    `chunk_local.LocalOutputs` and `chunk_local.LocalResiduals`; cot and the results as `local_stage_vjp`.
    """
    qb_in, kt_in, p_in, v_in, log_alpha, log_mu, beta, local, saved = res
    ga, gb, gdecay, gqb, gattn, gu, gy, gz, gkg, gkr = cot
    B, Tp, HV, K = qb_in.shape
    V = v_in.shape[-1]
    BH, NC, C = B * HV, Tp // chunk, chunk
    acc = common.acc_dtype(op_dtype)
    block_k, block_v = min(block_k, K), min(block_v, V)
    kernel = functools.partial(_local_bwd_kernel, num_heads=HV, block_k=block_k, block_v=block_v,
                               precision=common.dot_precision(jnp.dtype(op_dtype), interpret))
    like = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)  # noqa: E731
    out_shape = (like(qb_in), like(kt_in), like(p_in), like(v_in), jax.ShapeDtypeStruct((BH, NC, C, C), acc),
                 jax.ShapeDtypeStruct((BH, NC, C, C), acc), jax.ShapeDtypeStruct((BH, NC, 3, C), acc))
    dqb, dkt, dp, dv, g_gamma, g_gamma_down, g_vec = common.call(
        kernel, (BH, NC), out_shape, interpret, num_warps, qb_in, kt_in, p_in, v_in, local.t.astype(op_dtype),
        saved.gamma.astype(acc), saved.gamma_down.astype(acc), local.vecs.astype(acc), gattn, gu, gy, gz, gkg, gkr,
        gqb, stages=tuning.num_stages("local_vjp", K, op_dtype))
    if gate_kernel:
        g_gates = gate_vjp(log_alpha, log_mu, beta, g_gamma, g_gamma_down, g_vec, ga, gb, gdecay, op_dtype=op_dtype,
                           interpret=interpret)
    else:
        g_d, g_e, g_rho = (g_vec[:, :, i] for i in range(3))
        _, gates_vjp = coefficients_with_vjp(log_alpha, log_mu, beta, chunk, acc)
        g_gates = gates_vjp(ga, gb, gdecay, g_gamma, g_gamma_down, g_rho, g_d, g_e)
    return (dqb, dkt, dp, dv) + tuple(g_gates)
