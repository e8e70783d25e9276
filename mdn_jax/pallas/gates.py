"""Gate coefficients of one chunk (recipe F, spec 3.3) and their VJP, on register tiles inside Pallas kernels.

Every exponent is a masked segment sum of floored log gates (<= 0), accumulated by cumulative sums, never a
difference of prefix sums. With D_x[tau, l] = exp(sum_{r = l+1..tau} x_r) (tau >= l) and D_x_down its rows
shifted down one step:

    Gamma = D_alpha diag(beta) D_mu,   Gamma_down = D_alpha_down diag(beta) D_mu,   b = D_alpha (beta o m),
    a = exp(cumsum la),   m = exp(cumsum lm),   d = [1, a_0 .. a_{C-2}],   e = [0, b_0 .. b_{C-2}],
    rho = last row of D_mu,   decay = (a_L, b_L, m_L).

D_alpha is not a third masked cumulative sum: D_alpha = I + diag(alpha) D_alpha_down (row tau of D_alpha below
the diagonal is alpha_tau times row tau of D_alpha_down; products of numbers in [0, 1], no cancellation). The
forward does not form it either: e = D_alpha_down (beta o m) (row tau of D_alpha_down is row tau - 1 of D_alpha)
and b = beta o m + alpha o e. With one [C, C] tile and one shift fewer the coefficient kernel stopped spilling
(ptxas: 84 bytes before; S400 forward -0.05 ms on an H200, experiments/results/h200_2026-12-04_e65a8f3).

`coefficients_vjp` maps the cotangents of these to those of (log_alpha, log_mu, beta) by hand (the same function
as XLA's autodiff of `mdn_jax.pallas.local_vjp.coefficients`): three [C, C] products and [C, C] masked sums,
without D_alpha either (ptxas: no spills, 80 KB shared instead of 96; H200 forward+backward -0.002 ms at S400 and
-0.014 ms at 1.3B, interleaved: experiments/results/h200_2026-12-04_a6f0dbc).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from mdn_jax.ops.chunked import LOG_GATE_FLOOR
from mdn_jax.pallas import common


def gate_precision(op_dtype, interpret: bool):
    """Products of float32 gate matrices: exact in interpret mode; on the GPU TF32x3 (about float32) for float32
    operands, one TF32 pass (10-bit mantissa, finer than the bf16/fp16 operands downstream) otherwise."""
    if interpret:
        return lax.Precision.HIGHEST
    if op_dtype == jnp.float32:
        return lax.DotAlgorithmPreset.TF32_TF32_F32_X3
    return lax.DotAlgorithmPreset.TF32_TF32_F32


def _grid(C):
    return common.iota((C, C), 0), common.iota((C, C), 1)


def shift_down(x):
    """y[r] = x[r - 1], y[0] = 0, for a vector x [C]."""
    rows, cols = _grid(x.shape[0])
    return jnp.sum(jnp.where(cols == rows - 1, x[None, :], 0.0), axis=1)


def shift_up(x):
    """y[r] = x[r + 1], y[C - 1] = 0, for a vector x [C]."""
    rows, cols = _grid(x.shape[0])
    return jnp.sum(jnp.where(cols == rows + 1, x[None, :], 0.0), axis=1)


def suffix_sum(x, strict=False):
    """y[r] = sum_{tau >= r} x[tau] (tau > r if strict), for a vector x [C]."""
    rows, cols = _grid(x.shape[0])
    keep = rows > cols if strict else rows >= cols
    return jnp.sum(jnp.where(keep, x[:, None], 0.0), axis=0)


def last(x):
    """x[C - 1] of a vector x [C] as a scalar."""
    idx = common.iota(x.shape, 0)
    return jnp.sum(jnp.where(idx == x.shape[0] - 1, x, 0.0))


def segment_decay(y, offset):
    """exp(sum_{r = l + 1 + offset .. tau} y_r) below the diagonal (+offset), 0 elsewhere: [C] -> [C, C].

    offset 0: y = x, the lower-triangular D of recipe F (1 on the diagonal). offset 1: y = shift_down(x), which
    gives row tau - 1 of D in row tau (strictly lower).
    """
    rows, cols = _grid(y.shape[0])
    seg = jnp.cumsum(jnp.where(rows > cols + offset, y[:, None], 0.0), axis=0)
    return jnp.where(rows >= cols + offset, jnp.exp(seg), 0.0)


def segment_decay_vjp(g, offset):
    """Cotangent of x from g = dL/dD o D for D = segment_decay(x, 0) (offset 0) or
    segment_decay(shift_down(x), 1) (offset 1): sum_{tau >= r + offset} sum_{l < r}
    g[tau, l], a vector [C]."""
    rows, cols = _grid(g.shape[0])
    before = jnp.cumsum(g, axis=1) - g  # [tau, r]: sum_{l < r} g[tau, l]
    return jnp.sum(jnp.where(rows >= cols + offset, before, 0.0), axis=0)


class Coeffs(NamedTuple):
    """The gate coefficients of one chunk ([C] vectors, [C, C] tiles), float32."""

    la: jnp.ndarray  # floored log_alpha
    lm: jnp.ndarray  # floored log_mu
    beta: jnp.ndarray
    alpha: jnp.ndarray  # exp(la)
    d_alpha_down: jnp.ndarray
    d_mu: jnp.ndarray
    gamma_down: jnp.ndarray
    gamma: jnp.ndarray
    a: jnp.ndarray
    m: jnp.ndarray
    b: jnp.ndarray
    d: jnp.ndarray  # [1, a_0 .. a_{C-2}]
    e: jnp.ndarray  # [0, b_0 .. b_{C-2}]


def coefficients(la, lm, beta, precision, with_gamma=True) -> Coeffs:
    """Recipe F from one chunk's gates [C] (float32). Gamma_down by one product, Gamma from it by the row
    recursion Gamma_tau = alpha_tau Gamma_{tau-1} + beta_tau D_mu_tau (sums of non-negative terms).
    with_gamma=False: Gamma and Gamma_down are None (the VJP needs only the D factors)."""
    la, lm = jnp.maximum(la, LOG_GATE_FLOOR), jnp.maximum(lm, LOG_GATE_FLOOR)
    la_down, alpha = shift_down(la), jnp.exp(la)
    d_alpha_down, d_mu = segment_decay(la_down, 1), segment_decay(lm, 0)
    gamma_down = gamma = None
    if with_gamma:
        gamma_down = jnp.dot(d_alpha_down, beta[:, None] * d_mu, precision=precision,
                             preferred_element_type=d_mu.dtype)
        gamma = alpha[:, None] * gamma_down + beta[:, None] * d_mu
    a, m = jnp.exp(jnp.cumsum(la)), jnp.exp(jnp.cumsum(lm))
    bm = beta * m
    e = jnp.sum(d_alpha_down * bm[None, :], axis=1)
    b = bm + alpha * e
    d = jnp.exp(jnp.cumsum(la_down))
    return Coeffs(la, lm, beta, alpha, d_alpha_down, d_mu, gamma_down, gamma, a, m, b, d, e)


def coefficients_vjp(cf: Coeffs, la_raw, lm_raw, g_gamma, g_gamma_down, g_rho, g_d, g_e, ga, gb, g_decay,
                     precision):
    """Cotangents (log_alpha, log_mu, beta) [C] of one chunk from those of Gamma, Gamma_down [C, C], rho, d, e,
    a, b [C] and decay = (a_L, b_L, m_L) (g_decay: three scalars). la_raw, lm_raw: the gates before the floor
    (no cotangent flows where they are below it)."""
    C = cf.beta.shape[0]
    rows, _ = _grid(C)
    is_last = common.iota((C,), 0) == C - 1
    dot = functools.partial(jnp.dot, precision=precision, preferred_element_type=g_gamma.dtype)
    dot_t = functools.partial(common.dot_t, precision=precision, acc=g_gamma.dtype)  # x y^T
    ga = ga + jnp.where(is_last, g_decay[0], 0.0)
    gb = gb + shift_up(g_e) + jnp.where(is_last, g_decay[1], 0.0)
    # D_alpha = I + diag(alpha) D_alpha_down (D_alpha_down strictly lower) is not formed.
    # b = D_alpha (beta o m): gD_alpha += gb (beta o m)^T;  g(beta o m) = D_alpha^T gb
    g_bm = gb + jnp.sum(cf.d_alpha_down * (cf.alpha * gb)[:, None], axis=0)
    gm = cf.beta * g_bm + jnp.where(is_last, g_decay[2], 0.0)
    # Gamma = D_alpha B D_mu and Gamma_down = D_alpha_down B D_mu (B = diag(beta)); each [C, C] cotangent is
    # reduced to its [C] contribution before the next is formed (few live tiles: no register spills).
    # y = D_alpha^T g_Gamma + D_alpha_down^T g_Gamma_down, by one product
    y = g_gamma + dot(cf.d_alpha_down.T, cf.alpha[:, None] * g_gamma + g_gamma_down)  # [l, j]
    g_beta = jnp.sum(y * cf.d_mu, axis=1) + cf.m * g_bm
    g_d_mu = cf.beta[:, None] * y + jnp.where(rows == C - 1, g_rho[None, :], 0.0)
    g_lm = suffix_sum(gm * cf.m) + segment_decay_vjp(g_d_mu * cf.d_mu, 0)
    # The cotangent of D_alpha reaches la directly (row sums of g o D_alpha below the diagonal) and through
    # D_alpha_down (one segment_decay_vjp for both).
    g_d_alpha = dot_t(g_gamma, cf.d_mu) * cf.beta[None, :] + gb[:, None] * (cf.beta * cf.m)[None, :]
    g_d_alpha_down = dot_t(g_gamma_down, cf.d_mu) * cf.beta[None, :]
    g_alpha_part = g_d_alpha * cf.alpha[:, None] * cf.d_alpha_down
    g_la = jnp.sum(g_alpha_part, axis=1)
    g_la += segment_decay_vjp(g_alpha_part + g_d_alpha_down * cf.d_alpha_down, 1)
    g_la += suffix_sum(ga * cf.a) + suffix_sum(g_d * cf.d, strict=True)
    return (jnp.where(la_raw > LOG_GATE_FLOOR, g_la, 0.0), jnp.where(lm_raw > LOG_GATE_FLOOR, g_lm, 0.0), g_beta)
