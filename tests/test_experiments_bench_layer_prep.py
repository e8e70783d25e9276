"""The preprocessing variants of `experiments/bench_layer_prep.py` compute what the model computes."""

import jax
import numpy as np
import pytest

from experiments.bench_layer_prep import l2norm_vjp, run
from mdn_jax.ops import api


def test_l2norm_vjp_matches_autodiff():
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 16))
    g = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 16))
    np.testing.assert_allclose(l2norm_vjp(x), api.l2norm(x), rtol=1e-6, atol=1e-6)
    ours = jax.vjp(l2norm_vjp, x)[1](g)[0]
    ref = jax.vjp(api.l2norm, x)[1](g)[0]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("docs,variants", [(3, "default,l2norm_vjp"), (0, "default,conv_lax,both")])
def test_variants_match_the_model(docs, variants):
    rows = run(variants.split(","), batch=1, seq=64, docs=docs, reps=1, config="tiny_mdn", implementation="xla")
    assert [r["variant"] for r in rows] == variants.split(",")
    for r in rows:
        assert r["finite"] and r["rel_diff"] < 2e-2, r  # bf16 parameters and activations
        assert r["ms"] > 0


def test_conv_variant_rejects_segment_ids():
    with pytest.raises(NotImplementedError, match="segment"):
        run(["conv_lax"], batch=1, seq=64, docs=2, reps=1, config="tiny_mdn", implementation="xla")


def test_segment_attribution_variants_run_and_differ(tmp_path):
    rows = run(["default", "seg_conv_only", "seg_op_only", "no_seg"], batch=1, seq=64, docs=3, reps=1,
               config="tiny_mdn", implementation="xla", profile_dir=str(tmp_path))
    assert all(r["finite"] for r in rows)
    assert all(r["rel_diff"] > 1e-3 for r in rows[1:])  # each drops some or all of the resets
    assert "| kernel | ms |" in (tmp_path / "no_seg.md").read_text()


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant"):
        run(["fast"], batch=1, seq=64, docs=0, reps=1, config="tiny_mdn", implementation="xla")
