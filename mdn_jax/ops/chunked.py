"""Chunkwise-parallel algorithm (spec section 3) in pure jnp: the portable default and the kernels' oracle.

Coefficients by recipe F (spec 3.3): every exponent is a masked segment sum of log gates, hence <= 0.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from mdn_jax.ops.core import CoreInputs, record_final, start_state

_HI = "highest"


class ChunkCoeffs(NamedTuple):
    """Per-chunk gate coefficients (spec 3.1), leading dims [..., C]."""

    a: jax.Array  # [..., C]      prod of alpha up to tau
    m: jax.Array  # [..., C]      prod of mu up to tau
    b: jax.Array  # [..., C]
    gamma: jax.Array  # [..., C, C]  Gamma (lower triangular, diagonal = beta)
    rho: jax.Array  # [..., C]      m_L / m_tau
    d_mu: jax.Array  # [..., C, C]  exp(seg(log mu))


def segment_decay(log_gate: jax.Array) -> jax.Array:
    """exp(seg(x))_{tau l} = exp(sum_{r=l+1..tau} x_r) for l <= tau, 0 above: [..., C] -> [..., C, C].

    A masked cumulative sum (never a difference of prefix sums): exact for x = -inf.
    """
    C = log_gate.shape[-1]
    i = jnp.arange(C)
    terms = jnp.where(i[:, None] > i[None, :], log_gate[..., :, None], 0.0)  # [..., r, l]: x_r if r > l
    seg = jnp.cumsum(terms, axis=-2)  # [..., tau, l]
    lower = i[:, None] >= i[None, :]
    return jnp.where(lower, jnp.exp(jnp.where(lower, seg, 0.0)), 0.0)


def chunk_coeffs(log_alpha: jax.Array, log_mu: jax.Array, beta: jax.Array) -> ChunkCoeffs:
    """Recipe F coefficients from per-step gates [..., C]."""
    d_alpha = segment_decay(log_alpha)
    d_mu = segment_decay(log_mu)
    a = jnp.exp(jnp.cumsum(log_alpha, axis=-1))
    m = jnp.exp(jnp.cumsum(log_mu, axis=-1))
    gamma = jnp.einsum("...tl,...lj->...tj", d_alpha, beta[..., :, None] * d_mu, precision=_HI)
    b = jnp.einsum("...tl,...l->...t", d_alpha, beta * m, precision=_HI)
    return ChunkCoeffs(a, m, b, gamma, d_mu[..., -1, :], d_mu)


def shift_down(x: jax.Array) -> jax.Array:
    """Row tau of the result is row tau - 1 of x (row 0 is zero): [..., C, C]."""
    return jnp.concatenate([jnp.zeros_like(x[..., :1, :]), x[..., :-1, :]], axis=-2)


def wy_repr(kt, p, v, cf: ChunkCoeffs):
    """U = T V, Y = T diag(d) P, Z = T diag(e) P with T = (I + W)^-1 (spec 3.4), by forward substitution.

    kt, p: [..., C, K]; v: [..., C, V]. Returns U [..., C, V], Y, Z [..., C, K].
    """
    C = kt.shape[-2]
    K = kt.shape[-1]
    w = jnp.einsum("...ik,...jk->...ij", p, kt, precision=_HI) * shift_down(cf.gamma)
    d = jnp.concatenate([jnp.ones_like(cf.a[..., :1]), cf.a[..., :-1]], axis=-1)
    e = jnp.concatenate([jnp.zeros_like(cf.b[..., :1]), cf.b[..., :-1]], axis=-1)
    rhs = jnp.concatenate([v, d[..., None] * p, e[..., None] * p], axis=-1)
    eye = jnp.eye(C, dtype=w.dtype)
    sol = solve_triangular(w + eye, rhs, lower=True, unit_diagonal=True)
    return sol[..., : v.shape[-1]], sol[..., v.shape[-1]: v.shape[-1] + K], sol[..., v.shape[-1] + K:]


def chunked_core(x: CoreInputs, chunk_size: int):
    """Returns o [B, Tp, HV, V] and final (S, M) [N, HV, K, V], all in the compute dtype."""
    B, Tp, HV, K = x.kt.shape
    V = x.v.shape[-1]
    C = chunk_size
    nc = Tp // C
    dtype = x.s0.dtype

    def chunked(a):  # [B, Tp, HV, ...] -> [B, HV, NC, C, ...]
        a = a.astype(dtype).reshape((B, nc, C) + a.shape[2:])
        return jnp.moveaxis(a, 3, 1)

    qb, kt, p, v = (chunked(a) for a in (x.qb, x.kt, x.p, x.v))
    la, lm, beta = (chunked(g[..., None])[..., 0] for g in (x.log_alpha, x.log_mu, x.beta))
    cf = chunk_coeffs(la, lm, beta)
    u, y, z = wy_repr(kt, p, v, cf)
    attn = jnp.einsum("...ik,...jk->...ij", qb, kt, precision=_HI) * cf.gamma  # (Gamma o Qb Kt^T)

    def body(carry, inputs):
        S, M, fs, fm = carry  # [B, HV, K, V]
        (u_c, y_c, z_c, kt_c, a_c, b_c, m_c, gamma_last, rho), init, final = inputs
        S = start_state(S, x.s0, init)
        M = start_state(M, x.m0, init)
        n = (u_c - jnp.einsum("bhck,bhkv->bhcv", y_c, S, precision=_HI)
             + jnp.einsum("bhck,bhkv->bhcv", z_c, M, precision=_HI))
        a_l, b_l, m_l = (c[..., -1, None, None] for c in (a_c, b_c, m_c))
        S_next = a_l * S - b_l * M + jnp.einsum("bhck,bhcv->bhkv", kt_c * gamma_last[..., None], n,
                                                precision=_HI)
        M_next = m_l * M - jnp.einsum("bhck,bhcv->bhkv", kt_c * rho[..., None], n, precision=_HI)
        fs = record_final(fs, final, S_next)
        fm = record_final(fm, final, M_next)
        return (S_next, M_next, fs, fm), (n, S, M)

    def over_chunks(a):  # [B, HV, NC, ...] -> [NC, B, HV, ...]
        return jnp.moveaxis(a, 2, 0)

    per_chunk = tuple(over_chunks(t) for t in (u, y, z, kt, cf.a, cf.b, cf.m, cf.gamma[..., -1, :], cf.rho))
    zeros = jnp.zeros((B, HV, K, V), dtype)
    carry0 = (zeros, zeros, jnp.zeros_like(x.s0), jnp.zeros_like(x.m0))
    (_, _, fs, fm), (n, s_start, m_start) = jax.lax.scan(
        body, carry0, (per_chunk, x.chunk_init.T, x.chunk_final.T))
    n, s_start, m_start = (jnp.moveaxis(t, 0, 2) for t in (n, s_start, m_start))  # [B, HV, NC, ...]
    o = (cf.a[..., None] * jnp.einsum("bhnck,bhnkv->bhncv", qb, s_start, precision=_HI)
         - cf.b[..., None] * jnp.einsum("bhnck,bhnkv->bhncv", qb, m_start, precision=_HI)
         + jnp.einsum("bhnij,bhnjv->bhniv", attn, n, precision=_HI))
    o = jnp.moveaxis(o, 1, 3).reshape(B, Tp, HV, V)
    return o, (fs, fm)
