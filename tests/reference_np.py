"""Independent NumPy float64 references, written straight from MDN_SPEC.md sections 2.1-2.3.

Nothing here imports mdn_jax: this is the third opinion next to the 'scan' and 'xla' implementations.
Loops run token by token; batch and heads are vectorised with einsum.
"""

from __future__ import annotations

import numpy as np

L2_EPS = 1e-6


def l2norm(x: np.ndarray, eps: float = L2_EPS) -> np.ndarray:
    """Spec 2.1 item 2 (chunk path): x / sqrt(||x||^2 + eps) over the last axis."""
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)


def _expand_heads(x: np.ndarray, hv: int) -> np.ndarray:
    """[B, T, H, K] -> [B, T, HV, K]: value head j reads key head j // (HV / H)."""
    h = x.shape[2]
    idx = np.arange(hv) // (hv // h)
    return x[:, :, idx]


def preprocess(q, k, v, log_alpha, log_mu, beta, eta, p=None, *, scale=None, l2norm_qk=True, p_times_alpha=True):
    """Spec 2.1: kernel-level qb, kt, p [B, T, HV, K] and v, alpha, mu, beta in float64."""
    f = lambda x: np.asarray(x, np.float64)
    q, k, v, log_alpha, log_mu, beta, eta = map(f, (q, k, v, log_alpha, log_mu, beta, eta))
    p = k if p is None else f(p)
    if l2norm_qk:
        q, k, p = l2norm(q), l2norm(k), l2norm(p)
    K = q.shape[-1]
    HV = v.shape[2]
    scale = K ** -0.5 if scale is None else scale
    q, k, p = (_expand_heads(x, HV) for x in (q, k, p))
    alpha = np.exp(log_alpha)
    mu = np.exp(log_mu)
    qb = scale * q
    kt = eta[..., None] * k
    if p_times_alpha:
        p = alpha[..., None] * p
    return qb, kt, p, v, alpha, mu, beta


def _steps(qb, kt, p, v, alpha, mu, beta, S, M):
    """(R1)-(R4) over the time axis of [T, HV, ...] arrays, one sequence. Returns o [T, HV, V], S, M."""
    T = qb.shape[0]
    o = np.zeros((T, v.shape[1], v.shape[2]))
    for t in range(T):
        r = np.einsum("hk,hkv->hv", p[t], S) - v[t]  # (R1)
        M = mu[t][:, None, None] * M + kt[t][:, :, None] * r[:, None, :]  # (R2)
        S = alpha[t][:, None, None] * S - beta[t][:, None, None] * M  # (R3)
        o[t] = np.einsum("hk,hkv->hv", qb[t], S)  # (R4)
    return o, S, M


def mdn_reference(q, k, v, log_alpha, log_mu, beta, eta, p=None, *, scale=None, initial_state=None,
                  cu_seqlens=None, segment_ids=None, l2norm_qk=True, p_times_alpha=True):
    """Momentum delta rule, float64 loop. Returns (o [B, T, HV, V], S [N, HV, K, V], M [N, HV, K, V]).

    cu_seqlens (B = 1): sequence n runs on [cu[n], cu[n+1]) from initial state n (zeros if none); the
    final states are per sequence. segment_ids [B, T]: the state restarts from zero where the id changes
    inside a row; initial state b feeds the first document of row b, final state b is the last document's.
    """
    qb, kt, pp, vv, alpha, mu, be = preprocess(q, k, v, log_alpha, log_mu, beta, eta, p, scale=scale,
                                               l2norm_qk=l2norm_qk, p_times_alpha=p_times_alpha)
    B, T, HV, K = kt.shape
    V = vv.shape[-1]
    if cu_seqlens is not None:
        assert B == 1
        cu = [int(c) for c in np.asarray(cu_seqlens)]
        # (row, start, end, state index, starts from the initial state)
        spans = [(0, cu[n], cu[n + 1], n, True) for n in range(len(cu) - 1)]
    elif segment_ids is not None:
        seg = np.asarray(segment_ids)
        spans = []
        for b in range(B):
            starts = [0] + [t for t in range(1, T) if seg[b, t] != seg[b, t - 1]] + [T]
            spans += [(b, starts[i], starts[i + 1], b, i == 0) for i in range(len(starts) - 1)]
    else:
        spans = [(b, 0, T, b, True) for b in range(B)]
    N = 1 + max(s[3] for s in spans)
    S_fin = np.zeros((N, HV, K, V))
    M_fin = np.zeros((N, HV, K, V))
    o = np.zeros((B, T, HV, V))
    for b, s, e, n, first in spans:
        if initial_state is not None and first:
            S = np.asarray(initial_state[0], np.float64)[n].copy()
            M = np.asarray(initial_state[1], np.float64)[n].copy()
        else:
            S = np.zeros((HV, K, V))
            M = np.zeros((HV, K, V))
        o[b, s:e], S, M = _steps(qb[b, s:e], kt[b, s:e], pp[b, s:e], vv[b, s:e], alpha[b, s:e], mu[b, s:e],
                                 be[b, s:e], S, M)
        S_fin[n], M_fin[n] = S, M  # segment_ids: the row's last document wins
    return o, S_fin, M_fin


def gdn_reference(q, k, v, log_alpha, beta, *, scale=None, initial_state=None, l2norm_qk=True):
    """Gated DeltaNet (spec 2.3): S_t = alpha_t (I - b_t khat khat^T) S_{t-1} + b_t khat v_t^T,
    o_t = s S_t^T qhat_t. Shapes [B, T, H, K] / [B, T, HV, V] / [B, T, HV]. Returns (o, S)."""
    f = lambda x: np.asarray(x, np.float64)
    q, k, v, log_alpha, beta = map(f, (q, k, v, log_alpha, beta))
    if l2norm_qk:
        q, k = l2norm(q), l2norm(k)
    B, T, _, K = q.shape
    HV, V = v.shape[2:]
    scale = K ** -0.5 if scale is None else scale
    q, k = _expand_heads(q, HV), _expand_heads(k, HV)
    S = np.zeros((B, HV, K, V)) if initial_state is None else f(initial_state).copy()
    o = np.zeros((B, T, HV, V))
    eye = np.eye(K)
    for t in range(T):
        kk = k[:, t]  # [B, HV, K]
        proj = eye - beta[:, t][..., None, None] * kk[..., :, None] * kk[..., None, :]
        S = np.exp(log_alpha[:, t])[..., None, None] * np.einsum("bhij,bhjv->bhiv", proj, S)
        S = S + beta[:, t][..., None, None] * kk[..., :, None] * v[:, t][..., None, :]
        o[:, t] = scale * np.einsum("bhk,bhkv->bhv", q[:, t], S)
    return o, S
