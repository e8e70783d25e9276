"""Greedy sampling without a cache: a fixed [1, T] window, jitted once (a quick look at a trained model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def greedy_sample(setup, params, tokenizer, prompt: str, n_tokens: int, window: int) -> str:
    """Continue `prompt` by `n_tokens` greedy tokens; the model sees the last `window` tokens, right-padded."""
    ids = list(tokenizer.encode(prompt)) or [tokenizer.eos_id or 0]

    @jax.jit
    def next_token(params, buf, seg, pos):
        logits = setup.merge(params)(buf, segment_ids=seg)
        return jnp.argmax(logits[0, pos].astype(jnp.float32))

    params = jax.device_get(params) if jax.process_count() > 1 else params
    out = []
    for _ in range(n_tokens):
        ctx = ids[-window:]
        buf = np.zeros((1, window), np.int32)
        seg = np.zeros((1, window), np.int32)
        buf[0, :len(ctx)] = ctx
        seg[0, :len(ctx)] = 1
        tok = int(next_token(params, buf, seg, len(ctx) - 1))
        if tokenizer.eos_id is not None and tok == tokenizer.eos_id:
            break
        ids.append(tok)
        out.append(tok)
    return prompt + tokenizer.decode(out)
