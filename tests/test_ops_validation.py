"""Bad input (validation.py): the right exception type, and a message that names the offending argument."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cast, make_inputs

from mdn_jax.ops import momentum_delta_rule

B, T, H, HV, K, V = 2, 10, 2, 4, 8, 6


@pytest.fixture
def x(rng):
    return cast(make_inputs(rng, B=B, T=T, H=H, HV=HV, K=K, V=V, init=True), jnp.float32)


def _call(x, **over):
    args = dict(x)
    kw = {n: over.pop(n) for n in list(over) if n not in args}
    args.update(over)
    return momentum_delta_rule(**args, **kw)


def test_valid_inputs_pass(x):
    o, (S, M) = _call(x, output_final_state=True, chunk_size=16, implementation="scan")
    assert o.shape == (B, T, HV, V) and S.shape == M.shape == (B, HV, K, V)


@pytest.mark.parametrize("name", ["q", "k", "v", "p", "log_alpha", "log_mu", "beta", "eta"])
def test_non_float_input(x, name):
    with pytest.raises(TypeError, match=rf"^{name} must be a floating-point array.*int32"):
        _call(x, **{name: x[name].astype(jnp.int32)})


def test_non_array_input(x):
    with pytest.raises(TypeError, match="^q must be a floating-point array.*list"):
        _call(x, q=np.asarray(x["q"]).tolist())


@pytest.mark.parametrize("name,shape", [
    ("q", (B, T, H * K)), ("k", (B, T, H, K, 1)), ("v", (B, T, HV * V)),
    ("log_alpha", (B, T)), ("log_mu", (B, T, HV, 1)), ("beta", (B * T * HV,)), ("eta", (B, T, HV, 1)),
])
def test_wrong_rank(x, name, shape):
    with pytest.raises(ValueError, match=rf"^{name} must have rank \d with layout \["):
        _call(x, **{name: jnp.zeros(shape, jnp.float32) + 0.5})


@pytest.mark.parametrize("name,shape,msg", [
    ("k", (B, T + 1, H, K), r"^k must have the shape of q \(2, 10, 2, 8\)"),
    ("k", (B, T, H, K + 1), r"^k must have the shape of q"),  # K mismatch q / k
    ("k", (B, T, H + 1, K), r"^k must have the shape of q"),
    ("p", (B, T, H, K - 1), r"^p must have the shape of k"),  # K mismatch p / k
    ("p", (1, T, H, K), r"^p must have the shape of k"),
    ("v", (B + 1, T, HV, V), r"^v must have batch and time \(2, 10\)"),
    ("v", (B, T - 1, HV, V), r"^v must have batch and time"),
    ("v", (B, T, 3, V), r"value heads \(v.shape\[2\] = 3\).*multiple.*\(q.shape\[2\] = 2\)"),
    ("log_alpha", (B, T, H), r"^log_alpha must have shape \[B, T, HV\] = \(2, 10, 4\)"),  # H gates, HV = 2H
    ("log_mu", (B, T, 1), r"^log_mu must have shape"),  # never a silent broadcast
    ("beta", (1, T, HV), r"^beta must have shape"),
    ("eta", (B, T + 1, HV), r"^eta must have shape"),
])
def test_mismatched_shapes(x, name, shape, msg):
    with pytest.raises(ValueError, match=msg):
        _call(x, **{name: jnp.ones(shape, jnp.float32)})


@pytest.mark.parametrize("chunk_size", [0, 8, 48, 128, "64"])
def test_unsupported_chunk_size(x, chunk_size):
    with pytest.raises(ValueError, match=r"^chunk_size must be one of \(16, 32, 64\)"):
        _call(x, chunk_size=chunk_size)


def test_bad_implementation(x):
    with pytest.raises(ValueError, match=r"^implementation must be one of .*'cuda'"):
        _call(x, implementation="cuda")


def test_cu_seqlens_and_segment_ids_together(x):
    x1 = {n: (a[:1] if n != "initial_state" else None) for n, a in x.items()}
    with pytest.raises(ValueError, match="at most one of cu_seqlens and segment_ids"):
        _call(x1, cu_seqlens=jnp.asarray([0, T]), segment_ids=jnp.zeros((1, T), jnp.int32))


@pytest.mark.parametrize("cu,msg", [
    ([0, 4, 4, T], "strictly increasing"),
    ([0, 6, 4, T], "strictly increasing"),
    ([0, 4, T - 1], r"start at 0 and end at T = 10"),
    ([0, 4, T + 3], r"start at 0 and end at T = 10"),
    ([1, 4, T], r"start at 0 and end at T = 10"),
    ([T], r"1-D array \[N \+ 1\] with N >= 1"),
    ([[0, T]], r"1-D array"),
])
def test_bad_cu_seqlens(x, cu, msg):
    x1 = {n: (a[:1] if n != "initial_state" else None) for n, a in x.items()}
    with pytest.raises(ValueError, match=rf"^cu_seqlens must .*{msg}"):
        _call(x1, cu_seqlens=jnp.asarray(cu, jnp.int32))


def test_cu_seqlens_not_integer(x):
    x1 = {n: (a[:1] if n != "initial_state" else None) for n, a in x.items()}
    with pytest.raises(TypeError, match="^cu_seqlens must be an integer array"):
        _call(x1, cu_seqlens=jnp.asarray([0.0, 4.0, T]))


def test_cu_seqlens_needs_batch_one(x):
    with pytest.raises(ValueError, match=r"cu_seqlens.*batch must be 1, got B = 2"):
        _call(dict(x, initial_state=None), cu_seqlens=jnp.asarray([0, 4, T]))


def test_bad_segment_ids(x):
    with pytest.raises(ValueError, match=r"^segment_ids must have shape \[B, T\] = \(2, 10\)"):
        _call(x, segment_ids=jnp.zeros((B, T + 1), jnp.int32))
    with pytest.raises(ValueError, match=r"^segment_ids must have shape"):
        _call(x, segment_ids=jnp.zeros((B * T,), jnp.int32))
    with pytest.raises(TypeError, match="^segment_ids must be an integer array"):
        _call(x, segment_ids=jnp.zeros((B, T), jnp.float32))


def test_bad_initial_state(x):
    S0, M0 = x["initial_state"]
    with pytest.raises(TypeError, match=r"^initial_state must be a pair \(S0, M0\)"):
        _call(x, initial_state=S0)
    with pytest.raises(TypeError, match=r"^initial_state must be a pair"):
        _call(x, initial_state=(S0, M0, M0))
    with pytest.raises(ValueError, match=r"^initial_state\[0\] \(S0\) must have shape \[N, HV, K, V\] = "
                                         r"\(2, 4, 8, 6\)"):
        _call(x, initial_state=(S0[:1], M0))
    with pytest.raises(ValueError, match=r"^initial_state\[1\] \(M0\) must have shape"):
        _call(x, initial_state=(S0, M0[..., :V - 1]))
    with pytest.raises(ValueError, match=r"^initial_state\[1\] \(M0\) must have shape"):
        _call(x, initial_state=(S0, M0[0]))
    with pytest.raises(TypeError, match=r"^initial_state\[0\] \(S0\) must be a floating-point array"):
        _call(x, initial_state=(S0.astype(jnp.int32), M0))
    # with cu_seqlens, N is the number of sequences, not B
    x1 = {n: (a[:1] if n != "initial_state" else None) for n, a in x.items()}
    with pytest.raises(ValueError, match=r"^initial_state\[0\] \(S0\) must have shape \[N, HV, K, V\] = \(3, "):
        _call(x1, cu_seqlens=jnp.asarray([0, 3, 4, T]), initial_state=(S0[:1], M0[:1]))
