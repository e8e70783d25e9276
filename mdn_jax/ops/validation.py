"""Argument checks for the momentum delta rule op: clear errors, never a silent broadcast."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SUPPORTED_CHUNK_SIZES = (16, 32, 64)
IMPLEMENTATIONS = ("scan", "xla", "pallas")


def _shape(x) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_float(name: str, x) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array (float16/bfloat16/float32/float64), got "
                        f"{'a ' + type(x).__name__ if dtype is None else dtype}")


def check_rank(name: str, x, rank: int, layout: str) -> None:
    if np.ndim(x) != rank:
        raise ValueError(f"{name} must have rank {rank} with layout {layout}, got shape {_shape(x)}")


def validate_inputs(q, k, v, log_alpha, log_mu, beta, eta, p, *, chunk_size, implementation,
                    initial_state, cu_seqlens, segment_ids):
    """Checks every argument of `momentum_delta_rule`; returns (B, T, H, HV, K, V, N)."""
    for name, x in (("q", q), ("k", k), ("v", v), ("log_alpha", log_alpha), ("log_mu", log_mu),
                    ("beta", beta), ("eta", eta)):
        check_float(name, x)
    check_rank("q", q, 4, "[B, T, H, K]")
    check_rank("k", k, 4, "[B, T, H, K]")
    check_rank("v", v, 4, "[B, T, HV, V]")
    B, T, H, K = _shape(q)
    if _shape(k) != (B, T, H, K):
        raise ValueError(f"k must have the shape of q {(B, T, H, K)} ([B, T, H, K]), got {_shape(k)}")
    if p is not None:
        check_float("p", p)
        if _shape(p) != (B, T, H, K):
            raise ValueError(f"p must have the shape of k {(B, T, H, K)} ([B, T, H, K]), got {_shape(p)}")
    vb, vt, HV, V = _shape(v)
    if (vb, vt) != (B, T):
        raise ValueError(f"v must have batch and time {(B, T)} of q ([B, T, HV, V]), got {_shape(v)}")
    if HV % H != 0:
        raise ValueError(f"the number of value heads (v.shape[2] = {HV}) must be a multiple of the number "
                         f"of query/key heads (q.shape[2] = {H})")
    for name, g in (("log_alpha", log_alpha), ("log_mu", log_mu), ("beta", beta), ("eta", eta)):
        check_rank(name, g, 3, "[B, T, HV]")
        if _shape(g) != (B, T, HV):
            raise ValueError(f"{name} must have shape [B, T, HV] = {(B, T, HV)}, got {_shape(g)}")
    if chunk_size not in SUPPORTED_CHUNK_SIZES:
        raise ValueError(f"chunk_size must be one of {SUPPORTED_CHUNK_SIZES}, got {chunk_size!r}")
    if implementation is not None and implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS} or None, got {implementation!r}")
    if cu_seqlens is not None and segment_ids is not None:
        raise ValueError("pass at most one of cu_seqlens and segment_ids")
    N = B
    if cu_seqlens is not None:
        N = validate_cu_seqlens(cu_seqlens, B, T)
    if segment_ids is not None:
        if np.ndim(segment_ids) != 2 or _shape(segment_ids) != (B, T):
            raise ValueError(f"segment_ids must have shape [B, T] = {(B, T)}, got {_shape(segment_ids)}")
        if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
            raise TypeError(f"segment_ids must be an integer array, got {segment_ids.dtype}")
    if initial_state is not None:
        if not (isinstance(initial_state, tuple | list) and len(initial_state) == 2):
            raise TypeError("initial_state must be a pair (S0, M0) of arrays [N, HV, K, V]")
        for name, s in zip(("initial_state[0] (S0)", "initial_state[1] (M0)"), initial_state, strict=True):
            check_float(name, s)
            if _shape(s) != (N, HV, K, V):
                raise ValueError(f"{name} must have shape [N, HV, K, V] = {(N, HV, K, V)}, got {_shape(s)}")
    return B, T, H, HV, K, V, N


def validate_cu_seqlens(cu_seqlens, B: int, T: int) -> int:
    """cu_seqlens: [N + 1] int, 0 = c_0 < c_1 < ... < c_N = T, with B == 1. Returns N."""
    if np.ndim(cu_seqlens) != 1 or _shape(cu_seqlens)[0] < 2:
        raise ValueError(f"cu_seqlens must be a 1-D array [N + 1] with N >= 1, got shape {_shape(cu_seqlens)}")
    if not jnp.issubdtype(jnp.asarray(cu_seqlens).dtype, jnp.integer):
        raise TypeError(f"cu_seqlens must be an integer array, got {jnp.asarray(cu_seqlens).dtype}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along time: batch must be 1, got B = {B}")
    if not isinstance(cu_seqlens, jax.core.Tracer):
        c = np.asarray(cu_seqlens)
        if c[0] != 0 or c[-1] != T:
            raise ValueError(f"cu_seqlens must start at 0 and end at T = {T}, got {c.tolist()}")
        if np.any(np.diff(c) <= 0):
            raise ValueError(f"cu_seqlens must be strictly increasing (no empty sequence), got {c.tolist()}")
    return _shape(cu_seqlens)[0] - 1
