"""Language-model loss: float32 cross-entropy, chunked over tokens so full float32 logits never exist.

With a model that has `hidden(tokens, segment_ids) -> h [B, T, D]` and `logits_from_hidden(h) -> [..., V]`, the
N = B*T hidden states are cut into chunks of `chunk` tokens and a `lax.scan` computes each chunk's logits, its
float32 log-sum-exp and target logit; the chunk body is rematerialised (`jax.checkpoint`), so the backward pass
holds one [chunk, V] block at a time instead of [N, V]. Models with only `__call__`, or chunk = 0, get full-logit
cross-entropy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mdn_jax.data.packing import targets_and_mask


def _ce_sum(logits, targets, mask):
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    # The target logit as a select-and-sum (its gradient fuses with the softmax's, no scatter into [.., V]).
    vocab = lax.broadcasted_iota(targets.dtype, logits.shape, logits.ndim - 1)
    tgt = jnp.sum(jnp.where(vocab == targets[..., None], logits, 0.0), axis=-1)
    return jnp.sum(jnp.where(mask, lse - tgt, 0.0))


def chunked_cross_entropy(h, targets, mask, logits_fn, chunk: int):
    """Sum over masked tokens of -log softmax(logits_fn(h))[target], in float32.

    Args:
      h: [N, D] hidden states; targets: [N] int; mask: [N] bool; logits_fn: [C, D] -> [C, V].
      chunk: tokens per scan step C (N is padded up to a multiple of C with masked rows).
    Returns:
      float32 scalar loss sum.
    """
    n = h.shape[0]
    chunk = min(chunk, n)
    pad = (-n) % chunk
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        targets = jnp.pad(targets, (0, pad))
        mask = jnp.pad(mask, (0, pad))
    m = (n + pad) // chunk
    xs = (h.reshape(m, chunk, -1), targets.reshape(m, chunk), mask.reshape(m, chunk))

    @jax.checkpoint
    def body(carry, x):
        hc, tc, mc = x
        return carry + _ce_sum(logits_fn(hc), tc, mc), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total


def lm_loss_sum(model, tokens, segment_ids, chunk: int = 2048):
    """(float32 loss sum, token count) of next-token prediction within documents.

    Args:
      model: an NNX LM (see `mdn_jax.train.model_api` for the interface).
      tokens, segment_ids: [B, T] int32 (segment 0 = padding).
    """
    targets, mask = targets_and_mask(tokens, segment_ids)
    count = jnp.sum(mask).astype(jnp.float32)
    if chunk > 0 and hasattr(model, "hidden") and hasattr(model, "logits_from_hidden"):
        h = model.hidden(tokens, segment_ids=segment_ids)
        B, T, D = h.shape
        total = chunked_cross_entropy(h.reshape(B * T, D), targets.reshape(-1), mask.reshape(-1),
                                      model.logits_from_hidden, chunk)
    else:
        total = _ce_sum(model(tokens, segment_ids=segment_ids), targets, mask)
    return total, count
