"""Shared helpers for the operator tests: random inputs (spec 7 gate regimes), error metric, x64, jitted ops.

Seeds: every test draws from its own generator, seeded from its node id and a base seed
(env MDN_TEST_SEED, default 20260501; shown in the pytest header), so parametrised cases never share inputs
and a failure reproduces with the same base seed.
"""

from __future__ import annotations

import functools
import math
import os
import zlib

if "PYTEST_XDIST_WORKER" in os.environ:  # several test processes on one GPU: none may take 75% of its memory
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mdn_jax.ops import momentum_delta_rule  # noqa: E402

BASE_SEED = int(os.environ.get("MDN_TEST_SEED", "20260501"))


def pytest_report_header(config):
    return f"mdn-jax tests: MDN_TEST_SEED={BASE_SEED}, jax {jax.__version__}, backend {jax.default_backend()}"


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A fresh generator per test (and per parameter set)."""
    return np.random.default_rng([BASE_SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture
def x64():
    """float64 enabled for the duration of one test only (a context manager: it cannot leak)."""
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------------------------------
# error metric
# ---------------------------------------------------------------------------------------------------
def nerr(x, ref) -> float:
    """max|x - ref| / max|ref| (spec 7). NaN or inf anywhere in x or ref gives inf, so a check fails."""
    x = np.asarray(x, np.float64)
    ref = np.asarray(ref, np.float64)
    assert x.shape == ref.shape, f"shape {x.shape} != reference shape {ref.shape}"
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(ref))):
        return math.inf
    scale = np.max(np.abs(ref)) if ref.size else 0.0
    err = np.max(np.abs(x - ref)) if ref.size else 0.0
    return float(err / scale) if scale > 0 else float(err)


def assert_close(x, ref, tol: float, what: str = "") -> None:
    e = nerr(x, ref)
    assert e <= tol, f"{what}: nerr {e:.3e} > tol {tol:.1e}"


# ---------------------------------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------------------------------
def logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_gates(rng: np.random.Generator, shape, regime: str = "test"):
    """(log_alpha, log_mu, beta, eta), float64 arrays of `shape`, in one of the spec 7 item 1 regimes.

    'test': log alpha, log mu = logsigmoid(U)/g, g in {0.8, 1, 2, 4, 8}; beta = 0.5 sigmoid(U); eta in (0, 2).
    'wide': log alpha = -3U^2, log mu = -2U, beta in (0, 1), eta in (0, 2).
    'extreme': extreme-but-valid: each log gate near 0 (> -1e-4) or near -20, beta near 0 or near 1.
    'layer': the layer gate map (spec 5.3) at initialisation scale.
    """
    if regime == "test":
        g = rng.choice([0.8, 1.0, 2.0, 4.0, 8.0])
        la = logsigmoid(rng.random(shape)) / g
        lm = logsigmoid(rng.random(shape)) / g
        beta = 0.5 * _sigmoid(rng.random(shape))
        eta = 2.0 * rng.uniform(1e-3, 1.0, shape)
    elif regime == "wide":
        la = -3.0 * rng.random(shape) ** 2
        lm = -2.0 * rng.random(shape)
        beta = rng.uniform(1e-3, 1.0, shape)
        eta = 2.0 * rng.uniform(1e-3, 1.0, shape)
    elif regime == "extreme":
        def near_0_or_m20():
            near0 = -1e-4 * rng.random(shape)
            near20 = -20.0 + 0.5 * rng.random(shape)
            return np.where(rng.random(shape) < 0.5, near0, near20)

        la = near_0_or_m20()
        lm = near_0_or_m20()
        beta = np.where(rng.random(shape) < 0.5, 1e-6 + 1e-4 * rng.random(shape), 1.0 - 1e-4 * rng.random(shape))
        eta = 2.0 * rng.uniform(1e-3, 1.0, shape)
    elif regime == "layer":
        H = shape[-1]
        A = rng.uniform(0, 16, H)
        Mu = rng.uniform(0, 16, H)
        dt = np.exp(rng.uniform(math.log(1e-3), math.log(1e-1), H)).clip(min=1e-4)
        dt_bias = dt + np.log(-np.expm1(-dt))
        factor = rng.uniform(0, 4, H)
        a, b, m, e = (rng.standard_normal(shape) for _ in range(4))
        lm = np.maximum(-Mu * np.logaddexp(0.0, m + dt_bias), -2.0)
        la = -A * np.logaddexp(0.0, a + dt_bias)
        eta = np.tanh(e) + 1.0
        theta = np.arctan(eta * factor)
        beta = np.sin(theta) ** 2 * _sigmoid(b)
        la = np.log(np.cos(theta) ** 2) + la
    else:
        raise ValueError(regime)
    return la, lm, beta, eta


def make_inputs(rng: np.random.Generator, B=2, T=37, H=2, HV=None, K=8, V=16, *, regime="test", with_p=True,
                init=False, N=None) -> dict:
    """Random float64 NumPy inputs of `momentum_delta_rule`, as a dict of its argument names.

    q, k, p, v ~ N(0, 1); gates by `make_gates`; initial_state = (S0, M0) ~ N(0, 1) [N, HV, K, V] if `init`.
    """
    HV = H if HV is None else HV
    N = B if N is None else N
    la, lm, beta, eta = make_gates(rng, (B, T, HV), regime)
    x = dict(q=rng.standard_normal((B, T, H, K)), k=rng.standard_normal((B, T, H, K)),
             v=rng.standard_normal((B, T, HV, V)), log_alpha=la, log_mu=lm, beta=beta, eta=eta,
             p=rng.standard_normal((B, T, H, K)) if with_p else None)
    x["initial_state"] = ((rng.standard_normal((N, HV, K, V)), rng.standard_normal((N, HV, K, V)))
                          if init else None)
    return x


def cast(inputs: dict, dtype) -> dict:
    """NumPy inputs -> jnp arrays of `dtype` (None and int arrays kept)."""
    def f(a):
        if a is None:
            return None
        if isinstance(a, tuple):
            return tuple(f(b) for b in a)
        a = np.asarray(a)
        return jnp.asarray(a, dtype if np.issubdtype(a.dtype, np.floating) else a.dtype)
    return {name: f(a) for name, a in inputs.items()}


# ---------------------------------------------------------------------------------------------------
# jitted operator (static options hashed; one compile per shape and option set)
# ---------------------------------------------------------------------------------------------------
_STATIC = ("scale", "output_final_state", "l2norm_qk", "p_times_alpha", "chunk_size", "implementation")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _op(q, k, v, log_alpha, log_mu, beta, eta, p, initial_state, cu_seqlens, segment_ids, **static):
    return momentum_delta_rule(q, k, v, log_alpha, log_mu, beta, eta, p, initial_state=initial_state,
                               cu_seqlens=cu_seqlens, segment_ids=segment_ids, **static)


def run_op(inputs: dict, dtype, implementation: str, *, chunk_size=64, cu_seqlens=None, segment_ids=None,
           **static):
    """Runs the jitted op on `inputs` (NumPy, see make_inputs) cast to `dtype`; returns NumPy (o, S, M)."""
    x = cast(inputs, dtype)
    cu = None if cu_seqlens is None else jnp.asarray(cu_seqlens, jnp.int32)
    seg = None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32)
    o, (S, M) = _op(x["q"], x["k"], x["v"], x["log_alpha"], x["log_mu"], x["beta"], x["eta"], x["p"],
                    x["initial_state"], cu, seg, output_final_state=True, chunk_size=chunk_size,
                    implementation=implementation, **static)
    return np.asarray(o), np.asarray(S), np.asarray(M)

