"""Language-model tests: parameter counts, forward/grad, packed documents, prefill + decode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdn_jax.model import build_model, count_params, load_config


def _closed_form(c):
    """Hand count of an MDN model without hybrid attention (spec 5.1-5.6)."""
    D, H, K, HV, V, I, W = c.hidden_size, c.num_heads, c.head_dim, c.n_v_heads, c.head_v_dim, c.mlp_dim, c.conv_size
    mixer = (2 * D * H * K + D * HV * V          # q, k, v projections
             + 4 * D * HV                         # a, b, m, e
             + D * HV * V + HV * V * D            # g_proj, o_proj
             + W * (2 * H * K + HV * V)           # short convs
             + V                                  # o_norm weight
             + 6 * HV)                            # A_log, Mu_log, dt_bias, mu_bias, log_factor, D_log
    block = mixer + 3 * D * I + 2 * D
    non_emb = c.num_hidden_layers * block + D
    return non_emb + 2 * c.vocab_size * D, non_emb


@pytest.mark.parametrize("name, total, non_emb", [
    ("momentum_deltanet_400M", 417.5e6, 314.6e6),
    ("momentum_deltanet_1B", 1.463e9, 1.257e9),
])
def test_param_counts(name, total, non_emb):
    cfg = load_config(name)
    n = count_params(cfg)
    assert (n["total"], n["non_embedding"]) == _closed_form(cfg)
    assert abs(n["total"] - total) / total < 1e-3 and abs(n["non_embedding"] - non_emb) / non_emb < 1e-3


def test_hybrid_param_count():
    n = count_params(load_config("momentum_deltanet_400M_3vs1"))
    assert abs(n["total"] - 431e6) / 431e6 < 2e-3


@pytest.mark.parametrize("name", ["tiny_gdn", "tiny_hybrid", "tiny_transformer"])
def test_forward_and_grad_finite(name):
    model = build_model(name, remat=(name == "tiny_hybrid"))
    tokens = jax.random.randint(jax.random.key(1), (2, 33), 0, model.config.vocab_size)

    def loss_fn(m):
        logits = m(tokens[:, :-1])
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    loss, grads = nnx.jit(nnx.value_and_grad(loss_fn))(model)  # one compile (eager: one per primitive, ~2x slower)
    assert np.isfinite(float(loss)) and abs(float(loss) - np.log(model.config.vocab_size)) < 0.5
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) > 0 for g in leaves) == len(leaves)  # every parameter gets a gradient


def test_bf16_compute_f32_logits():
    model = build_model("tiny_mdn", dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(2), (2, 20), 0, 97)
    forward = nnx.jit(lambda m, t: m(t))
    logits = forward(model, tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    ref = forward(build_model("tiny_mdn"), tokens)
    assert float(jnp.abs(logits - ref).max()) < 0.05 * float(jnp.abs(ref).max())


@pytest.mark.parametrize("name", ["tiny_gdn", "tiny_hybrid"])  # tiny_hybrid = MDN layer + attention layer
def test_packed_documents_equal_separate(name):
    model = build_model(name, seed=3)
    lens = [5, 21, 12]
    docs = [jax.random.randint(jax.random.key(10 + i), (n,), 0, 97) for i, n in enumerate(lens)]
    packed = jnp.concatenate(docs)[None]
    seg = jnp.concatenate([jnp.full((n,), i + 1, jnp.int32) for i, n in enumerate(lens)])[None]
    call = nnx.jit(lambda m, x, seg=None: m(x, segment_ids=seg))
    out = call(model, packed, seg)[0]
    # the documents alone, as one batch right-padded to the longest (causal: a prefix ignores what follows)
    alone = call(model, jnp.stack([jnp.pad(d, (0, max(lens) - n)) for d, n in zip(docs, lens, strict=True)]))
    start = 0
    for i, n in enumerate(lens):
        np.testing.assert_allclose(out[start:start + n], alone[i, :n], atol=2e-5, rtol=1e-4)
        start += n
    # without segment ids the later documents do see the earlier ones
    assert float(jnp.abs(call(model, packed)[0, lens[0]:] - out[lens[0]:]).max()) > 1e-4


@pytest.mark.parametrize("name", ["tiny_mdn", "tiny_gdn", "tiny_hybrid", "tiny_transformer"])
def test_prefill_then_decode_matches_full_forward(name):
    model = build_model(name, seed=1)
    B, T, P = 2, 40, 29  # prompt of 29 tokens (not a chunk multiple), then 11 decode steps
    tokens = jax.random.randint(jax.random.key(5), (B, T), 0, model.config.vocab_size)
    full = nnx.jit(lambda m, t: m(t))(model, tokens)
    prefill = nnx.jit(lambda m, t, c: m.prefill(t, c))
    step = nnx.jit(lambda m, t, c: m.decode_step(t, c))
    logits, cache = prefill(model, tokens[:, :P], model.init_cache(B, T))
    outs = [logits]
    for t in range(P, T):
        lt, cache = step(model, tokens[:, t], cache)
        outs.append(lt[:, None])
    got = jnp.concatenate(outs, axis=1)
    np.testing.assert_allclose(got, full, atol=2e-5, rtol=1e-4)
    # two prefills in a row continue the state as well
    l1, c = prefill(model, tokens[:, :17], model.init_cache(B, T))
    l2, _ = prefill(model, tokens[:, 17:], c)
    np.testing.assert_allclose(jnp.concatenate([l1, l2], 1), full, atol=2e-5, rtol=1e-4)


def test_cache_structure():
    model = build_model("tiny_hybrid")
    cache = model.init_cache(3, 16)
    mdn, attn = cache[0], cache[1]
    assert mdn.S.shape == (3, 2, 16, 32) and mdn.S.dtype == jnp.float32 and mdn.M.shape == mdn.S.shape
    assert [c.shape for c in mdn.conv] == [(3, 3, 32), (3, 3, 32), (3, 3, 64)]
    assert attn.k.shape == (3, 16, 2, 16) and int(attn.index) == 0
    gdn = build_model("tiny_gdn").init_cache(1, 8)[0]
    assert gdn.M is None and gdn.S.shape == (1, 4, 16, 32)
    with pytest.raises(ValueError, match="segment_ids"):
        model(jnp.zeros((3, 4), jnp.int32), segment_ids=jnp.zeros((3, 4), jnp.int32), cache=cache)
