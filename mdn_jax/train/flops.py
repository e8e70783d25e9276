"""Counted (not measured) training FLOPs per token, for MFU = tokens/s * flops_per_token / (devices * peak).

    flops_per_token = 6 * N_matmul + 3 * sum over layers of the token-mixing forward FLOPs per token

* N_matmul: parameters used in matmuls = all parameters minus the input embedding table (a gather), unless the
  embedding is tied to the LM head. 6 = 2 (multiply-add) x 3 (forward + two backward matmuls).
* softmax attention layer (PaLM convention, causal mask not halved): forward 4 * T * H * d_head
  (QK^T and AV), i.e. 12 * T * H * d_head for training.
* MDN / GDN layer with chunk size C, value heads HV, key dim K, value dim V per head (chunkwise form):
  state terms ~ 8 * K * V per head (read q.S, prediction k.S, the S and M rank-1/chunk updates: 4 matmuls x 2),
  intra-chunk terms ~ 6 * C * (K + V) per head (q k^T, k k^T / the UT triangular solve applied to keys and values).
  Forward ~ HV * (8 K V + 6 C (K + V)); training = 3x forward. GDN (mu = 0) is counted the same (upper bound).

The model config is read by attribute or key with the authors' names (hidden_size, num_hidden_layers, num_heads,
head_dim, expand_v, num_v_heads, chunk_size, model_type, attn.layers/num_heads); unknown fields count as zero.
"""

from __future__ import annotations

from typing import Any

# dense bf16 peak FLOP/s per device by `device_kind` substring
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "V100": 125e12,
              "TPU v5": 197e12, "TPU v4": 275e12}


def _get(cfg: Any, key: str, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def mixer_forward_flops_per_token(cfg: Any, seq_len: int) -> float:
    """Forward FLOPs per token of all token-mixing ops (attention / MDN op), excluding their projections."""
    layers = int(_get(cfg, "num_hidden_layers", 0) or 0)
    model_type = _get(cfg, "model_type", "momentum_deltanet")
    heads = int(_get(cfg, "num_heads", 0) or 0)
    head_dim = int(_get(cfg, "head_dim", 0) or 0)
    attn = _get(cfg, "attn")
    attn_layers = set(_get(attn, "layers", ()) or ())
    total = 0.0
    for i in range(layers):
        if model_type == "transformer":
            hd = head_dim or int(_get(cfg, "hidden_size", 0)) // max(heads, 1)
            total += 4.0 * seq_len * heads * hd
        elif i in attn_layers:
            ah = int(_get(attn, "num_heads", heads) or heads)
            hd = int(_get(cfg, "hidden_size", 0)) // max(ah, 1)
            total += 4.0 * seq_len * ah * hd
        else:
            hv = int(_get(cfg, "num_v_heads", None) or heads)
            K = head_dim
            V = int(head_dim * float(_get(cfg, "expand_v", 1.0) or 1.0))
            C = int(_get(cfg, "chunk_size", 64) or 64)
            total += hv * (8.0 * K * V + 6.0 * C * (K + V))
    return total


def flops_per_token(cfg: Any, seq_len: int, n_params: int, embedding_params: int = 0) -> float:
    """Training FLOPs per token: 6 * (n_params - embedding_params) + 3 * mixer forward FLOPs (see module doc)."""
    return 6.0 * (n_params - embedding_params) + 3.0 * mixer_forward_flops_per_token(cfg, seq_len)


def device_peak_flops(device=None, override: float = 0.0) -> float | None:
    """Peak dense bf16 FLOP/s of one device (None when unknown, e.g. CPU), or `override` when > 0."""
    if override and override > 0:
        return float(override)
    if device is None:
        import jax

        device = jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for k, v in PEAK_FLOPS.items():
        if k.lower() in kind.lower():
            return v
    return None
