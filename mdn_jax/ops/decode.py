"""One recurrent step of the momentum delta rule, for generation (spec 2.2 applied to one token)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mdn_jax.ops.api import l2norm
from mdn_jax.ops.validation import check_float


def _validate_step(q, k, v, gates, p, state):
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_float(name, x)
        if x.ndim != 3:
            raise ValueError(f"{name} must have rank 3 ([B, heads, dim]) for one decode step, got {x.shape}")
    if k.shape != q.shape or (p is not None and p.shape != q.shape):
        raise ValueError(f"k (and p) must have the shape of q {q.shape}, got {k.shape}")
    B, H, K = q.shape
    if v.shape[0] != B or v.shape[1] % H:
        raise ValueError(f"v must be [B, HV, V] with B = {B} and HV a multiple of H = {H}, got {v.shape}")
    HV, V = v.shape[1:]
    for name, g in gates.items():
        check_float(name, g)
        if g.shape != (B, HV):
            raise ValueError(f"{name} must have shape [B, HV] = {(B, HV)}, got {g.shape}")
    if not (isinstance(state, tuple | list) and len(state) == 2):
        raise TypeError("state must be a pair (S, M) of arrays [B, HV, K, V]")
    for s in state:
        if s.shape != (B, HV, K, V):
            raise ValueError(f"state arrays must have shape [B, HV, K, V] = {(B, HV, K, V)}, got {s.shape}")


def _pow2_at_least_16(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def default_step_implementation(K: int, V: int) -> str:
    """'pallas' on a GPU when K and V are powers of two >= 16, else 'jnp'."""
    return "pallas" if jax.default_backend() == "gpu" and _pow2_at_least_16(K) and _pow2_at_least_16(V) else "jnp"


def momentum_delta_rule_step(q, k, v, log_alpha, log_mu, beta, eta, state, p=None, *, scale=None,
                             l2norm_qk=True, p_times_alpha=True, implementation=None):
    """One token of the recurrence for every row.

    q, k, p: [B, H, K]; v: [B, HV, V]; gates: [B, HV]; state: (S, M) each [B, HV, K, V] (float32).
    implementation: 'jnp', 'pallas' (`mdn_jax.pallas.decode`: one kernel, states updated in place when donated;
    interpret mode without a GPU; K and V powers of two >= 16) or None: 'pallas' on a GPU when K and V allow it
    (measured faster on H100: experiments/results/bench_ops.md), else 'jnp'.
    Returns (o [B, HV, V] in q's dtype, (S, M) new states in the state dtype).
    """
    if implementation is None:
        implementation = default_step_implementation(q.shape[-1], v.shape[-1])
    if implementation not in ("jnp", "pallas"):
        raise ValueError(f"implementation must be 'jnp' or 'pallas', got {implementation!r}")
    _validate_step(q, k, v, dict(log_alpha=log_alpha, log_mu=log_mu, beta=beta, eta=eta), p, state)
    S, M = state
    dtype, out_dtype = S.dtype, q.dtype
    K = q.shape[-1]
    group = v.shape[1] // q.shape[1]
    scale = K ** -0.5 if scale is None else scale
    q, k = q.astype(dtype), k.astype(dtype)
    p = k if p is None else p.astype(dtype)
    if l2norm_qk:
        q, k, p = l2norm(q), l2norm(k), l2norm(p)
    if group > 1:
        q, k, p = (jnp.repeat(x, group, axis=1) for x in (q, k, p))
    la, lm, beta, eta = (g.astype(dtype) for g in (log_alpha, log_mu, beta, eta))
    if p_times_alpha:
        p = jnp.exp(la)[..., None] * p
    kt = eta[..., None] * k
    if implementation == "pallas":
        from mdn_jax.pallas.decode import decode_step  # imported lazily: Pallas is not needed on the jnp path

        o, S, M = decode_step(scale * q, kt, p, v, jnp.exp(la), jnp.exp(lm), beta, S, M)
        return o.astype(out_dtype), (S, M)
    r = jnp.einsum("bhk,bhkv->bhv", p, S, precision="highest") - v.astype(dtype)
    M = jnp.exp(lm)[..., None, None] * M + kt[..., :, None] * r[..., None, :]
    S = jnp.exp(la)[..., None, None] * S - beta[..., None, None] * M
    o = jnp.einsum("bhk,bhkv->bhv", scale * q, S, precision="highest")
    return o.astype(out_dtype), (S, M)


__all__ = ["momentum_delta_rule_step"]

