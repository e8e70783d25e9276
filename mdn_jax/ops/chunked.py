"""Chunkwise-parallel algorithm (spec section 3) in pure jnp: the portable default and the kernels' oracle.

Coefficients by recipe F (spec 3.3): every exponent is a masked segment sum of log gates, hence <= 0.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mdn_jax.ops.core import CoreInputs, record_final, start_state

_HI = "highest"
LOG_GATE_FLOOR = -1e4


class ChunkCoeffs(NamedTuple):
    """Per-chunk gate coefficients (spec 3.1), leading dims [..., C]."""

    a: jax.Array  # [..., C]      prod of alpha up to tau
    m: jax.Array  # [..., C]      prod of mu up to tau
    b: jax.Array  # [..., C]
    gamma: jax.Array  # [..., C, C]  Gamma (lower triangular, diagonal = beta)
    rho: jax.Array  # [..., C]      m_L / m_tau


def segment_decay(log_gate: jax.Array) -> jax.Array:
    """exp(seg(x))_{tau l} = exp(sum_{r=l+1..tau} x_r) for l <= tau, 0 above: [..., C] -> [..., C, C].

    A masked sum (never a difference of prefix sums), written as a product with a 0/1 lower-triangular
    matrix. Log gates are floored at -1e4 first: exp(-1e4) is exactly 0 in float32 and float64, as
    exp(-inf) is, so mu = 0 and segment resets stay exact and no -inf meets a 0 in the product.
    """
    C = log_gate.shape[-1]
    i = jnp.arange(C)
    x = jnp.maximum(log_gate, LOG_GATE_FLOOR)
    terms = jnp.where(i[:, None] > i[None, :], x[..., :, None], 0.0)  # [..., r, l]: x_r if r > l
    lower = i[:, None] >= i[None, :]
    seg = jnp.einsum("tr,...rl->...tl", lower.astype(x.dtype), terms, precision=_HI)
    return jnp.where(lower, jnp.exp(jnp.where(lower, seg, 0.0)), 0.0)


def chunk_coeffs(log_alpha: jax.Array, log_mu: jax.Array, beta: jax.Array) -> ChunkCoeffs:
    """Recipe F coefficients from per-step gates [..., C]."""
    d_alpha = segment_decay(log_alpha)
    d_mu = segment_decay(log_mu)
    a = jnp.exp(jnp.cumsum(log_alpha, axis=-1))
    m = jnp.exp(jnp.cumsum(log_mu, axis=-1))
    gamma = jnp.einsum("...tl,...lj->...tj", d_alpha, beta[..., :, None] * d_mu, precision=_HI)
    b = jnp.einsum("...tl,...l->...t", d_alpha, beta * m, precision=_HI)
    return ChunkCoeffs(a, m, b, gamma, d_mu[..., -1, :])


def shift_down(x: jax.Array) -> jax.Array:
    """Row tau of the result is row tau - 1 of x (row 0 is zero): [..., C, C]."""
    return jnp.concatenate([jnp.zeros_like(x[..., :1, :]), x[..., :-1, :]], axis=-2)


def unit_lower_inverse(w: jax.Array) -> jax.Array:
    """(I + W)^-1 for strictly lower-triangular W [..., C, C] (C a power of two), by blockwise doubling.

    Block forward substitution: the inverse of [[A, 0], [B, D]] is [[A^-1, 0], [-D^-1 B A^-1, D^-1]],
    applied from 1x1 diagonal blocks up to C x C (log2 C levels of batched matmuls; no matrix powers).
    """
    C = w.shape[-1]
    lead = w.shape[:-2]
    inv = jnp.ones(lead + (C, 1, 1), w.dtype)  # diagonal blocks of size 1
    s = 1
    while s < C:
        m = C // (2 * s)
        blocks = w.reshape(lead + (m, 2 * s, m, 2 * s))
        blocks = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)  # [..., m, 2s, 2s]
        lower_left = blocks[..., s:, :s]
        a_inv, d_inv = inv[..., 0::2, :, :], inv[..., 1::2, :, :]
        ll = -jnp.einsum("...ij,...jk,...kl->...il", d_inv, lower_left, a_inv, precision=_HI)
        top = jnp.concatenate([a_inv, jnp.zeros_like(a_inv)], axis=-1)
        bottom = jnp.concatenate([ll, d_inv], axis=-1)
        inv = jnp.concatenate([top, bottom], axis=-2)
        s *= 2
    return inv[..., 0, :, :]


def _product(operand_dtype):
    """einsum for the tensor-sized products: float32 'highest', or operand_dtype operands (bf16 in training)
    with float32 accumulation."""
    if operand_dtype is None:
        return functools.partial(jnp.einsum, precision=_HI)

    def mm(spec, a, b):
        return jnp.einsum(spec, a.astype(operand_dtype), b.astype(operand_dtype), preferred_element_type=a.dtype)

    return mm


def wy_repr(kt, p, v, cf: ChunkCoeffs, operand_dtype=None):
    """U = T V, Y = T diag(d) P, Z = T diag(e) P with T = (I + W)^-1 (spec 3.4).

    kt, p: [..., C, K]; v: [..., C, V] (C in 16/32/64). Returns U [..., C, V], Y, Z [..., C, K].
    """
    mm = _product(operand_dtype)
    w = mm("...ik,...jk->...ij", p, kt) * shift_down(cf.gamma)
    d = jnp.concatenate([jnp.ones_like(cf.a[..., :1]), cf.a[..., :-1]], axis=-1)
    e = jnp.concatenate([jnp.zeros_like(cf.b[..., :1]), cf.b[..., :-1]], axis=-1)
    t_inv = unit_lower_inverse(w)
    return tuple(mm("...ij,...jd->...id", t_inv, x) for x in (v, d[..., None] * p, e[..., None] * p))


class ChunkTensors(NamedTuple):
    """Chunk-local operands of the sequential pass and the output, all [B, HV, NC, C, ...] (compute dtype)."""

    qb: jax.Array  # [..., C, K]
    attn: jax.Array  # [..., C, C]   Gamma o (Qb Kt^T)
    u: jax.Array  # [..., C, V]
    y: jax.Array  # [..., C, K]
    z: jax.Array  # [..., C, K]
    kg: jax.Array  # [..., C, K]   Kt scaled by the last row of Gamma (feeds S at the chunk end)
    kr: jax.Array  # [..., C, K]   Kt scaled by rho (feeds M at the chunk end)
    a: jax.Array  # [..., C]
    b: jax.Array  # [..., C]
    decay: jax.Array  # [..., 3]   (a_L, b_L, m_L)


def prepare_chunks(x: CoreInputs, chunk_size: int, operand_dtype=None) -> ChunkTensors:
    """Everything that is parallel over chunks (spec 3.1-3.4): coefficients, WY representation, Gamma o QK^T.

    operand_dtype: None (float32/float64 'highest' products: the reference) or the dtype of the operands of
    the tensor-sized products (bf16 for bf16 inputs in the Pallas path; gate math stays in the compute dtype).
    """
    B, Tp, HV, K = x.kt.shape
    nc = Tp // chunk_size
    dtype = x.qb.dtype

    def chunked(a):  # [B, Tp, HV, ...] -> [B, HV, NC, C, ...]
        a = a.astype(dtype).reshape((B, nc, chunk_size) + a.shape[2:])
        return jnp.moveaxis(a, 3, 1)

    qb, kt, p, v = (chunked(a) for a in (x.qb, x.kt, x.p, x.v))
    la, lm, beta = (chunked(g[..., None])[..., 0] for g in (x.log_alpha, x.log_mu, x.beta))
    cf = chunk_coeffs(la, lm, beta)
    u, y, z = wy_repr(kt, p, v, cf, operand_dtype)
    attn = _product(operand_dtype)("...ik,...jk->...ij", qb, kt) * cf.gamma
    decay = jnp.stack([cf.a[..., -1], cf.b[..., -1], cf.m[..., -1]], axis=-1)
    return ChunkTensors(qb, attn, u, y, z, kt * cf.gamma[..., -1, :, None], kt * cf.rho[..., None], cf.a, cf.b,
                        decay)


def recurrence_scan(t: ChunkTensors, s0, m0, chunk_init, chunk_final):
    """The sequential pass over chunks (spec 3.4-3.5) with `lax.scan`.

    Returns chunk-start states S_c, M_c [B, HV, NC, K, V], pseudo-values N [B, HV, NC, C, V] and the
    final states (S, M) [N, HV, K, V].
    """
    B, HV, _, _, K = t.y.shape
    V = t.u.shape[-1]

    def body(carry, inputs):
        S, M, fs, fm = carry  # [B, HV, K, V]
        (u, y, z, kg, kr, decay), init, final = inputs
        S = start_state(S, s0, init)
        M = start_state(M, m0, init)
        n = (u - jnp.einsum("bhck,bhkv->bhcv", y, S, precision=_HI)
             + jnp.einsum("bhck,bhkv->bhcv", z, M, precision=_HI))
        a_l, b_l, m_l = (decay[..., i, None, None] for i in range(3))
        S_next = a_l * S - b_l * M + jnp.einsum("bhck,bhcv->bhkv", kg, n, precision=_HI)
        M_next = m_l * M - jnp.einsum("bhck,bhcv->bhkv", kr, n, precision=_HI)
        return (S_next, M_next, record_final(fs, final, S_next), record_final(fm, final, M_next)), (S, M, n)

    per_chunk = tuple(jnp.moveaxis(a, 2, 0) for a in (t.u, t.y, t.z, t.kg, t.kr, t.decay))
    zeros = jnp.zeros((B, HV, K, V), s0.dtype)
    (_, _, fs, fm), (s_start, m_start, n) = jax.lax.scan(
        body, (zeros, zeros, jnp.zeros_like(s0), jnp.zeros_like(m0)), (per_chunk, chunk_init.T, chunk_final.T))
    s_start, m_start, n = (jnp.moveaxis(a, 0, 2) for a in (s_start, m_start, n))
    return s_start, m_start, n, (fs, fm)


def chunk_output(t: ChunkTensors, s_start, m_start, n) -> jax.Array:
    """O = diag(a) Qb S - diag(b) Qb M + (Gamma o Qb Kt^T) N (spec 3.5) -> [B, Tp, HV, V]."""
    o = (t.a[..., None] * jnp.einsum("bhnck,bhnkv->bhncv", t.qb, s_start.astype(t.qb.dtype), precision=_HI)
         - t.b[..., None] * jnp.einsum("bhnck,bhnkv->bhncv", t.qb, m_start.astype(t.qb.dtype), precision=_HI)
         + jnp.einsum("bhnij,bhnjv->bhniv", t.attn, n.astype(t.attn.dtype), precision=_HI))
    B, HV, nc, C, V = o.shape
    return jnp.moveaxis(o, 1, 3).reshape(B, nc * C, HV, V)


def chunked_core(x: CoreInputs, chunk_size: int):
    """Returns o [B, Tp, HV, V] and final (S, M) [N, HV, K, V], all in the compute dtype."""
    t = prepare_chunks(x, chunk_size)
    s_start, m_start, n, final = recurrence_scan(t, x.s0, x.m0, x.chunk_init, x.chunk_final)
    return chunk_output(t, s_start, m_start, n), final
