"""Causal softmax attention with RoPE and a KV cache (FLA `Attention`: no qk-norm, head dim D / num_heads)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mdn_jax.model.params import linear


class KVCache(NamedTuple):
    """Decode cache of one attention layer: k, v [B, max_len, Hkv, Dh]; index: int32 scalar, tokens written."""

    k: jax.Array
    v: jax.Array
    index: jax.Array


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token inside its document. segment_ids [B, T] -> [B, T] int32."""
    T = segment_ids.shape[1]
    t = jnp.arange(T, dtype=jnp.int32)
    start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1)
    first = jax.lax.cummax(jnp.where(start, t, 0), axis=1)
    return t - first


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, rotate-half layout (FLA default, non-interleaved). x [B,T,N,Dh], positions [B,T]."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    ang = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, d/2]
    cos, sin = jnp.cos(ang)[:, :, None, :], jnp.sin(ang)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    x1, x2 = x32[..., : d // 2], x32[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
    """Multi-head (grouped-query) causal attention.

    Parameters q_proj [D, Hq*Dh], k_proj / v_proj [D, Hkv*Dh] (optional biases), o_proj [Hq*Dh, D].

    __call__(x [B,T,D], *, segment_ids [B,T] | None, cache KVCache | None)
      -> y [B,T,D]                (no cache; with segment_ids attention stays inside each document and
                                   RoPE positions restart at each document)
      -> (y [B,T,D], KVCache)     (cache given: the T new tokens are at positions index .. index+T-1;
                                   the caller must keep index + T <= max_len)
    """

    def __init__(self, hidden_size: int, *, num_heads: int, num_kv_heads: int | None = None,
                 qkv_bias: bool = False, rope_theta: float = 10000.0, initializer_range: float = 0.02,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs, **_unused):
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if hidden_size % num_heads or num_heads % num_kv_heads:
            raise ValueError(f"hidden_size={hidden_size}, num_heads={num_heads}, num_kv_heads={num_kv_heads} "
                             "must satisfy hidden_size % num_heads == 0 and num_heads % num_kv_heads == 0")
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = hidden_size // num_heads
        self.rope_theta = rope_theta
        self.dtype = dtype
        kw = dict(std=initializer_range, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        kv_dim = num_kv_heads * self.head_dim
        self.q_proj = linear(hidden_size, hidden_size, ("embed", "heads"), use_bias=qkv_bias, **kw)
        self.k_proj = linear(hidden_size, kv_dim, ("embed", "kv_heads"), use_bias=qkv_bias, **kw)
        self.v_proj = linear(hidden_size, kv_dim, ("embed", "kv_heads"), use_bias=qkv_bias, **kw)
        self.o_proj = linear(hidden_size, hidden_size, ("heads", "embed"), **kw)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """Empty KV cache [B, max_len, Hkv, Dh] in `dtype` (default: compute dtype)."""
        shape = (batch, max_len, self.num_kv_heads, self.head_dim)
        dtype = dtype or self.dtype
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))

    def __call__(self, x: jax.Array, *, segment_ids: jax.Array | None = None, cache: KVCache | None = None):
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed documents) and a decode cache cannot be combined")
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(B, T, self.num_kv_heads, self.head_dim)
        if cache is None:
            if segment_ids is None:
                pos = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
                mask, causal = None, True
            else:
                pos = segment_positions(segment_ids)
                same = segment_ids[:, :, None] == segment_ids[:, None, :]
                mask, causal = (same & jnp.tri(T, dtype=bool))[:, None], False
            q, k = rope(q, pos, self.rope_theta), rope(k, pos, self.rope_theta)
            o = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
            return self.o_proj(o.reshape(B, T, self.hidden_size))

        idx = cache.index
        pos = jnp.broadcast_to(idx + jnp.arange(T, dtype=jnp.int32), (B, T))
        q, k = rope(q, pos, self.rope_theta), rope(k, pos, self.rope_theta)
        kc = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, idx, 0, 0))
        vc = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, idx, 0, 0))
        S = kc.shape[1]
        mask = jnp.arange(S, dtype=jnp.int32)[None, :] <= pos[0][:, None]  # [T, S]
        o = jax.nn.dot_product_attention(q, kc.astype(q.dtype), vc.astype(q.dtype), mask=mask[None, None])
        y = self.o_proj(o.reshape(B, T, self.hidden_size))
        return y, KVCache(kc, vc, idx + T)
