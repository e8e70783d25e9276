"""A tiny NNX causal LM standing in for the real model in training tests (model-agnostic trainer).

Embedding -> n_layers x (RMSNorm, causal single-head attention within segments, RMSNorm, GELU MLP) -> RMSNorm ->
LM head. Parameters carry logical axis names (metadata `out_sharding`); `gate` is a NoDecayParam.
Implements the trainer's full interface: `__call__`, `hidden`, `logits_from_hidden`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class NoDecayParam(nnx.Param):
    """Excluded from weight decay (matched by class name)."""


def _init(axes, std=0.02):
    return nnx.with_partitioning(nnx.initializers.normal(std), axes, eager_sharding=False)


class Block(nnx.Module):
    def __init__(self, d, heads, mlp, rngs, dtype):
        self.heads = heads
        self.n1 = nnx.RMSNorm(d, rngs=rngs, dtype=dtype)
        self.n2 = nnx.RMSNorm(d, rngs=rngs, dtype=dtype)
        lin = dict(use_bias=False, rngs=rngs, dtype=dtype)
        self.qkv = nnx.Linear(d, 3 * d, kernel_init=_init(("embed", "heads")), **lin)
        self.o = nnx.Linear(d, d, kernel_init=_init(("heads", "embed")), **lin)
        self.up = nnx.Linear(d, mlp, kernel_init=_init(("embed", "mlp")), use_bias=True,
                             bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",), eager_sharding=False),
                             rngs=rngs, dtype=dtype)
        self.down = nnx.Linear(mlp, d, kernel_init=_init(("mlp", "embed")), **lin)
        self.gate = NoDecayParam(jnp.ones((d,)), out_sharding=("embed",), eager_sharding=False)

    def __call__(self, x, segment_ids):
        B, T, D = x.shape
        q, k, v = jnp.split(self.qkv(self.n1(x)).reshape(B, T, 3, self.heads, D // self.heads), 3, axis=2)
        q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
        s = jnp.einsum("bthd,bshd->bhts", q, k).astype(jnp.float32) / jnp.sqrt(D // self.heads)
        mask = jnp.tril(jnp.ones((T, T), bool))[None, None]
        mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
        p = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1).astype(v.dtype)
        a = jnp.einsum("bhts,bshd->bthd", p, v).reshape(B, T, D)
        x = x + self.o(a) * self.gate[...].astype(x.dtype)
        return x + self.down(jax.nn.gelu(self.up(self.n2(x))))


class TinyLM(nnx.Module):
    def __init__(self, vocab_size=264, d=32, heads=2, n_layers=2, mlp=64, dtype="float32", *, rngs):
        dtype = jnp.dtype(dtype)
        self.config = dict(vocab_size=vocab_size, hidden_size=d, num_heads=heads, num_hidden_layers=n_layers,
                           model_type="transformer", head_dim=d // heads)
        self.embed = nnx.Embed(vocab_size, d, embedding_init=_init(("vocab", "embed"), 1.0), rngs=rngs, dtype=dtype)
        self.blocks = nnx.List([Block(d, heads, mlp, rngs, dtype) for _ in range(n_layers)])
        self.norm = nnx.RMSNorm(d, rngs=rngs, dtype=dtype)
        self.head = nnx.Linear(d, vocab_size, use_bias=False, kernel_init=_init(("embed", "vocab")), rngs=rngs,
                               dtype=dtype)

    def hidden(self, tokens, segment_ids=None):
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x, segment_ids)
        return self.norm(x)

    def logits_from_hidden(self, h):
        return self.head(h)

    def __call__(self, tokens, segment_ids=None):
        return self.logits_from_hidden(self.hidden(tokens, segment_ids))


def build(config: dict, seed: int = 0) -> TinyLM:
    return TinyLM(**config, rngs=nnx.Rngs(seed))
