"""The LM loss: the chunked cross-entropy (CausalLM's hidden + logits_from_hidden) equals the full-logit one, in
value and gradients, with padding and packed documents; loss_chunk=0 takes the full logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdn_jax.model import build_model
from mdn_jax.train import loss as loss_mod
from mdn_jax.train.loss import lm_loss_sum


class _FullLogitsOnly(nnx.Module):
    """The same model seen through `__call__` alone (no `hidden`): the full-logit cross-entropy."""

    def __init__(self, model):
        self.model = model

    def __call__(self, tokens, segment_ids=None):
        return self.model(tokens, segment_ids=segment_ids)


@pytest.fixture(scope="module")
def case():
    model = build_model("tiny_hybrid", seed=5)
    rng = np.random.default_rng(5)
    tokens = jnp.asarray(rng.integers(0, model.config.vocab_size, (2, 37)), jnp.int32)
    seg = jnp.asarray(np.stack([np.repeat([1, 2, 0], [12, 20, 5]), np.repeat([1, 2], [30, 7])]), jnp.int32)  # 0 pads
    return model, tokens, seg


def _value_and_grads(model, tokens, seg, chunk):
    def f(m):
        total, count = lm_loss_sum(m, tokens, seg, chunk)
        return total / count

    return nnx.jit(nnx.value_and_grad(f))(model)


@pytest.mark.parametrize("chunk", [16, 23])  # 74 tokens: whole chunks of 16 plus a padded one; 23 is ragged
def test_chunked_loss_equals_full_logits(case, chunk, monkeypatch):
    model, tokens, seg = case
    calls = []
    inner = loss_mod.chunked_cross_entropy
    monkeypatch.setattr(loss_mod, "chunked_cross_entropy", lambda *a, **k: calls.append(1) or inner(*a, **k))
    l1, g1 = _value_and_grads(model, tokens, seg, chunk)
    assert calls, "CausalLM did not take the chunked cross-entropy"
    l0, g0 = _value_and_grads(_FullLogitsOnly(model), tokens, seg, chunk)
    assert np.isfinite(float(l0)) and abs(float(l0) - np.log(model.config.vocab_size)) < 0.5
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    a, b = jax.tree.leaves(nnx.state(g1, nnx.Param)), jax.tree.leaves(nnx.state(g0.model, nnx.Param))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-7)


def test_loss_chunk_zero_takes_the_full_logits(case, monkeypatch):
    model, tokens, seg = case
    monkeypatch.setattr(loss_mod, "chunked_cross_entropy", lambda *a, **k: pytest.fail("chunked path taken"))
    l0, _ = _value_and_grads(model, tokens, seg, 0)
    l1, _ = _value_and_grads(_FullLogitsOnly(model), tokens, seg, 0)
    np.testing.assert_allclose(float(l0), float(l1), rtol=1e-6)
