"""The compiled training gradient scatters into the vocabulary only once, in float32: the embedding gradient is a
float32 scatter-add of the gathered rows, and the loss's target-logit pick has no scatter (an H100 profile of the
400M step spent 7.7% of it in a bf16 scatter before)."""

import re

import jax
import jax.numpy as jnp
from flax import nnx

from mdn_jax.model import build_model
from mdn_jax.train.loss import lm_loss_sum


def _scatter_result_types(text: str) -> list[tuple[tuple[int, ...], str]]:
    """(shape, element type) of every stablehlo.scatter in a lowered module."""
    out = []
    for m in re.finditer(r'"stablehlo\.scatter"', text):
        res = re.search(r"\)\s*->\s*tensor<([0-9x]*?)x?([a-z]+[0-9]*)>", text[m.end():])
        dims = tuple(int(d) for d in res.group(1).split("x") if d)
        out.append((dims, res.group(2)))
    return out


def test_train_gradient_scatters_into_the_vocabulary_once_in_float32():
    model = build_model("tiny_mdn", dtype="bfloat16")
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    tokens = jax.random.randint(jax.random.key(0), (2, 64), 0, vocab)

    def loss(p):
        total, count = lm_loss_sum(nnx.merge(graph, p, rest), tokens, jnp.ones_like(tokens), chunk=32)
        return total / count

    scatters = _scatter_result_types(jax.jit(jax.grad(loss)).lower(params).as_text())
    into_vocab = [s for s in scatters if vocab in s[0]]
    assert into_vocab == [((vocab, hidden), "f32")], into_vocab
