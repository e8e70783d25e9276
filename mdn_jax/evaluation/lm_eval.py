"""Held-out language-model evaluation of a trained run: packed windows or long-context streaming.

* packed (`evaluate_packed`): the documents are tokenized (+eos), packed into rows of `seq_len` tokens with
  segment ids (the training pipeline) and scored by the training eval step; the state resets at each document
  and at each row boundary, so a document longer than `seq_len` is scored in independent pieces.
* streamed (`evaluate_streaming`, `--window W`): each document is scored in windows of W tokens with the
  decode cache of `CausalLM.init_cache` / `prefill` carried from one window to the next, so every token is
  predicted from the whole document before it (recurrent state S, M and conv states; for attention layers a KV
  cache as long as the document, which must fit in `max_len`). The last window of a document is right-padded
  to W (padding comes after every scored position, so it changes no score) to keep one compiled shape.

Both return {"loss" (nats/token), "ppl", "bits_per_token", "tokens", ...}; for the byte tokenizer every target is
one byte (or the end-of-document token), so bits per token is reported as bits per byte.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mdn_jax.errors import UserError


def _summary(total: float, count: float, tokenizer, mode: str, **extra) -> dict:
    if count <= 0:
        raise UserError("nothing to evaluate: the data has no scored tokens (documents of one token?)")
    loss = total / count
    out = {"mode": mode, "loss": loss, "ppl": float(math.exp(min(loss, 50.0))), "bits_per_token": loss / math.log(2),
           "tokens": int(count), "tokenizer": tokenizer.name}
    if tokenizer.name == "byte":
        out["bits_per_byte"] = out["bits_per_token"]
    out.update(extra)
    return out


def evaluate_packed(run, source, *, seq_len: int, batch_size: int, max_batches: int | None = None) -> dict:
    """Mean next-token loss over `source` packed into [batch_size, seq_len] rows (the training eval step)."""
    from mdn_jax.data.pipeline import make_pipeline
    from mdn_jax.train import sharding as shd
    from mdn_jax.train.loop import evaluate
    from mdn_jax.train.step import make_eval_step

    setup = run.setup
    if batch_size % shd.batch_parallel_size(setup.mesh):
        raise UserError(f"batch size {batch_size} is not divisible by the {shd.batch_parallel_size(setup.mesh)} "
                        "devices")

    def pipeline():
        return make_pipeline(source, run.tokenizer, seq_len=seq_len, batch_size=batch_size, num_epochs=1,
                             shuffle=False, prefetch=0)

    ev = evaluate(make_eval_step(setup), run.params, pipeline, batch_size, batch_size,
                  shd.batch_sharding(setup.mesh), max_batches or 2**62)
    return _summary(ev["loss"] * ev["tokens"], ev["tokens"], run.tokenizer, "packed", seq_len=seq_len)


def _has_attention(model) -> bool:
    from mdn_jax.model.attention import Attention

    return any(isinstance(b.attn, Attention) for b in getattr(model, "layers", []))


def make_window_step(run):
    """step(params, cache, tokens [1, W], targets [1, W], mask [1, W]) -> (loss sum, count, cache), jitted."""

    @jax.jit
    def step(params, cache, tokens, targets, mask):
        model = run.model(params)
        logits, cache = model.prefill(tokens, cache)
        logits = logits.astype(jnp.float32)
        lse = jax.nn.logsumexp(logits, axis=-1)
        tgt = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(jnp.where(mask, lse - tgt, 0.0)), jnp.sum(mask).astype(jnp.float32), cache

    return step


def evaluate_streaming(run, source, *, window: int, max_len: int | None = None,
                       max_tokens: int | None = None) -> dict:
    """Score every document of `source` window by window with the state carried across windows.

    window: W tokens per prefill call. max_len: longest document (tokens, with eos) allowed for models with
    attention layers (their KV cache holds the whole document); default the model's max_position_embeddings.
    max_tokens: stop after about this many scored tokens (whole windows).
    """
    model = run.model()
    if not hasattr(model, "init_cache") or not hasattr(model, "prefill"):
        raise UserError("streamed evaluation (--window) needs a model with init_cache/prefill (mdn_jax CausalLM)")
    if window <= 0:
        raise UserError(f"--window must be positive, got {window}")
    attention = _has_attention(model)
    if attention and max_len is None:
        max_len = int(getattr(model.config, "max_position_embeddings", 2048))
    step = getattr(run, "_window_step", None) or make_window_step(run)
    run._window_step = step  # reuse the compiled step across calls on this run
    eos = run.tokenizer.eos_id
    total, count, docs, windows = 0.0, 0.0, 0, 0
    for i in range(len(source)):
        ids = list(run.tokenizer.encode(source[i])) + ([eos] if eos is not None else [])
        n = len(ids)
        if n < 2:
            continue
        if attention and n > max_len:
            raise UserError(f"document {i} has {n} tokens, more than max_len={max_len}: a model with attention layers "
                            "needs a KV cache as long as the whole text (pass --max-len, or evaluate without --window)")
        n_win = -(-n // window)
        padded = np.full((n_win * window + 1,), run.tokenizer.pad_id, np.int32)
        padded[:n] = ids
        valid = np.zeros_like(padded, bool)
        valid[:n - 1] = True  # position t predicts t+1 for t < n-1
        cache = model.init_cache(1, n_win * window if attention else window)
        for w in range(n_win):
            a = w * window
            tok = jnp.asarray(padded[None, a:a + window])
            tgt = jnp.asarray(padded[None, a + 1:a + window + 1])
            m = jnp.asarray(valid[None, a:a + window])
            ls, c, cache = step(run.params, cache, tok, tgt, m)
            total, count, windows = total + float(ls), count + float(c), windows + 1
            if max_tokens and count >= max_tokens:
                break
        docs += 1
        if max_tokens and count >= max_tokens:
            break
    return _summary(total, count, run.tokenizer, "streamed", window=window, documents=docs, windows=windows)


def eval_source(run, data: str | None):
    """The documents to score: all of `data` if given, else the run's own held-out split."""
    from mdn_jax.data.sources import load_source, split_source

    if data is not None:
        return load_source(data, run.cfg.text_key)
    _, held_out = split_source(load_source(run.cfg.data, run.cfg.text_key), run.cfg.eval_fraction, run.cfg.seed)
    if held_out is None:
        raise UserError("the run has no held-out split (eval_fraction=0): pass --data")
    return held_out


def run_eval(checkpoint: str, data: str | None = None, tokenizer: str | None = None, seq_len: int | None = None,
             window: int | None = None, batch_size: int = 8, max_batches: int | None = None,
             max_len: int | None = None, max_tokens: int | None = None) -> dict:
    """The `mdn-jax eval` command as a function (see `mdn_jax.cli_eval`)."""
    from mdn_jax.data.sources import load_source
    from mdn_jax.evaluation.restore import load_run

    for name, v in (("--window", window), ("--seq-len", seq_len), ("--batch-size", batch_size)):
        if v is not None and v <= 0:
            raise UserError(f"{name} must be positive, got {v}")
    if data is not None:
        load_source(data)  # a bad path fails before the model is restored
    run = load_run(checkpoint, tokenizer)
    source = eval_source(run, data)
    if window is not None:
        out = evaluate_streaming(run, source, window=window, max_len=max_len, max_tokens=max_tokens)
    else:
        T = seq_len or run.cfg.seq_len
        out = evaluate_packed(run, source, seq_len=T, batch_size=batch_size, max_batches=max_batches)
    out.update({"checkpoint": run.directory, "step": run.step, "data": data or f"{run.cfg.data} (held-out split)"})
    return out
