"""VJP of the chunk-local stage (spec 4.2, B3-B4) from the saved T = (I + W)^-1, in XLA.

The forward runs as the Pallas kernels of `mdn_jax.pallas.chunk_local` (the WY products applied inside the
passes); this backward is batched products over chunks plus the autodiff of the small gate-coefficient map
(recipe F, `mdn_jax.ops.chunked.chunk_coeffs`).
Residual policy: the inputs in the operand dtype and T (operand dtype) are saved; the coefficients, W and
P Kt^T are recomputed. dW = -(T^T dT T^T) replaces differentiating through the inverse.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mdn_jax.ops.chunked import _product, chunk_coeffs, shift_down
from mdn_jax.pallas import common


def to_rows(x, chunk):
    """[B, Tp, HV, ...] -> [B*HV, NC, C, ...]."""
    B, Tp, HV = x.shape[:3]
    x = x.reshape((B, Tp // chunk, chunk, HV) + x.shape[3:])
    return jnp.moveaxis(x, 3, 1).reshape((B * HV, Tp // chunk, chunk) + x.shape[4:])


def from_rows(x, B, HV):
    """[B*HV, NC, C, ...] -> [B, Tp, HV, ...]."""
    _, NC, C = x.shape[:3]
    x = jnp.moveaxis(x.reshape((B, HV, NC, C) + x.shape[3:]), 1, 3)
    return x.reshape((B, NC * C, HV) + x.shape[4:])


def coefficients(log_alpha, log_mu, beta, chunk):
    """Gate coefficients per chunk from [B, Tp, HV] gates: a, b, (a_L, b_L, m_L), Gamma, Gamma_down, rho, d, e."""
    la, lm, bt = (to_rows(g, chunk) for g in (log_alpha, log_mu, beta))
    cf = chunk_coeffs(la, lm, bt)
    d = jnp.concatenate([jnp.ones_like(cf.a[..., :1]), cf.a[..., :-1]], axis=-1)
    e = jnp.concatenate([jnp.zeros_like(cf.b[..., :1]), cf.b[..., :-1]], axis=-1)
    decay = jnp.stack([cf.a[..., -1], cf.b[..., -1], cf.m[..., -1]], axis=-1)
    return cf.a, cf.b, decay, cf.gamma, shift_down(cf.gamma), cf.rho, d, e


def coefficients_with_vjp(log_alpha, log_mu, beta, chunk, acc):
    """`coefficients` and a map from the cotangents of (a, b, decay, Gamma, Gamma_down, rho, d, e) to those of
    (log_alpha, log_mu, beta) in their dtypes (decay's beyond its first three entries are not read)."""
    coeffs, vjp = jax.vjp(lambda *g: coefficients(*g, chunk), log_alpha, log_mu, beta)

    def gates_vjp(ga, gb, gdecay, g_gamma, g_gamma_down, g_rho, g_d, g_e):
        g = vjp((ga.astype(acc), gb.astype(acc), gdecay[..., :3].astype(acc), g_gamma, g_gamma_down, g_rho, g_d,
                 g_e))
        return tuple(x.astype(like.dtype) for x, like in zip(g, (log_alpha, log_mu, beta), strict=True))

    return coeffs, gates_vjp


def local_stage_vjp(res, cot, chunk, op_dtype):
    """Cotangents of (qb, kt, p, v, log_alpha, log_mu, beta) of the chunk-local stage.

    res: (qb, kt, p, v) [B, Tp, HV, .] in op_dtype, (log_alpha, log_mu, beta) [B, Tp, HV], t [B*HV, NC, C, C].
    cot: cotangents of (a, b, decay) [B*HV, NC, C] and (qb, attn, u, y, z, kg, kr) [B*HV, NC, C, .], as
    `chunk_pass.pass_backward` returns them.
    """
    qb_in, kt_in, p_in, v_in, log_alpha, log_mu, beta, t = res
    ga, gb, gdecay, gqb, gattn, gu, gy, gz, gkg, gkr = cot
    B, Tp, HV, _ = qb_in.shape
    f32 = common.acc_dtype(op_dtype)
    mm = _product(None if jnp.dtype(op_dtype) in (jnp.float32, jnp.float64) else op_dtype)
    qb, kt, p, v = (to_rows(x, chunk).astype(f32) for x in (qb_in, kt_in, p_in, v_in))
    gattn, gu, gy, gz, gkg, gkr, gqb = (g.astype(f32) for g in (gattn, gu, gy, gz, gkg, gkr, gqb))
    t = t.astype(f32)
    coeffs, gates_vjp = coefficients_with_vjp(log_alpha, log_mu, beta, chunk, f32)
    _, _, _, gamma, gamma_down, rho, d, e = coeffs

    # attn = Gamma o (Qb Kt^T); kg = diag(Gamma_L) Kt; kr = diag(rho) Kt; qb passes through
    g_attn_gamma = gattn * gamma
    dqb = gqb + mm("...ij,...jk->...ik", g_attn_gamma, kt)
    dkt = (mm("...ij,...ik->...jk", g_attn_gamma, qb) + gkg * gamma[..., -1, :, None] + gkr * rho[..., None])
    g_gamma = gattn * mm("...ik,...jk->...ij", qb, kt)
    g_gamma = g_gamma.at[..., -1, :].add(jnp.sum(gkg * kt, axis=-1))
    g_rho = jnp.sum(gkr * kt, axis=-1)

    # U = T V, Y = T diag(d) P, Z = T diag(e) P
    dp_, ep_ = d[..., None] * p, e[..., None] * p
    g_t = (mm("...iv,...jv->...ij", gu, v) + mm("...ik,...jk->...ij", gy, dp_)
           + mm("...ik,...jk->...ij", gz, ep_))
    dv = mm("...ji,...jv->...iv", t, gu)
    t_gy, t_gz = mm("...ji,...jk->...ik", t, gy), mm("...ji,...jk->...ik", t, gz)
    dp = d[..., None] * t_gy + e[..., None] * t_gz
    g_d, g_e = jnp.sum(t_gy * p, axis=-1), jnp.sum(t_gz * p, axis=-1)

    # T = (I + W)^-1 with W = (P Kt^T) o Gamma_down (strictly lower): dW = -T^T dT T^T
    g_w = jnp.tril(-mm("...ij,...kj->...ik", mm("...ji,...jk->...ik", t, g_t), t), -1)
    g_w_gamma = g_w * gamma_down
    dp = dp + mm("...ij,...jk->...ik", g_w_gamma, kt)
    dkt = dkt + mm("...ij,...ik->...jk", g_w_gamma, p)
    g_gamma_down = g_w * mm("...ik,...jk->...ij", p, kt)

    back = lambda x, like: from_rows(x, B, HV).astype(like.dtype)  # noqa: E731
    return (back(dqb, qb_in), back(dkt, kt_in), back(dp, p_in), back(dv, v_in)) + gates_vjp(
        ga, gb, gdecay, g_gamma, g_gamma_down, g_rho, g_d, g_e)
