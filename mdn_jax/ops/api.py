"""Public entry points: `momentum_delta_rule` and its mu = 0 case `gated_delta_rule`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mdn_jax.ops import layout as lay
from mdn_jax.ops.chunked import chunked_core
from mdn_jax.ops.core import CoreInputs
from mdn_jax.ops.scan import scan_core
from mdn_jax.ops.validation import validate_inputs

L2_EPS = 1e-6


def l2norm(x: jax.Array, eps: float = L2_EPS) -> jax.Array:
    """x / sqrt(||x||^2 + eps) over the last axis (spec 2.1, chunk-path epsilon)."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def default_implementation() -> str:
    """'pallas' on GPU, 'xla' elsewhere."""
    return "pallas" if jax.default_backend() == "gpu" else "xla"


def _core_fn(implementation: str, operand_dtype, dense_rows: bool, zero_start: bool):
    if implementation == "scan":
        return scan_core
    if implementation == "xla":
        return chunked_core
    from mdn_jax.pallas import pallas_core  # imported lazily: Pallas is not needed on the jnp paths

    return functools.partial(pallas_core, operand_dtype=operand_dtype, dense_rows=dense_rows, zero_start=zero_start)


def momentum_delta_rule(q, k, v, log_alpha, log_mu, beta, eta, p=None, *, scale=None, initial_state=None,
                        output_final_state=False, cu_seqlens=None, segment_ids=None, l2norm_qk=True,
                        p_times_alpha=True, chunk_size=64, implementation=None):
    """Momentum delta rule (spec 2.2), chunkwise in parallel.

    Args:
      q, k: [B, T, H, K]; v: [B, T, HV, V] with HV a multiple of H (value head j reads key head
        j // (HV // H)); p: [B, T, H, K] or None (then p = k).
      log_alpha, log_mu: [B, T, HV] log decay of S and of the momentum M (<= 0; log_mu may be -inf).
      beta: [B, T, HV] momentum step; eta: [B, T, HV] step size scaling k.
      scale: output scale, default K ** -0.5.
      initial_state: optional (S0, M0), each [N, HV, K, V].
      output_final_state: return (S, M) at the end of each sequence, each [N, HV, K, V] float32
        (float64 for float64 inputs); else None.
      cu_seqlens: [N + 1] int, packed sequences along time (B must be 1); states reset at each start.
      segment_ids: [B, T] int, documents packed in each row; the state resets where the id changes.
        N = B: initial and final states belong to the first and last document of each row.
      l2norm_qk: L2-normalise q, k and p inside the op.
      p_times_alpha: read the state with p = alpha * phat (default; makes mu = 0 exactly Gated DeltaNet).
      chunk_size: 16, 32 or 64.
      implementation: 'scan', 'xla', 'pallas' or None (pallas on GPU, xla elsewhere).

    Returns:
      (o [B, T, HV, V] in q's dtype, (S, M) or None).
    """
    B, T, H, HV, K, V, N = validate_inputs(
        q, k, v, log_alpha, log_mu, beta, eta, p, chunk_size=chunk_size, implementation=implementation,
        initial_state=initial_state, cu_seqlens=cu_seqlens, segment_ids=segment_ids)
    implementation = implementation or default_implementation()
    dtype = jnp.float64 if jnp.float64 in (q.dtype, k.dtype, v.dtype) else jnp.float32
    if scale is None:
        scale = K ** -0.5

    out_dtype = q.dtype
    group = HV // H
    log_alpha, log_mu, beta, eta = (g.astype(dtype) for g in (log_alpha, log_mu, beta, eta))
    if segment_ids is not None:  # documents inside a row: forget the past through the gates
        reset = lay.segment_reset(segment_ids)[..., None]  # [B, T, 1] against the [B, T, HV] gates
        log_alpha = jnp.where(reset, -jnp.inf, log_alpha)
        log_mu = jnp.where(reset, -jnp.inf, log_mu)
    if implementation == "pallas" and l2norm_qk and p is None and p_times_alpha and isinstance(scale, (int, float)):
        from mdn_jax.pallas.prep import prepare_qkp  # the same map with its backward as one kernel

        if group > 1:
            q, k = (jnp.repeat(x, group, axis=2) for x in (q, k))
        qb, kt, p = prepare_qkp(q, k, log_alpha, eta, scale, jax.default_backend() != "gpu")
    else:
        q, k, v = (x.astype(dtype) for x in (q, k, v))
        if l2norm_qk:
            q, k = l2norm(q), l2norm(k)
        if p is None:
            p = k
        else:
            p = l2norm(p.astype(dtype)) if l2norm_qk else p.astype(dtype)
        if group > 1:
            q, k, p = (jnp.repeat(x, group, axis=2) for x in (q, k, p))
        qb = scale * q
        kt = eta[..., None] * k
        if segment_ids is not None and not p_times_alpha:  # with it, p = exp(-inf) p is 0 at a reset already
            p = jnp.where(reset[..., None], 0.0, p)  # [B, T, 1, 1] against p [B, T, HV, K]
        if p_times_alpha:
            p = jnp.exp(log_alpha)[..., None] * p

    if cu_seqlens is not None:
        layout = lay.packed_layout(cu_seqlens, T, chunk_size)
    else:
        layout = lay.dense_layout(B, T, chunk_size)
    if initial_state is None:
        s0 = m0 = jnp.zeros((N, HV, K, V), dtype)
    else:
        s0, m0 = (s.astype(dtype) for s in initial_state)

    inputs = CoreInputs(
        *(lay.to_chunks(x, layout) for x in (qb, kt, p, v, log_alpha, log_mu, beta)),
        s0, m0, layout.chunk_init, layout.chunk_final)
    core = _core_fn(implementation, out_dtype, layout.positions is None, initial_state is None)
    o, final = core(inputs, chunk_size)
    o = lay.from_chunks(o, layout, T).astype(out_dtype)
    return o, (final if output_final_state else None)


def gated_delta_rule(q, k, v, log_alpha, beta, *, scale=None, initial_state=None, output_final_state=False,
                     cu_seqlens=None, segment_ids=None, l2norm_qk=True, chunk_size=64, implementation=None):
    """Gated DeltaNet: S_t = alpha_t (I - beta_t khat khat^T) S_{t-1} + beta_t khat v_t^T, o_t = s S_t^T qhat_t.

    The mu = 0 case of `momentum_delta_rule` (spec 2.3), sharing its code. Shapes as there;
    initial_state is S0 [N, HV, K, V] alone and the final state is S alone.
    """
    ones = jnp.ones_like(beta)
    init = None
    if initial_state is not None:
        init = (initial_state, jnp.zeros_like(initial_state))
    o, final = momentum_delta_rule(
        q, k, v, log_alpha, jnp.full_like(beta, -jnp.inf), beta, ones, scale=scale, initial_state=init,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens, segment_ids=segment_ids,
        l2norm_qk=l2norm_qk, p_times_alpha=True, chunk_size=chunk_size, implementation=implementation)
    return o, (final[0] if final is not None else None)
