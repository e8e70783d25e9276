"""The op's preprocessing of q and k for the Pallas path (spec 2.1): forward and backward each one Pallas kernel.

    q^ = q / sqrt(|q|^2 + eps),  k^ likewise,  qb = s q^,  kt = eta k^,  p = alpha k^  (alpha = exp(log_alpha)).

Both directions are one Pallas kernel over blocks of rows. The forward reads q, k once and writes qb, kt, p (XLA
made it three fusions, one per output, reading k twice: 0.078 ms of the S400 op's forward on an H200, 17bed9b's
profile); with the kernel the S400 forward takes 0.843 ms against 0.857 (interleaved, H200,
experiments/results/h200_2026-12-03_c93f180). The backward reads q, k and the three cotangents once per row and
writes dq, dk and the gate cotangents: with r = 1 / sqrt(|x|^2 + eps) and y = x r, the VJP of x -> y is
g -> r (g - y <y, g>), so

    dq = r_q (s dqb - q^ <q^, s dqb>),   d eta = <k^, dkt>,   d log_alpha = alpha <k^, dp>,
    dk = r_k (g - k^ (eta d eta + alpha <k^, dp>)),   g = eta dkt + alpha dp.

XLA's autodiff of the same map took 7 fusions (0.28 ms of the S400 op's forward+backward on an H200, c51cb96's
profile) for ~0.35 GB of traffic; with the kernel (32 rows per program) the op takes 3.356 ms against 3.445 with
the same VJP in jnp (H200, experiments/results/h200_2026-12-03_9c92cea). Rows of other sizes than the kernels'
blocks (K not a power of two >= 16, or B T HV not a multiple of the row block) take the same maps in jnp.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.ops.api import L2_EPS, l2norm
from mdn_jax.pallas import common, tuning


def _unit(x):
    """(x / sqrt(|x|^2 + eps), 1 / sqrt(|x|^2 + eps)) over the last axis."""
    r = lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + L2_EPS)
    return x * r, r


def _vjp_rows(q, k, log_alpha, eta, dqb, dkt, dp, scale):
    """The backward on rows: q, k, dqb, dkt, dp [R, K]; log_alpha, eta [R] -> dq, dk [R, K], dlog_alpha, deta
    [R] in float32 (float64 for float64 q) (jnp: the kernel's body and the fallback)."""
    f32 = common.acc_dtype(q.dtype)
    yq, rq = _unit(q.astype(f32))
    gq = scale * dqb.astype(f32)
    dq = rq * (gq - yq * jnp.sum(yq * gq, axis=-1, keepdims=True))
    yk, rk = _unit(k.astype(f32))
    dkt, dp = dkt.astype(f32), dp.astype(f32)
    alpha, eta = jnp.exp(log_alpha.astype(f32)), eta.astype(f32)
    deta, dalpha = jnp.sum(yk * dkt, axis=-1), jnp.sum(yk * dp, axis=-1)
    gk = eta[:, None] * dkt + alpha[:, None] * dp
    dk = rk * (gk - yk * (eta * deta + alpha * dalpha)[:, None])
    return dq, dk, alpha * dalpha, deta


def _bwd_kernel(q_ref, k_ref, la_ref, eta_ref, dqb_ref, dkt_ref, dp_ref, dq_ref, dk_ref, dla_ref, deta_ref, *,
                block_rows, scale):
    rows = pl.ds(pl.program_id(0) * block_rows, block_rows)
    dq, dk, dla, deta = _vjp_rows(q_ref[rows, :], k_ref[rows, :], la_ref[rows], eta_ref[rows], dqb_ref[rows, :],
                                  dkt_ref[rows, :], dp_ref[rows, :], scale)
    dq_ref[rows, :] = dq.astype(dq_ref.dtype)
    dk_ref[rows, :] = dk.astype(dk_ref.dtype)
    dla_ref[rows] = dla.astype(dla_ref.dtype)
    deta_ref[rows] = deta.astype(deta_ref.dtype)


def _kernel_fits(R: int, K: int, block_rows: int) -> bool:
    return K >= 16 and K & (K - 1) == 0 and R % block_rows == 0


def _forward(q, k, log_alpha, eta, scale, interpret):
    K = q.shape[-1]
    R = q.size // K
    cfg = tuning.prep_config()
    if not (cfg.use_fwd_kernel and _kernel_fits(R, K, cfg.block_rows)):
        return _forward_rows(q, k, log_alpha, eta, scale)
    out_shape = (jax.ShapeDtypeStruct((R, K), q.dtype),) * 3
    kernel = functools.partial(_fwd_kernel, block_rows=cfg.block_rows, scale=scale)
    outs = common.call(kernel, (R // cfg.block_rows,), out_shape, interpret, cfg.num_warps, q.reshape(R, K),
                       k.reshape(R, K), log_alpha.reshape(R), eta.reshape(R))
    return tuple(o.reshape(q.shape) for o in outs)


def _forward_rows(q, k, log_alpha, eta, scale):
    """The forward on rows (or any leading axes): q, k [..., K]; log_alpha, eta [...] -> qb, kt, p [..., K] in
    q's dtype (jnp: the kernel's body and the fallback)."""
    f32 = common.acc_dtype(q.dtype)
    yq, yk = l2norm(q.astype(f32)), l2norm(k.astype(f32))
    alpha = jnp.exp(log_alpha.astype(f32))[..., None]
    out = q.dtype
    return ((scale * yq).astype(out), (eta.astype(f32)[..., None] * yk).astype(out), (alpha * yk).astype(out))


def _fwd_kernel(q_ref, k_ref, la_ref, eta_ref, qb_ref, kt_ref, p_ref, *, block_rows, scale):
    rows = pl.ds(pl.program_id(0) * block_rows, block_rows)
    qb, kt, p = _forward_rows(q_ref[rows, :], k_ref[rows, :], la_ref[rows], eta_ref[rows], scale)
    qb_ref[rows, :] = qb
    kt_ref[rows, :] = kt
    p_ref[rows, :] = p


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def prepare_qkp(q, k, log_alpha, eta, scale, interpret):
    """(qb, kt, p) [B, T, HV, K] in q's dtype from q, k [B, T, HV, K] and log_alpha, eta [B, T, HV] (the
    L2-normalised q and k scaled by s, eta and alpha; see the module docstring). interpret: the kernels in Pallas
    interpret mode."""
    return _forward(q, k, log_alpha, eta, scale, interpret)


def _prepare_fwd(q, k, log_alpha, eta, scale, interpret):
    return _forward(q, k, log_alpha, eta, scale, interpret), (q, k, log_alpha, eta)


def _prepare_bwd(scale, interpret, res, cot):
    q, k, log_alpha, eta = res
    K = q.shape[-1]
    R = q.size // K
    flat = lambda x: x.reshape(R, K)  # noqa: E731
    cfg = tuning.prep_config()
    args = (flat(q), flat(k), log_alpha.reshape(R), eta.reshape(R)) + tuple(flat(c) for c in cot)
    if cfg.use_kernel and _kernel_fits(R, K, cfg.block_rows):
        f32 = common.acc_dtype(q.dtype)
        out_shape = (jax.ShapeDtypeStruct((R, K), q.dtype), jax.ShapeDtypeStruct((R, K), k.dtype),
                     jax.ShapeDtypeStruct((R,), f32), jax.ShapeDtypeStruct((R,), f32))
        kernel = functools.partial(_bwd_kernel, block_rows=cfg.block_rows, scale=scale)
        dq, dk, dla, deta = common.call(kernel, (R // cfg.block_rows,), out_shape, interpret, cfg.num_warps, *args)
    else:
        dq, dk, dla, deta = _vjp_rows(*args, scale)
    return (dq.reshape(q.shape).astype(q.dtype), dk.reshape(k.shape).astype(k.dtype),
            dla.reshape(log_alpha.shape).astype(log_alpha.dtype), deta.reshape(eta.shape).astype(eta.dtype))


prepare_qkp.defvjp(_prepare_fwd, _prepare_bwd)
