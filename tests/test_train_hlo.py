"""The compiled training gradient scatters into the vocabulary only once, in float32: the train step's loss keeps
the embedding table in float32 (the model casts the gathered rows), and the loss's target-logit pick has no
scatter. A bf16 scatter-add there took 14 ms per 400M micro-batch on an H200 (9% of the step)."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from mdn_jax.train.config import load_train_config
from mdn_jax.train.model_api import model_factory
from mdn_jax.train.sharding import make_mesh
from mdn_jax.train.state import init_state, make_setup
from mdn_jax.train.step import make_loss_fn


def _scatter_result_types(text: str) -> list[tuple[tuple[int, ...], str]]:
    """(shape, element type) of every stablehlo.scatter in a lowered module."""
    out = []
    for m in re.finditer(r'"stablehlo\.scatter"', text):
        res = re.search(r"\)\s*->\s*tensor<([0-9x]*?)x?([a-z]+[0-9]*)>", text[m.end():])
        dims = tuple(int(d) for d in res.group(1).split("x") if d)
        out.append((dims, res.group(2)))
    return out


def test_train_gradient_scatters_into_the_vocabulary_once_in_float32():
    cfg = load_train_config("tiny", {"compute_dtype": "bfloat16", "batch_size": 2, "seq_len": 64, "loss_chunk": 32})
    make, mcfg = model_factory(cfg, 259)
    setup = make_setup(cfg, make_mesh(1, 1, 1, devices=jax.devices()[:1]), make, mcfg)
    params = init_state(setup)["params"]
    vocab, hidden = mcfg.vocab_size, mcfg.hidden_size
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.integers(0, 259, (2, 64)), jnp.int32),
             "segment_ids": jnp.ones((2, 64), jnp.int32)}
    loss_fn = make_loss_fn(setup)

    def loss(p):
        total, count = loss_fn(p, batch)
        return total / count

    scatters = _scatter_result_types(jax.jit(jax.grad(loss)).lower(params).as_text())
    into_vocab = [s for s in scatters if vocab in s[0]]
    assert into_vocab == [((vocab, hidden), "f32")], into_vocab
