"""Gradients (spec 7 case 5): 'xla' vs 'scan' (autodiff of (R1)-(R4)) for every input, numerical checks of 'scan',
the mu = 0 limit (finite, equal to Gated DeltaNet), and gated_delta_rule vs an independent GDN scan."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, cast, make_inputs
from jax.test_util import check_grads

from mdn_jax.ops import gated_delta_rule, momentum_delta_rule

GRAD_TOL = 1e-8
NAMES = ("q", "k", "v", "p", "log_alpha", "log_mu", "beta", "eta", "initial_state")


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size", "p_times_alpha"))
def _grad(x, w, cu_seqlens, segment_ids, *, impl, chunk_size, p_times_alpha):
    """Gradient of a random linear functional of (o, S_T, M_T) w.r.t. every float input in the dict x."""

    def loss(x):
        o, (S, M) = momentum_delta_rule(**x, output_final_state=True, cu_seqlens=cu_seqlens,
                                        segment_ids=segment_ids, chunk_size=chunk_size, implementation=impl,
                                        p_times_alpha=p_times_alpha)
        return jnp.sum(o * w[0]) + jnp.sum(S * w[1]) + jnp.sum(M * w[2])

    return jax.grad(loss)(x)


def _weights(rng, x, N):
    B, T, HV, V = x["v"].shape
    K = x["q"].shape[-1]
    return tuple(jnp.asarray(rng.standard_normal(s)) for s in ((B, T, HV, V), (N, HV, K, V), (N, HV, K, V)))


def _compare(g_xla, g_scan, what):
    for name in NAMES:
        a, b = g_xla[name], g_scan[name]
        if a is None:
            assert b is None
            continue
        for i, (u, v) in enumerate(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)):
            assert np.max(np.abs(np.asarray(v))) > 0, f"{what} d{name}[{i}] is identically zero"
            assert_close(u, v, GRAD_TOL, f"{what} d{name}[{i}] xla vs scan")


GRAD_CASES = {
    "T40-C16-grouped-pA": dict(T=40, C=16, H=1, HV=2, with_p=True, pta=True),
    "T33-C32-pNone-plain": dict(T=33, C=32, H=2, HV=2, with_p=False, pta=False),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_grads_xla_vs_scan(name, rng, x64):
    """Every input's gradient, float64, nerr <= 1e-8, for three gate regimes (same compile)."""
    c = GRAD_CASES[name]
    for regime in ("test", "wide", "layer"):
        x = make_inputs(rng, B=2, T=c["T"], H=c["H"], HV=c["HV"], K=8, V=8, regime=regime, with_p=c["with_p"],
                        init=True)
        xj = cast(x, jnp.float64)
        w = _weights(rng, x, 2)
        kw = dict(chunk_size=c["C"], p_times_alpha=c["pta"])
        g_xla = _grad(xj, w, None, None, impl="xla", **kw)
        g_scan = _grad(xj, w, None, None, impl="scan", **kw)
        _compare(g_xla, g_scan, regime)


def test_grads_cu_seqlens_xla_vs_scan(rng, x64):
    """Gradients with cu_seqlens (per-sequence initial and final states): xla == scan."""
    cu = jnp.asarray([0, 13, 14, 50], jnp.int32)
    x = make_inputs(rng, B=1, T=50, H=1, HV=2, K=8, V=8, init=True, N=3)
    xj, w = cast(x, jnp.float64), _weights(rng, x, 3)
    g = {impl: _grad(xj, w, cu, None, impl=impl, chunk_size=16, p_times_alpha=True) for impl in ("xla", "scan")}
    _compare(g["xla"], g["scan"], "cu_seqlens")


def test_grads_segment_ids_xla_vs_scan(rng, x64):
    """Gradients with segment_ids (resets through -inf gates inside chunks): finite, xla == scan."""
    seg = np.zeros((2, 40), np.int32)
    seg[0, 10:], seg[0, 30:], seg[1, 17:] = 1, 2, 1
    x = make_inputs(rng, B=2, T=40, H=1, HV=2, K=8, V=8, init=True)
    xj, w = cast(x, jnp.float64), _weights(rng, x, 2)
    seg = jnp.asarray(seg)
    g = {impl: _grad(xj, w, None, seg, impl=impl, chunk_size=16, p_times_alpha=True) for impl in ("xla", "scan")}
    _compare(g["xla"], g["scan"], "segment_ids")


@pytest.mark.parametrize("p_times_alpha", [True, False])
def test_check_grads_scan(p_times_alpha, rng, x64):
    """Numerical (finite-difference) check of reverse-mode gradients of 'scan', all ten inputs."""
    x = cast(make_inputs(rng, B=1, T=5, H=1, HV=2, K=4, V=3, regime="wide", init=True), jnp.float64)

    @jax.jit
    def f(q, k, v, p, log_alpha, log_mu, beta, eta, S0, M0):
        o, (S, M) = momentum_delta_rule(q, k, v, log_alpha, log_mu, beta, eta, p, initial_state=(S0, M0),
                                        output_final_state=True, chunk_size=16, implementation="scan",
                                        p_times_alpha=p_times_alpha)
        return o, S, M

    args = [x[n] for n in NAMES[:-1]] + list(x["initial_state"])
    check_grads(f, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------
# mu = 0: Gated DeltaNet
# ---------------------------------------------------------------------------------------------------
def _l2(x):
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-6)


def gdn_scan(q, k, v, log_alpha, b, S0):
    """Independent GDN recurrence in jnp (spec 2.3), float64: S_t = alpha_t (I - b_t k k^T) S_{t-1} + b_t k v^T."""
    HV, K = v.shape[2], q.shape[-1]
    group = HV // q.shape[2]
    q, k = (jnp.repeat(_l2(a), group, axis=2) for a in (q, k))

    def step(S, xs):
        qt, kt, vt, lat, bt = xs
        S = jnp.exp(lat)[..., None, None] * S
        S = S + bt[..., None, None] * kt[..., :, None] * (vt - jnp.einsum("bhk,bhkv->bhv", kt, S))[..., None, :]
        return S, K ** -0.5 * jnp.einsum("bhk,bhkv->bhv", qt, S)

    S, o = jax.lax.scan(step, S0, tuple(jnp.moveaxis(a, 1, 0) for a in (q, k, v, log_alpha, b)))
    return jnp.moveaxis(o, 0, 1), S


@pytest.mark.parametrize("impl", ["scan", "xla"])
def test_mu_zero_grads_equal_gdn(impl, rng, x64):
    """log_mu = -inf: no NaN anywhere; d log_mu = dM0 = 0; the other gradients equal those of GDN with b = beta eta."""
    x = make_inputs(rng, B=2, T=37, H=1, HV=2, K=8, V=8, regime="wide", with_p=False, init=True)
    x["log_mu"] = np.full_like(x["log_mu"], -np.inf)
    xj = cast(x, jnp.float64)
    w_o, w_s = (jnp.asarray(rng.standard_normal(s)) for s in ((2, 37, 2, 8), (2, 2, 8, 8)))

    def mdn_loss(xj):
        o, (S, _) = momentum_delta_rule(**xj, output_final_state=True, chunk_size=16, implementation=impl)
        return jnp.sum(o * w_o) + jnp.sum(S * w_s)

    def gdn_loss(q, k, v, log_alpha, beta, eta, S0):
        o, S = gdn_scan(q, k, v, log_alpha, beta * eta, S0)
        return jnp.sum(o * w_o) + jnp.sum(S * w_s)

    val, g = jax.jit(jax.value_and_grad(mdn_loss))(xj)
    args = [xj[n] for n in ("q", "k", "v", "log_alpha", "beta", "eta")] + [xj["initial_state"][0]]
    val_ref, g_ref = jax.jit(jax.value_and_grad(gdn_loss, argnums=tuple(range(7))))(*args)
    assert abs(float(val) - float(val_ref)) <= 1e-10 * abs(float(val_ref))
    for leaf in jax.tree.leaves(g):
        assert np.all(np.isfinite(np.asarray(leaf)))
    np.testing.assert_array_equal(np.asarray(g["log_mu"]), 0.0)
    np.testing.assert_array_equal(np.asarray(g["initial_state"][1]), 0.0)
    for name, ref in zip(("q", "k", "v", "log_alpha", "beta", "eta", "S0"), g_ref, strict=True):
        got = g["initial_state"][0] if name == "S0" else g[name]
        assert_close(got, ref, GRAD_TOL, f"d{name}")


def test_gated_delta_rule_grads_vs_gdn_scan(rng, x64):
    """gated_delta_rule (default CPU path 'xla') forward and every gradient vs the independent GDN scan.
    ('scan' with mu = 0 is covered by test_mu_zero_grads_equal_gdn.)"""
    impl = "xla"
    B, T, H, HV, K, V = 1, 30, 2, 2, 8, 8
    x = make_inputs(rng, B=B, T=T, H=H, HV=HV, K=K, V=V, regime="test", with_p=False, init=True)
    args = [jnp.asarray(x[n]) for n in ("q", "k", "v", "log_alpha", "beta")] + [jnp.asarray(x["initial_state"][0])]
    w_o, w_s = (jnp.asarray(rng.standard_normal(s)) for s in ((B, T, HV, V), (B, HV, K, V)))

    def loss(fn):
        def f(*a):
            o, S = fn(*a)
            return jnp.sum(o * w_o) + jnp.sum(S * w_s)
        return jax.jit(jax.value_and_grad(f, argnums=tuple(range(6))))

    gdr = lambda q, k, v, la, be, S0: gated_delta_rule(q, k, v, la, be, initial_state=S0, output_final_state=True,
                                                       chunk_size=16, implementation=impl)
    val, g = loss(gdr)(*args)
    val_ref, g_ref = loss(gdn_scan)(*args)
    assert abs(float(val) - float(val_ref)) <= 1e-10 * abs(float(val_ref))
    for name, a, b in zip(("q", "k", "v", "log_alpha", "beta", "S0"), g, g_ref, strict=True):
        assert_close(a, b, GRAD_TOL, f"d{name}")
