"""Decode: `momentum_delta_rule_step` repeated token by token == the chunked op (outputs and final states)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, cast, make_inputs, run_op

from mdn_jax.ops import momentum_delta_rule_step

_step = jax.jit(momentum_delta_rule_step, static_argnames=("scale", "p_times_alpha"))


@pytest.mark.parametrize("with_p,p_times_alpha", [(True, True), (False, False)], ids=["pA", "pNone-plain"])
def test_step_matches_chunked(with_p, p_times_alpha, rng, x64):
    B, T, H, HV, K, V = 2, 21, 1, 2, 8, 8
    x = make_inputs(rng, B=B, T=T, H=H, HV=HV, K=K, V=V, regime="wide", with_p=with_p, init=True)
    o_ref, S_ref, M_ref = run_op(x, jnp.float64, "xla", chunk_size=16, scale=0.3, p_times_alpha=p_times_alpha)
    xj = cast(x, jnp.float64)
    state = xj["initial_state"]
    outs = []
    for t in range(T):
        tok = {n: (None if xj[n] is None else xj[n][:, t]) for n in ("q", "k", "v", "log_alpha", "log_mu", "beta",
                                                                      "eta", "p")}
        o, state = _step(**tok, state=state, scale=0.3, p_times_alpha=p_times_alpha)
        assert o.shape == (B, HV, V)
        outs.append(np.asarray(o))
    assert_close(np.stack(outs, axis=1), o_ref, 1e-10, "o")
    assert_close(state[0], S_ref, 1e-10, "S")
    assert_close(state[1], M_ref, 1e-10, "M")


def test_step_float32_state_dtype(rng):
    """float32: states stay float32; one step equals the op at T = 1."""
    x = make_inputs(rng, B=1, T=1, H=2, K=8, V=8, init=True)
    o_ref, S_ref, M_ref = run_op(x, jnp.float32, "scan", chunk_size=16)
    xj = cast(x, jnp.float32)
    tok = {n: xj[n][:, 0] for n in ("q", "k", "v", "log_alpha", "log_mu", "beta", "eta", "p")}
    o, (S, M) = _step(**tok, state=xj["initial_state"])
    assert S.dtype == jnp.float32 and M.dtype == jnp.float32
    assert_close(o, o_ref[:, 0], 1e-5, "o")
    assert_close(S, S_ref, 1e-5, "S")
    assert_close(M, M_ref, 1e-5, "M")


def test_step_bad_input(rng):
    x = cast(make_inputs(rng, B=1, T=1, H=2, K=8, V=8, init=True), jnp.float32)
    tok = {n: x[n][:, 0] for n in ("q", "k", "v", "log_alpha", "log_mu", "beta", "eta")}
    with pytest.raises(ValueError, match="q must have rank 3"):
        momentum_delta_rule_step(**dict(tok, q=x["q"]), state=x["initial_state"])
    with pytest.raises(ValueError, match="beta must have shape"):
        momentum_delta_rule_step(**dict(tok, beta=tok["beta"][:, :1]), state=x["initial_state"])
    with pytest.raises(TypeError, match="state must be a pair"):
        momentum_delta_rule_step(**tok, state=x["initial_state"][0])
    with pytest.raises(ValueError, match="state arrays must have shape"):
        momentum_delta_rule_step(**tok, state=tuple(s[..., :4] for s in x["initial_state"]))
