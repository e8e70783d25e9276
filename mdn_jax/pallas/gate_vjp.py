"""The VJP of the gate-coefficient map (recipe F) as one Pallas kernel (Triton lowering), parallel over chunks.

Replaces XLA's autodiff of `mdn_jax.pallas.local_vjp.coefficients` in the backward of the chunk-local stage: one
program per (row x value head, chunk) recomputes the chunk's coefficients from its gates and applies
`mdn_jax.pallas.gates.coefficients_vjp` in registers, reading the [C, C] cotangents of Gamma and Gamma_down once
and writing the gate cotangents straight into the op's [B, Tp, HV] layout. `MDN_GATE_VJP_KERNEL=0` selects the
XLA autodiff instead (for side-by-side measurement); `MDN_GATE_VJP_WARPS` its warps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mdn_jax.pallas import common, gates, tuning


def _gate_vjp_kernel(la_ref, lm_ref, beta_ref, g_gamma_ref, g_gdown_ref, g_vec_ref, ga_ref, gb_ref, gdecay_ref,
                     g_la_ref, g_lm_ref, g_beta_ref, *, num_heads, precision):
    bh, c = pl.program_id(0), pl.program_id(1)
    row, head = bh // num_heads, bh % num_heads
    C = g_gamma_ref.shape[-1]
    ts = pl.ds(c * C, C)
    acc = g_gamma_ref.dtype
    la, lm = la_ref[row, ts, head].astype(acc), lm_ref[row, ts, head].astype(acc)
    cf = gates.coefficients(la, lm, beta_ref[row, ts, head].astype(acc), precision, with_gamma=False)
    gdecay = gdecay_ref[bh, c]
    idx = common.iota(gdecay.shape, 0)
    g_decay = tuple(jnp.sum(jnp.where(idx == i, gdecay, 0.0)) for i in range(3))
    g_d, g_e, g_rho = (g_vec_ref[bh, c, i] for i in range(3))
    g_la, g_lm, g_beta = gates.coefficients_vjp(cf, la, lm, g_gamma_ref[bh, c], g_gdown_ref[bh, c], g_rho, g_d, g_e,
                                                ga_ref[bh, c], gb_ref[bh, c], g_decay, precision)
    g_la_ref[row, ts, head] = g_la.astype(g_la_ref.dtype)
    g_lm_ref[row, ts, head] = g_lm.astype(g_lm_ref.dtype)
    g_beta_ref[row, ts, head] = g_beta.astype(g_beta_ref.dtype)


def gate_vjp(log_alpha, log_mu, beta, g_gamma, g_gamma_down, g_vec, ga, gb, gdecay, *, op_dtype, interpret,
             num_warps=None):
    """Cotangents of (log_alpha, log_mu, beta) [B, Tp, HV] (in their dtypes).

    g_gamma, g_gamma_down: [B*HV, NC, C, C] float32 cotangents of Gamma and Gamma_down; g_vec: [B*HV, NC, 3, C]
    those of (d, e, rho); ga, gb: [B*HV, NC, C] those of a, b; gdecay: [B*HV, NC, >= 3] those of (a_L, b_L, m_L).
    op_dtype: the operand dtype of the stage (picks the precision of the [C, C] products, as in the forward).
    """
    B, Tp, HV = log_alpha.shape
    BH, NC, C = g_gamma.shape[:3]
    if BH != B * HV or NC * C != Tp:
        raise ValueError(f"gate cotangents {g_gamma.shape} do not match gates {log_alpha.shape}")
    acc = g_gamma.dtype
    num_warps = num_warps or tuning.gate_vjp_warps()
    kernel = functools.partial(_gate_vjp_kernel, num_heads=HV,
                               precision=gates.gate_precision(jnp.dtype(op_dtype), interpret))
    out_shape = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (log_alpha, log_mu, beta))
    return common.call(kernel, (BH, NC), out_shape, interpret, num_warps, log_alpha, log_mu, beta, g_gamma,
                       g_gamma_down, g_vec.astype(acc), ga.astype(acc), gb.astype(acc), gdecay.astype(acc))
