"""The Pallas path's q, k preprocessing (`mdn_jax.pallas.prep`): values and VJP (kernel and jnp fallback) against
XLA's autodiff of the op's jnp preprocessing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdn_jax.ops.api import l2norm
from mdn_jax.pallas import prep

ON_GPU = jax.default_backend() == "gpu"


def _reference(q, k, log_alpha, eta, scale):
    """The op's jnp preprocessing (`ops.api.momentum_delta_rule` on the other paths), float32 math."""
    f32 = jnp.float32
    qh, kh = l2norm(q.astype(f32)), l2norm(k.astype(f32))
    return scale * qh, eta[..., None] * kh, jnp.exp(log_alpha)[..., None] * kh


def _inputs(seed, B, T, H, K, dtype, resets=True):
    keys = jax.random.split(jax.random.PRNGKey(seed), 7)
    q = jax.random.normal(keys[0], (B, T, H, K), jnp.float32).astype(dtype)
    k = jax.random.normal(keys[1], (B, T, H, K), jnp.float32).astype(dtype)
    log_alpha = jax.nn.log_sigmoid(jax.random.normal(keys[2], (B, T, H)))
    if resets:  # document starts: alpha = exp(-inf) = 0
        log_alpha = jnp.where(jax.random.uniform(keys[3], (B, T, H)) < 0.1, -jnp.inf, log_alpha)
    eta = jax.random.uniform(keys[4], (B, T, H), minval=0.0, maxval=2.0)
    cot = tuple(jax.random.normal(kk, (B, T, H, K), jnp.float32).astype(dtype) for kk in keys[4:7])
    return (q, k, log_alpha, eta), cot


def _vjps(args, cot, scale, interpret):
    ours_out, ours_vjp = jax.vjp(lambda *a: prep.prepare_qkp(*a, scale, interpret), *args)
    ref_out, ref_vjp = jax.vjp(lambda *a: _reference(*a, scale), *args)
    ref_cot = tuple(c.astype(jnp.float32) for c in cot)
    return ours_out, ours_vjp(cot), ref_out, ref_vjp(ref_cot)


def _assert_close(ours, ref, tol, what):
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.isfinite(a).all(), f"{what}[{i}]: not finite"
        err = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
        assert err < tol, f"{what}[{i}]: relative error {err:.2e}"


@pytest.mark.parametrize("B,T,H,K,fwd_kernel,bwd_kernel", [
    (2, 64, 3, 128, True, True),    # R = 384 rows: the kernels, 12 programs of 32 rows
    (1, 50, 2, 64, True, True),     # R = 100: not a multiple of the row block, the jnp maps
    (1, 32, 2, 100, True, True),    # K = 100: not a power of two, the jnp maps
    (2, 64, 1, 64, False, True),    # MDN_PREP_FWD_KERNEL=0: XLA's forward, the backward kernel
    (2, 64, 1, 64, True, False)])   # MDN_PREP_KERNEL=0: the forward kernel, the jnp VJP
def test_interpret_prep_matches_autodiff(monkeypatch, B, T, H, K, fwd_kernel, bwd_kernel):
    monkeypatch.setenv("MDN_PREP_FWD_KERNEL", "1" if fwd_kernel else "0")
    monkeypatch.setenv("MDN_PREP_KERNEL", "1" if bwd_kernel else "0")
    args, cot = _inputs(0, B, T, H, K, jnp.float32)
    ours_out, ours_g, ref_out, ref_g = _vjps(args, cot, K ** -0.5, interpret=True)
    _assert_close(ours_out, ref_out, 1e-6, "outputs")
    _assert_close(ours_g, ref_g, 1e-5, "cotangents")


def test_prep_kernels_are_called_where_they_fit(monkeypatch):
    """Both Pallas kernels (not the jnp fallbacks) run for R a multiple of the row block and K a power of two, and
    neither for R not a multiple."""
    calls = []
    inner = prep.common.call
    monkeypatch.setattr(prep.common, "call",
                        lambda kernel, *a, **k: calls.append(kernel.func) or inner(kernel, *a, **k))
    args, cot = _inputs(1, 1, 64, 2, 64, jnp.float32)
    _vjps(args, cot, 0.125, interpret=True)
    assert calls == [prep._fwd_kernel, prep._bwd_kernel]
    calls.clear()
    args, cot = _inputs(1, 1, 50, 2, 64, jnp.float32)
    _vjps(args, cot, 0.125, interpret=True)
    assert calls == []


@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 1e-2), (jnp.float32, 1e-5)])
def test_gpu_prep_matches_autodiff(dtype, tol):
    args, cot = _inputs(2, 2, 512, 6, 128, dtype)
    ours_out, ours_g, ref_out, ref_g = jax.jit(lambda a, c: _vjps(a, c, 128 ** -0.5, interpret=False))(args, cot)
    _assert_close(ours_out, ref_out, tol, "outputs")
    _assert_close(ours_g, ref_g, tol, "cotangents")
