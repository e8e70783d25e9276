"""scan_layers: runs of identical blocks as one lax.scan give the loop's logits and parameter gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdn_jax.model import build_model


def _loss_and_grads(model, tokens, segment_ids):
    def loss_fn(m):
        logits = m(tokens[:, :-1], segment_ids=segment_ids)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)


def _scans_of_length(model, tokens, length):
    """How many top-level scan equations of `length` steps the model's forward traces to (the op's own scans
    over chunks are nested in the layers' or have their chunk count as length)."""
    graphdef, state = nnx.split(model)
    jaxpr = jax.make_jaxpr(lambda s, t: nnx.merge(graphdef, s)(t))(state, tokens)
    return sum(e.primitive.name == "scan" and e.params["length"] == length for e in jaxpr.jaxpr.eqns)


# tiny_hybrid at 5 layers: MDN, attention, then three MDN layers (runs of 1, 1 and 3: one scan of 3 steps; remat
# inside it); the sequence (24 tokens) has 2 chunks of 16, so no scan over chunks has 3 steps. tiny_transformer:
# one run of 2 attention blocks, without remat
@pytest.mark.parametrize("name, overrides, run", [
    ("tiny_hybrid", {"num_hidden_layers": 5, "remat": True}, 3),
    ("tiny_transformer", {}, 2),
])
def test_scan_layers_matches_the_loop(name, overrides, run):
    loop = build_model(name, seed=4, **overrides)
    scan = build_model(name, seed=4, scan_layers=True, **overrides)
    rng = np.random.default_rng(4)
    tokens = jnp.asarray(rng.integers(0, loop.config.vocab_size, (2, 25)), jnp.int32)
    seg = jnp.asarray(np.stack([np.repeat([0, 1], [10, 14]), np.repeat([0, 1, 2], [5, 12, 7])]), jnp.int32)
    assert _scans_of_length(scan, tokens, run) == 1 and _scans_of_length(loop, tokens, run) == 0
    l0, g0 = _loss_and_grads(loop, tokens, seg)
    l1, g1 = _loss_and_grads(scan, tokens, seg)
    assert np.isfinite(float(l0))
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    (p0, a), (p1, b) = (jax.tree_util.tree_flatten_with_path(nnx.state(g, nnx.Param)) for g in (g0, g1))
    assert [k for k, _ in p0] == [k for k, _ in p1]
    for (path, x), (_, y) in zip(p0, p1, strict=True):
        scale = float(jnp.max(jnp.abs(x))) + 1e-12
        assert float(jnp.max(jnp.abs(x - y))) <= 1e-4 * scale, jax.tree_util.keystr(path)
