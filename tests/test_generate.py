"""Generation (mdn_jax.inference): cache exactness at the generate level, mixed-length batches, sampling, errors.

Every generate_tokens call on a model uses the same (batch 4, max_len 32) or (batch 1, max_len 32) shapes, so
each model compiles the loop twice; sampling parameters, seeds and stop tokens are traced values.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mdn_jax
from mdn_jax.errors import UserError
from mdn_jax.inference import filter_logits, generate_tokens, load_model, sample_logits, stream_tokens
from mdn_jax.model import build_model

MODELS = ["tiny_mdn", "tiny_gdn", "tiny_hybrid"]  # pure MDN, pure GDN, MDN + attention
LENS = [6, 13, 9, 17]    # common prefix 6: one prefill chunk of 4, the rest teacher-forced through the loop
NEW, L, CHUNK = 10, 32, 4


def _prompts(vocab):
    rng = np.random.default_rng(7)
    return [rng.integers(0, vocab, n).tolist() for n in LENS]


@functools.cache
def _setup(name):
    model = build_model(name, seed=1)
    prompts = _prompts(model.config.vocab_size)
    batch = generate_tokens(model, prompts, max_new_tokens=NEW, max_len=L, prefill_chunk=CHUNK)
    return model, prompts, batch


def _naive_greedy(model, prompts, n_new):
    """Greedy by re-running the full forward (no cache) on the growing sequences (right-padded; causal)."""
    fwd = jax.jit(lambda t: model(t))
    seqs = [list(p) for p in prompts]
    for _ in range(n_new):
        buf = np.zeros((len(seqs), L), np.int32)
        for i, s in enumerate(seqs):
            buf[i, :len(s)] = s
        logits = np.asarray(fwd(jnp.asarray(buf)))
        for i, s in enumerate(seqs):
            s.append(int(np.argmax(logits[i, len(s) - 1])))
    return [s[len(p):] for s, p in zip(seqs, prompts, strict=True)]


@pytest.mark.parametrize("name", MODELS)
def test_cached_greedy_equals_full_forward(name):
    model, prompts, batch = _setup(name)
    assert [len(t) for t in batch] == [NEW] * len(LENS)
    assert batch == _naive_greedy(model, prompts, NEW)


@pytest.mark.parametrize("name", MODELS)
def test_mixed_length_batch_equals_alone(name):
    model, prompts, batch = _setup(name)
    for p, b in zip(prompts, batch, strict=True):  # alone: prefill covers len // 4 chunks, different split
        assert generate_tokens(model, [p], max_new_tokens=NEW, max_len=L, prefill_chunk=CHUNK)[0] == b
    one = [prompts[1][:1]]  # a one-token prompt (no prefill chunk at all)
    assert generate_tokens(model, one, max_new_tokens=NEW, max_len=L, prefill_chunk=CHUNK) == _naive_greedy(
        model, one, NEW)


def test_greedy_deterministic_and_seeded_sampling():
    model, prompts, batch = _setup("tiny_mdn")
    kw = dict(max_new_tokens=NEW, max_len=L, prefill_chunk=CHUNK)
    assert generate_tokens(model, prompts, **kw) == batch
    a = generate_tokens(model, prompts, temperature=1.0, seed=3, **kw)
    assert a == generate_tokens(model, prompts, temperature=1.0, seed=3, **kw)
    assert a != generate_tokens(model, prompts, temperature=1.0, seed=4, **kw)
    assert a != batch
    # top_k=1 sampling is greedy whatever the temperature and seed
    assert generate_tokens(model, prompts, temperature=2.0, top_k=1, seed=5, **kw) == batch


def test_stop_tokens_and_max_len():
    model, prompts, batch = _setup("tiny_gdn")
    kw = dict(max_new_tokens=NEW, max_len=L, prefill_chunk=CHUNK)
    stop = batch[0][3]
    out = generate_tokens(model, prompts, stop_tokens=[stop], **kw)
    for o, b in zip(out, batch, strict=True):
        assert o == (b[:b.index(stop)] if stop in b else b)
    # the longest prompt (17) has room for only 32 - 17 = 15 tokens; others get max_new_tokens
    out = generate_tokens(model, prompts, max_new_tokens=20, max_len=L, prefill_chunk=CHUNK)
    assert [len(o) for o in out] == [min(20, L - n) for n in LENS]
    assert [o[:NEW] for o in out] == batch


def test_stream_equals_batch():
    model, prompts, batch = _setup("tiny_hybrid")
    assert list(stream_tokens(model, prompts[1], max_new_tokens=NEW, max_len=L)) == batch[1]


class _CharTok:
    """Characters to ids 1..96 (0 is eos), for the tiny models' vocabulary of 97."""

    vocab_size, eos_id = 97, 0

    def encode(self, s):
        return [ord(c) % 96 + 1 for c in s]

    def decode(self, ids):
        return "".join(chr(i - 1 + 32) for i in ids)


def test_text_api():
    model, _, _ = _setup("tiny_mdn")
    out = mdn_jax.generate(model, _CharTok(), ["ab", "hello", "x", "ROMEO:"], max_new_tokens=NEW, max_len=L,
                           prefill_chunk=CHUNK, temperature=0.7, top_p=0.9, seed=1)
    assert len(out) == 4 and all(isinstance(t, str) and len(t) <= NEW for t in out)


def test_topk_topp_never_emit_masked_tokens():
    probs = np.array([0.05, 0.4, 0.0001, 0.3, 0.1, 0.1499], np.float32)
    logits = jnp.log(jnp.asarray(probs))[None]
    f = lambda k, p: np.isfinite(np.asarray(filter_logits(logits, k, p)[0]))  # noqa: E731
    assert set(np.flatnonzero(f(2, 1.0))) == {1, 3}
    assert set(np.flatnonzero(f(0, 0.6))) == {1, 3}        # 0.4 < 0.6 -> add the 0.3 token; 0.7 >= 0.6 stops
    assert set(np.flatnonzero(f(0, 0.75))) == {1, 3, 5}
    assert set(np.flatnonzero(f(3, 0.95))) == {1, 3, 5}    # top-p over the renormalised top-3
    assert set(np.flatnonzero(f(0, 0.01))) == {1}          # the most likely token is always kept
    assert f(0, 1.0).all()
    n = 4000
    big = jnp.broadcast_to(logits, (n, probs.size))
    for k, p, allowed in [(2, 1.0, {1, 3}), (0, 0.75, {1, 3, 5}), (3, 0.95, {1, 3, 5})]:
        toks = np.asarray(sample_logits(big, jax.random.PRNGKey(k), 1.0, k, p))
        assert set(toks.tolist()) == allowed  # every allowed token appears, no other
    toks = np.asarray(sample_logits(big, jax.random.PRNGKey(0), 1.0, 0, 1.0, vocab_limit=4))
    assert set(toks.tolist()) <= {0, 1, 2, 3}
    assert np.all(np.asarray(sample_logits(big, jax.random.PRNGKey(0), 0.0, 0, 1.0)) == 1)  # greedy


def test_bad_input():
    model, _, _ = _setup("tiny_mdn")
    with pytest.raises(UserError, match="prompt 1 is empty"):
        generate_tokens(model, [[1, 2], []], max_len=L)
    with pytest.raises(UserError, match="prompt 0 is empty"):
        mdn_jax.generate(model, _CharTok(), [""], max_len=L)
    with pytest.raises(UserError, match="longer than max_len"):
        generate_tokens(model, [[1] * L], max_len=L)
    with pytest.raises(UserError, match="checkpoint path not found"):
        load_model("/nonexistent/run")


def test_load_converted_safetensors(tmp_path):
    from mdn_jax.convert import save_safetensors

    model, prompts, batch = _setup("tiny_mdn")
    save_safetensors(model, tmp_path / "w.safetensors")
    loaded, tok = load_model(safetensors=str(tmp_path / "w.safetensors"), config="tiny_mdn", tokenizer="byte")
    assert tok.name == "byte"
    assert generate_tokens(loaded, prompts, max_new_tokens=NEW, max_len=L, prefill_chunk=CHUNK) == batch
    with pytest.raises(UserError, match="needs --config"):
        load_model(safetensors=str(tmp_path / "w.safetensors"))
