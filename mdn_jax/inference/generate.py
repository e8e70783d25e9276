"""Jit-compiled generation with the recurrent state cache.

One `jax.jit` call does everything (`generate_tokens`): cache allocation, chunked prefill, and the sampling loop
(`lax.while_loop`) that stops when every row has hit a stop token or its `max_new_tokens`, or the buffer is full.
All shapes are fixed by (batch, max_len), so it compiles once per (batch, max_len) bucket (and model); the
prompt lengths, sampling parameters, seed and stop tokens are traced values.

Prompts of different lengths (exact, no padding ever reaches a state):
  1. the first `n * prefill_chunk` tokens, with n = min(prompt lengths) // prefill_chunk, are real tokens in every
     row; they go through `model.prefill` (chunked operator) `prefill_chunk` tokens at a time (`lax.fori_loop`,
     so the same compiled chunk is reused, and the state carries over exactly between chunks);
  2. the rest of each prompt is *forced* through the decode loop: at position t a row whose prompt is longer than
     t feeds its own prompt token instead of the sampled one (teacher forcing) and emits nothing. All rows advance
     in lockstep, one token per step, so the attention KV caches of hybrid models keep one shared index, and every
     row's state only ever sees that row's own tokens.
  The cost is that prompt tokens past the common prefix (less than `prefill_chunk` plus the length spread) run
  at decode speed. Positions after a row is done are fed padding whose outputs are never read.

Sampling (`sample_logits`): ids >= `vocab_limit` (the tokenizer's vocabulary; the model's may be rounded up) are
masked; temperature <= 0 is greedy (argmax); else logits / temperature, then top-k (0 = off), then top-p over the
renormalised top-k distribution (1.0 = off; the most likely token is always kept), then a categorical draw with
the key `fold_in(PRNGKey(seed), t)` for position t (so a row's draws do not depend on how the prompt was split).

Streaming (`stream_generate`, used by the CLI): the prompt is prefilled by one jitted call, then a jitted
sample-and-decode step is called from a Python loop and each token's text is yielded as it arrives (the same
sampler and keys as `generate_tokens`, so for one prompt both give the same tokens up to float rounding
between the chunked and the recurrent paths).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mdn_jax.errors import UserError

MAX_STOP_TOKENS = 16


# ---------------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------------
def filter_logits(logits: jax.Array, top_k, top_p) -> jax.Array:
    """Top-k then top-p (nucleus) filtering of logits [B, V] (float32): dropped tokens get -inf.

    top_k <= 0 and top_p >= 1 disable the filters. Ranks come from a stable sort, so among equal logits the lower
    id ranks first and top-k keeps exactly k tokens. Top-p keeps the smallest prefix of the ranking whose
    probability (renormalised after top-k) reaches top_p; the most likely token is always kept.
    """
    B, V = logits.shape
    order = jnp.argsort(-logits, axis=-1, stable=True)
    srt = jnp.take_along_axis(logits, order, axis=-1)
    rank = jnp.arange(V)[None, :]
    keep = (top_k <= 0) | (rank < top_k)
    probs = jax.nn.softmax(jnp.where(keep, srt, -jnp.inf), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep = keep & ((before < top_p) | (rank == 0))
    keep_orig = jnp.zeros((B, V), bool).at[jnp.arange(B)[:, None], order].set(keep)
    return jnp.where(keep_orig, logits, -jnp.inf)


def sample_logits(logits: jax.Array, key: jax.Array, temperature, top_k, top_p, vocab_limit=None) -> jax.Array:
    """Next tokens [B] int32 from logits [B, V]: greedy if temperature <= 0, else filtered categorical."""
    logits = logits.astype(jnp.float32)
    if vocab_limit is not None:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)

    def greedy(_):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)
        return jax.random.categorical(key, filter_logits(scaled, top_k, top_p), axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature > 0, draw, greedy, None)


def _key_at(key, t):
    return jax.random.fold_in(key, t)


# ---------------------------------------------------------------------------------------------------------------
# the jitted loop
# ---------------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef", "prefill_chunk"))
def _generate_jit(graphdef, state, tokens, lengths, max_new, stop, key, temperature, top_k, top_p, vocab_limit,
                  *, prefill_chunk):
    """tokens [B, L] (prompts left-aligned, zero-padded), lengths [B] -> (tokens [B, L], end [B]).

    Row i's new tokens are tokens[i, lengths[i]:end[i]] (a stop token that ended the row is not included).
    """
    B, L = tokens.shape
    model = nnx.merge(graphdef, state)
    V = model.config.vocab_size
    C = prefill_chunk
    n_chunks = jnp.min(lengths) // C

    def prefill_body(i, carry):
        cache, _ = carry
        chunk = jax.lax.dynamic_slice_in_dim(tokens, i * C, C, axis=1)
        logits, cache = nnx.merge(graphdef, state).prefill(chunk, cache)
        return cache, logits[:, -1].astype(jnp.float32)

    cache, logits = jax.lax.fori_loop(0, n_chunks, prefill_body,
                                      (model.init_cache(B, L), jnp.zeros((B, V), jnp.float32)))
    limit = jnp.minimum(lengths + max_new, L)  # positions < limit may hold new tokens

    def cond(c):
        t, _, _, _, done, _ = c
        return (t < L) & ~jnp.all(done)

    def body(c):
        t, logits, cache, out, done, end = c
        sampled = sample_logits(logits, _key_at(key, t), temperature, top_k, top_p, vocab_limit)
        forced = t < lengths
        tok = jnp.where(forced, jax.lax.dynamic_index_in_dim(out, t, axis=1, keepdims=False), sampled)
        tok = jnp.where(done, 0, tok)
        new = ~forced & ~done
        is_stop = jnp.any(tok[:, None] == stop[None, :], axis=-1)
        end = jnp.where(new & ~is_stop, t + 1, end)
        done = done | (new & is_stop) | (~forced & (t + 1 >= limit))
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], t, axis=1)
        logits, cache = nnx.merge(graphdef, state).decode_step(tok, cache)
        return t + 1, logits.astype(jnp.float32), cache, out, done, end

    init = (n_chunks * C, logits, cache, tokens, lengths >= limit, lengths)
    _, _, _, out, _, end = jax.lax.while_loop(cond, body, init)
    return out, end


def _bucket(n: int, minimum: int = 64) -> int:
    """Round up to a power of two (at least `minimum`) so nearby sizes share one compiled program."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def _check_prompts(prompts: Sequence[Sequence[int]], max_len: int | None, max_new_tokens: int) -> int:
    if not prompts:
        raise UserError("no prompts given")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise UserError(f"prompt {i} is empty: generation needs at least one prompt token")
    longest = max(len(p) for p in prompts)
    if max_len is None:
        return _bucket(longest + max_new_tokens)
    for i, p in enumerate(prompts):
        if len(p) >= max_len:
            raise UserError(f"prompt {i} has {len(p)} tokens, longer than max_len - 1 = {max_len - 1} "
                            "(room for at least one new token is needed); pass a larger max_len")
    return int(max_len)


def _stop_array(stop_tokens) -> jnp.ndarray:
    stop = sorted({int(s) for s in stop_tokens})
    if len(stop) > MAX_STOP_TOKENS:
        raise UserError(f"at most {MAX_STOP_TOKENS} stop tokens, got {len(stop)}")
    return jnp.asarray(stop + [-1] * (MAX_STOP_TOKENS - len(stop)), jnp.int32)


def generate_tokens(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 128, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_tokens: Sequence[int] = (),
                    max_len: int | None = None, vocab_limit: int | None = None,
                    prefill_chunk: int = 256) -> list[list[int]]:
    """Continue token prompts; returns the new tokens of each prompt (without the stop token that ended it).

    max_len: the total length (prompt + new tokens) of the fixed buffers and the KV caches; default: longest
    prompt + max_new_tokens rounded up to a power of two (>= 64). A row stops at a stop token, after
    max_new_tokens, or at max_len. vocab_limit: ids >= it are never sampled.
    """
    L = _check_prompts(prompts, max_len, max_new_tokens)
    B = len(prompts)
    buf = np.zeros((B, L), np.int32)
    for i, p in enumerate(prompts):
        buf[i, :len(p)] = np.asarray(p, np.int32)
    lengths = np.array([len(p) for p in prompts], np.int32)
    graphdef, state = nnx.split(model)
    V = model.config.vocab_size
    limit = V if vocab_limit is None else min(int(vocab_limit), V)
    out, end = _generate_jit(graphdef, state, jnp.asarray(buf), jnp.asarray(lengths), jnp.int32(max_new_tokens),
                             _stop_array(stop_tokens), jax.random.PRNGKey(seed), jnp.float32(temperature),
                             jnp.int32(top_k), jnp.float32(top_p), jnp.int32(limit),
                             prefill_chunk=int(max(1, min(prefill_chunk, L))))
    out, end = np.asarray(out), np.asarray(end)
    return [out[i, lengths[i]:end[i]].tolist() for i in range(B)]


def _default_stop(tokenizer, stop_tokens):
    if stop_tokens is not None:
        return tuple(stop_tokens)
    eos = getattr(tokenizer, "eos_id", None)
    return () if eos is None else (eos,)


def _encode(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    if isinstance(prompts, str):
        raise UserError("prompts must be a list of strings (got one string)")
    out = []
    for i, p in enumerate(prompts):
        ids = list(tokenizer.encode(p)) if p else []
        if not ids:
            raise UserError(f"prompt {i} is empty: generation needs at least one prompt token")
        out.append(ids)
    return out


def generate(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_tokens: Sequence[int] | None = None,
             max_len: int | None = None, prefill_chunk: int = 256) -> list[str]:
    """Continue each text prompt; returns the generated text of each (without the prompt).

    stop_tokens default to the tokenizer's eos; see `generate_tokens` for the rest.
    """
    ids = _encode(tokenizer, prompts)
    new = generate_tokens(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, seed=seed, stop_tokens=_default_stop(tokenizer, stop_tokens), max_len=max_len,
                          vocab_limit=tokenizer.vocab_size, prefill_chunk=prefill_chunk)
    return [tokenizer.decode(t) for t in new]


# ---------------------------------------------------------------------------------------------------------------
# streaming (one prompt; a jitted step called from Python)
# ---------------------------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _prefill_jit(graphdef, state, tokens, *, max_len):
    model = nnx.merge(graphdef, state)
    logits, cache = model.prefill(tokens, model.init_cache(tokens.shape[0], max_len))
    return logits[:, -1].astype(jnp.float32), cache


def _sample_step(graphdef, state, logits, cache, key, t, temperature, top_k, top_p, vocab_limit):
    tok = sample_logits(logits, _key_at(key, t), temperature, top_k, top_p, vocab_limit)
    logits, cache = nnx.merge(graphdef, state).decode_step(tok, cache)
    return tok, logits.astype(jnp.float32), cache


@functools.cache
def _sample_step_jit(backend: str):
    """The jitted step; the cache buffers are donated (updated in place) where the backend supports it."""
    donate = () if backend == "cpu" else ("cache",)
    return jax.jit(_sample_step, static_argnames=("graphdef",), donate_argnames=donate)


def stream_tokens(model, prompt: Sequence[int], *, max_new_tokens: int = 128, temperature: float = 0.0,
                  top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_tokens: Sequence[int] = (),
                  max_len: int | None = None, vocab_limit: int | None = None) -> Iterator[int]:
    """Yield the new tokens of one prompt as they are produced (stops before a stop token).

    The prompt is checked when this is called (errors are raised before anything is yielded).
    """
    L = _check_prompts([prompt], max_len, max_new_tokens)
    return _stream_tokens(model, prompt, L, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens, vocab_limit)


def _stream_tokens(model, prompt, L, max_new_tokens, temperature, top_k, top_p, seed, stop_tokens, vocab_limit):
    graphdef, state = nnx.split(model)
    V = model.config.vocab_size
    limit = jnp.int32(V if vocab_limit is None else min(int(vocab_limit), V))
    logits, cache = _prefill_jit(graphdef, state, jnp.asarray([list(prompt)], jnp.int32), max_len=L)
    key, stop = jax.random.PRNGKey(seed), {int(s) for s in stop_tokens}
    args = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), limit)
    step = _sample_step_jit(jax.default_backend())
    for t in range(len(prompt), min(L, len(prompt) + max_new_tokens)):
        tok, logits, cache = step(graphdef, state, logits, cache, key, jnp.int32(t), *args)
        tok = int(tok[0])
        if tok in stop:
            return
        yield tok


def stream_generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 128, temperature: float = 0.0,
                    top_k: int = 0, top_p: float = 1.0, seed: int = 0, stop_tokens: Sequence[int] | None = None,
                    max_len: int | None = None) -> Iterator[str]:
    """Yield pieces of generated text as tokens arrive (incomplete UTF-8 is held back until it completes).

    The prompt is checked when this is called (errors are raised before anything is yielded).
    """
    ids = _encode(tokenizer, [prompt])[0]
    toks = stream_tokens(model, ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                         top_p=top_p, seed=seed, stop_tokens=_default_stop(tokenizer, stop_tokens), max_len=max_len,
                         vocab_limit=tokenizer.vocab_size)
    return _stream_text(tokenizer, toks)


def _stream_text(tokenizer, toks) -> Iterator[str]:
    new: list[int] = []
    shown = ""
    for tok in toks:
        new.append(tok)
        text = tokenizer.decode(new)
        if text.endswith("\ufffd") or not text.startswith(shown):
            continue
        if len(text) > len(shown):
            yield text[len(shown):]
            shown = text
    text = tokenizer.decode(new)
    if text.startswith(shown) and len(text) > len(shown):
        yield text[len(shown):]
