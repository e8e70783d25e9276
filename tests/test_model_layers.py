"""Layer-level tests: shapes/dtypes, causality, gate invariants, mu = 0 == Gated DeltaNet, metadata."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdn_jax.model import Attention, GatedDeltaNet, MomentumDeltaNet, NoDecayParam, no_weight_decay_mask
from mdn_jax.model.params import AXES

D = 48
KW = dict(num_heads=2, head_dim=16, expand_v=1.5, num_v_heads=4, chunk_size=16)


def _x(key, B=2, T=40, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), (B, T, D), jnp.float32).astype(dtype)


def _make(kind, dtype=jnp.float32, seed=0, **kw):
    rngs = nnx.Rngs(seed)
    if kind == "mdn":
        return MomentumDeltaNet(D, dtype=dtype, rngs=rngs, **{**KW, **kw})
    if kind == "gdn":
        return GatedDeltaNet(D, dtype=dtype, rngs=rngs, **{**KW, **kw})
    return Attention(D, num_heads=4, num_kv_heads=2, dtype=dtype, rngs=rngs)


@pytest.mark.parametrize("kind", ["mdn", "gdn", "attn"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_dtypes(kind, dtype):
    layer = _make(kind, dtype)
    y = layer(_x(1, dtype=dtype))
    assert y.shape == (2, 40, D) and y.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))
    for v in jax.tree.leaves(nnx.state(layer, nnx.Param)):
        assert v.dtype == jnp.float32  # parameters stay f32 under bf16 compute


@pytest.mark.parametrize("kind", ["mdn", "gdn", "attn"])
def test_causality(kind):
    layer = _make(kind)
    x = _x(2)
    t0 = 21
    x2 = x.at[:, t0].set(jax.random.normal(jax.random.key(9), (2, D)))
    y, y2 = layer(x), layer(x2)
    np.testing.assert_allclose(y[:, :t0], y2[:, :t0], atol=1e-6, rtol=0)
    assert float(jnp.abs(y[:, t0] - y2[:, t0]).max()) > 1e-4
    assert float(jnp.abs(y[:, -1] - y2[:, -1]).max()) > 1e-6


def test_mdn_gates_invariants():
    layer = _make("mdn", min_log_mu=-2.0)
    x = 5.0 * _x(3)  # large pre-activations to exercise the gate extremes
    g = layer.gates(x)
    alpha, beta = jnp.exp(g.log_alpha), g.beta
    assert g.log_alpha.shape == (2, 40, 4) and g.log_alpha.dtype == jnp.float32
    assert bool(jnp.all(alpha + beta <= 1 + 1e-6))
    assert bool(jnp.all(alpha * beta * g.eta <= g.eta / 4 + 1e-6))
    assert bool(jnp.all(g.log_mu >= -2.0)) and bool(jnp.all(g.log_mu <= 0))
    assert bool(jnp.all((g.eta > 0) & (g.eta < 2)))


def test_mdn_mu_zero_equals_gdn_mixer():
    """MDN with mu forced to 0 (Mu_log huge, no clamp) == the GDN mixer fed the same gates.

    The gate maps differ by design (MDN's sin^2/cos^2 constraint and eta), so the GDN mixer receives
    MDN's (log_alpha, beta * eta); everything else (projections, grouped heads, convs, operator, norm,
    output) is the GDN mixer's own code path through `gated_delta_rule`.
    """
    mdn = _make("mdn", min_log_mu=None, use_output_correction=False)
    mdn.Mu_log[...] = jnp.full_like(mdn.Mu_log[...], 200.0)  # exp(200) = inf in f32 -> log_mu = -inf
    gdn = _make("gdn", seed=7)
    for name in ("q_proj", "k_proj", "v_proj", "a_proj", "b_proj", "g_proj", "o_proj", "q_conv1d", "k_conv1d",
                 "v_conv1d", "o_norm"):
        nnx.update(getattr(gdn, name), nnx.state(getattr(mdn, name)))
    gdn.o_norm.activation = "sigmoid"
    x = _x(4)
    g = mdn.gates(x)
    assert bool(jnp.all(g.log_mu == -jnp.inf))

    class _Fed(GatedDeltaNet):
        def gates(self, x):
            return g.log_alpha, g.beta * g.eta

    gdn.__class__ = _Fed
    np.testing.assert_allclose(mdn(x), gdn(x), atol=2e-6, rtol=1e-5)
    # and the comparison is not vacuous: momentum on changes the output
    mdn.Mu_log[...] = jnp.zeros_like(mdn.Mu_log[...])
    assert float(jnp.abs(mdn(x) - gdn(x)).max()) > 1e-4


def test_no_decay_params_and_init():
    layer = _make("mdn")
    nd = nnx.to_flat_state(nnx.state(layer, NoDecayParam))
    assert sorted(str(p[-1]) for p, _ in nd) == sorted(["A_log", "Mu_log", "dt_bias", "mu_bias", "log_factor", "D_log"])
    for _, v in nd:
        assert v[...].shape == (4,)  # sized [HV] (spec 5.2 note)
    np.testing.assert_array_equal(layer.dt_bias[...], layer.mu_bias[...])
    dt = jax.nn.softplus(layer.dt_bias[...])
    assert bool(jnp.all((dt >= 1e-4 - 1e-9) & (dt <= 0.1 + 1e-6)))
    assert bool(jnp.all(jnp.exp(layer.A_log[...]) <= 16)) and bool(jnp.all(jnp.exp(layer.log_factor[...]) <= 4))
    mask = dict(nnx.to_flat_state(no_weight_decay_mask(layer)))
    assert mask[("A_log",)] is False and mask[("q_proj", "kernel")] is True and mask[("o_norm", "weight")] is False
    w = layer.q_proj.kernel[...]
    assert abs(float(jnp.std(w)) - 0.02) < 0.004


@pytest.mark.parametrize("kind", ["mdn", "gdn", "attn"])
def test_every_param_has_logical_axes(kind):
    layer = _make(kind)
    for path, v in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
        axes = v.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == v[...].ndim, path
        assert all(a is None or a in AXES for a in axes), (path, axes)
