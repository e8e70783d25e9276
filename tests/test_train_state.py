"""init_state: the eager path (one device) and the jit path (outputs born sharded) give the same state."""

import jax
import numpy as np
import pytest

from mdn_jax.train.config import load_train_config
from mdn_jax.train.model_api import model_factory
from mdn_jax.train.sharding import make_mesh
from mdn_jax.train.state import init_state, make_setup


@pytest.fixture(scope="module")
def setup():
    cfg = load_train_config("tiny", {"model": "tiny_mdn", "seed": 7, "batch_size": 2, "seq_len": 64})
    make, mcfg = model_factory(cfg, 259)
    return make_setup(cfg, make_mesh(1, 1, 1, devices=jax.devices()[:1]), make, mcfg)


def test_eager_is_the_default_on_one_device_and_matches_the_jit_init(setup):
    eager, jitted = init_state(setup), init_state(setup, eager=False)
    pe, pj = jax.tree_util.tree_flatten_with_path(eager)[0], jax.tree.leaves(jitted)
    assert len(pe) == len(pj) and jax.tree.structure(eager) == jax.tree.structure(jitted)
    for (path, a), b in zip(pe, pj, strict=True):
        name = jax.tree_util.keystr(path)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim), name
        assert np.all(np.isfinite(np.asarray(a, np.float64))), name
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    kernels = [a for (p, a) in pe if "kernel" in jax.tree_util.keystr(p) and "params" in jax.tree_util.keystr(p)]
    assert kernels and all(float(np.std(np.asarray(k, np.float64))) > 0 for k in kernels)  # drawn, not constant


def test_eager_state_leaves_have_their_own_buffers_so_a_donating_step_runs(setup):
    # the MDN mixer's dt_bias and mu_bias start from the same values; the eager path must not hand one buffer to
    # two leaves, or a step that donates the state fails ("donate the same buffer twice")
    state = init_state(setup)
    leaves = jax.tree.leaves(state)
    ptrs = [a.unsafe_buffer_pointer() for a in leaves if a.size]
    assert len(set(ptrs)) == len(ptrs)
    out = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)(state)
    assert all(np.all(np.isfinite(np.asarray(a, np.float64))) for a in jax.tree.leaves(out))
