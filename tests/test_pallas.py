"""Pallas kernels vs the 'xla' and 'scan' references.

On CPU the kernels run in Pallas interpret mode (the same kernel code); on a GPU (`-m gpu`) they are
compiled through Triton and compared in bf16 and fp32 with the fp32 references.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mdn_jax.ops import momentum_delta_rule, momentum_delta_rule_step
from mdn_jax.ops.chunked import prepare_chunks
from mdn_jax.ops.core import CoreInputs
from mdn_jax.pallas import common, core, mosaic_grads, mosaic_pass, seq_split, start_response, tuning
from mdn_jax.pallas.chunk_grads import pass_cotangents, pass_cotangents_xla
from mdn_jax.pallas.chunk_local import VECS, chunk_local
from mdn_jax.pallas.chunk_local_bwd import local_stage_vjp_kernel
from mdn_jax.pallas.gate_vjp import gate_vjp
from mdn_jax.pallas.local_vjp import coefficients_with_vjp, local_stage_vjp, to_rows

ON_GPU = jax.default_backend() == "gpu"
gpu = pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU")
GRAD_NAMES = ("q", "k", "v", "log_alpha", "log_mu", "beta", "eta", "p", "S0", "M0")


@pytest.fixture(autouse=True)
def poison_kernel_outputs(monkeypatch):
    monkeypatch.setattr(common, "POISON_OUTPUTS", True)


def make_inputs(seed, B, T, H, K, V, HV=None, dtype=jnp.float32, gates="random", with_p=False, with_init=True):
    """Fresh random operator inputs (never zeros). gates: 'random' (spec 7 item 6) or ('drift', log_mu)."""
    HV = HV or H
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    q, k, v = f(B, T, H, K), f(B, T, H, K), f(B, T, HV, V)
    p = f(B, T, H, K) if with_p else None
    if gates == "random":
        g = rng.choice([0.8, 1, 2, 4, 8])
        la = jax.nn.log_sigmoid(f(B, T, HV)) / g
        lm = jnp.maximum(jax.nn.log_sigmoid(f(B, T, HV)) / g, -2.0)
    else:
        la = jnp.full((B, T, HV), -0.01)
        lm = jnp.full((B, T, HV), gates[1])
    beta = 0.5 * jax.nn.sigmoid(f(B, T, HV))
    eta = jnp.asarray(rng.uniform(0.0, 2.0, (B, T, HV)), jnp.float32)
    init = (f(B, HV, K, V), f(B, HV, K, V)) if with_init else None
    cast = lambda x: None if x is None else x.astype(dtype)  # noqa: E731
    return dict(q=cast(q), k=cast(k), v=cast(v), log_alpha=la, log_mu=lm, beta=beta, eta=eta, p=cast(p)), init


@functools.cache
def _op(impl, chunk_size, p_times_alpha):
    """The op jitted once per static configuration (array arguments are traced)."""
    def f(inputs, init, cu_seqlens, segment_ids):
        return momentum_delta_rule(**inputs, initial_state=init, output_final_state=True, implementation=impl,
                                   chunk_size=chunk_size, p_times_alpha=p_times_alpha, cu_seqlens=cu_seqlens,
                                   segment_ids=segment_ids)
    return f


def run(impl, inputs, init, chunk_size=64, p_times_alpha=True, cu_seqlens=None, segment_ids=None):
    return jax.jit(_op(impl, chunk_size, p_times_alpha))(inputs, init, cu_seqlens, segment_ids)


def grads(impl, inputs, init, chunk_size=64, seed=0, p_times_alpha=True, cu_seqlens=None, segment_ids=None):
    """Gradients of a random linear functional of (o, S_T, M_T) w.r.t. every input."""
    names = [n for n in ("q", "k", "v", "log_alpha", "log_mu", "beta", "eta", "p") if inputs[n] is not None]
    op = _op(impl, chunk_size, p_times_alpha)
    # only the output shapes are needed here (traced, not compiled: the callers run and check the forward itself)
    o, (S, _) = jax.eval_shape(op, inputs, init, cu_seqlens, segment_ids)
    rng = np.random.default_rng(seed + 1000)
    wo = jnp.asarray(rng.standard_normal(o.shape), jnp.float32)
    ws = jnp.asarray(rng.standard_normal(S.shape), jnp.float32)

    def loss(diff, init):
        o, (S, M) = op({**inputs, **diff}, init, cu_seqlens, segment_ids)
        return (o.astype(jnp.float32) * wo).sum() + (S * ws).sum() - (M * ws).sum()

    diff = {n: inputs[n] for n in names}
    g, g_init = jax.jit(jax.grad(loss, argnums=(0, 1)))(diff, init)
    out = dict(g)
    if init is not None:
        out["S0"], out["M0"] = g_init
    return out


def rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert np.all(np.isfinite(x)), "non-finite values"
    return float(np.linalg.norm(x - ref) / max(np.linalg.norm(ref), 1e-30))


def assert_close(out, ref, tol, what=""):
    o, (S, M) = out
    o_r, (S_r, M_r) = ref
    for name, a, b in (("o", o, o_r), ("S", S, S_r), ("M", M, M_r)):
        err = rel(a, b)
        assert err < tol, f"{what} {name}: rel err {err:.2e} >= {tol}"


def assert_grads_close(g, g_ref, tol, what=""):
    assert set(g) == set(g_ref)
    for name in g:
        err = rel(g[name], g_ref[name])
        assert err < tol, f"{what} d{name}: rel err {err:.2e} >= {tol}"


# ---------------------------------------------------------------- CPU: interpret mode (the same kernels)


@pytest.mark.parametrize("T,K,V", [(1, 32, 32), (130, 32, 32), (64, 64, 32)])  # partial and whole chunks
def test_interpret_forward_and_grads(T, K, V):
    inputs, init = make_inputs(T * 7 + K, B=2, T=T, H=2, K=K, V=V, with_init=T % 2 == 0)
    ref = run("xla", inputs, init)
    assert_close(run("pallas", inputs, init), ref, 1e-4, f"T={T}")
    if T != 1:
        assert_close(ref, run("scan", inputs, init), 1e-4, "xla vs scan")
    assert_grads_close(grads("pallas", inputs, init), grads("xla", inputs, init), 1e-4, f"T={T}")


def test_interpret_bf16_forward_and_grads():
    """bf16 inputs: bf16 operands in the kernels and the chunk-local VJP, float32 cotangents where the op computes
    in float32; compared with the float32 'xla' reference at a bf16 tolerance."""
    inputs, init = make_inputs(5, B=1, T=128, H=2, K=32, V=64, dtype=jnp.bfloat16)
    ref_inputs = {n: (None if x is None else x.astype(jnp.float32)) for n, x in inputs.items()}
    assert_close(run("pallas", inputs, init), run("xla", ref_inputs, init), 2e-2, "bf16")
    g, g_ref = grads("pallas", inputs, init), grads("xla", ref_inputs, init)
    assert all(np.all(np.isfinite(np.asarray(x, np.float32))) for x in g.values())
    assert_grads_close(g, g_ref, 3e-2, "bf16")


def test_interpret_grouped_heads_p_and_odd_dims():
    """HV = 2H, explicit p, p_times_alpha off, K and V not powers of two (padded inside)."""
    inputs, init = make_inputs(3, B=1, T=100, H=1, HV=2, K=24, V=40, with_p=True)
    for pta in (True, False):
        ref = run("scan", inputs, init, chunk_size=32, p_times_alpha=pta)
        assert_close(run("pallas", inputs, init, chunk_size=32, p_times_alpha=pta), ref, 1e-4)
    assert_grads_close(grads("pallas", inputs, init, chunk_size=32), grads("xla", inputs, init, chunk_size=32),
                       1e-4)


def test_interpret_varlen_cu_seqlens_and_segments():
    inputs, _ = make_inputs(5, B=1, T=150, H=2, K=32, V=32)
    cu = jnp.asarray([0, 17, 80, 81, 150], jnp.int32)
    rng = np.random.default_rng(9)
    init = tuple(jnp.asarray(rng.standard_normal((4, 2, 32, 32)), jnp.float32) for _ in range(2))
    ref = run("scan", inputs, init, cu_seqlens=cu)
    assert_close(run("pallas", inputs, init, cu_seqlens=cu), ref, 1e-4, "cu_seqlens")
    assert_grads_close(grads("pallas", inputs, init, cu_seqlens=cu), grads("xla", inputs, init, cu_seqlens=cu),
                       1e-4, "cu_seqlens")
    seg = jnp.asarray(np.repeat([0, 1, 2], [40, 70, 40])[None], jnp.int32)
    ref = run("xla", inputs, None, segment_ids=seg)
    assert_close(run("pallas", inputs, None, segment_ids=seg), ref, 1e-4, "segment_ids")


@pytest.mark.parametrize("log_mu", [-0.5, -2.0])
def test_interpret_drifting_gates(log_mu):
    """Spec 7 item 8: log alpha = -0.01 with mu << alpha for a long time; recipe L fails here."""
    inputs, init = make_inputs(11, B=1, T=256, H=2, K=32, V=32, gates=("drift", log_mu))
    ref = run("scan", inputs, init)
    assert_close(run("pallas", inputs, init), ref, 1e-4, f"drift {log_mu}")


def test_interpret_mu_zero_is_finite():
    inputs, init = make_inputs(13, B=1, T=70, H=2, K=32, V=32)
    inputs["log_mu"] = jnp.full_like(inputs["log_mu"], -jnp.inf)
    ref = run("scan", inputs, init)
    assert_close(run("pallas", inputs, init), ref, 1e-4, "mu=0")
    g = grads("pallas", inputs, init)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g.values())


# ---------------------------------------------------------------- chunk-local stage kernels vs its XLA version

LOCAL_NAMES = ("a", "b", "decay", "qb", "attn", "u", "y", "z", "kg", "kr")


def _local_inputs(seed, B, T, H, K, V, gates="random"):
    """Preprocessed inputs of the chunk-local stage (unit-norm keys, eta in (0, 2), p = alpha khat)."""
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    kh = f(B, T, H, K)
    kh = kh / jnp.linalg.norm(kh, axis=-1, keepdims=True)
    la = jax.nn.log_sigmoid(f(B, T, H) + 2.0)
    lm = jnp.maximum(jax.nn.log_sigmoid(f(B, T, H)), -2.0)
    if gates == "mu0":
        lm = jnp.full_like(lm, -jnp.inf)
    elif gates == "reset":  # a segment boundary: alpha = 0 at one step (as segment_ids make it)
        la = la.at[:, T // 3].set(-jnp.inf)
    elif gates == "drift":
        la = jnp.full_like(la, -1e-3)
        lm = jnp.full_like(lm, -0.5)
    kt = kh * jnp.asarray(rng.uniform(0.0, 2.0, (B, T, H, 1)), jnp.float32)
    return (f(B, T, H, K) * K ** -0.5, kt, jnp.exp(la)[..., None] * kh, f(B, T, H, V), la, lm,
            jax.nn.sigmoid(f(B, T, H)))


def _xla_local(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype):
    """The chunk-local quantities by the XLA path (`ops.chunked.prepare_chunks`), in the kernels' layouts
    [B*HV, NC, C, ...]: (a, b, decay) float32 (decay zero-padded to [C]) and (qb, attn, u, y, z, kg, kr) in
    op_dtype."""
    x = CoreInputs(qb, kt, p, v, log_alpha, log_mu, beta, None, None, None, None)
    t = prepare_chunks(x, chunk, operand_dtype=None if op_dtype in (jnp.float32, jnp.float64) else op_dtype)
    B, HV, NC, C, K = t.y.shape
    rows = lambda a: a.reshape((B * HV, NC) + a.shape[3:])  # noqa: E731
    flat = lambda a: rows(a).astype(op_dtype)  # noqa: E731
    decay = jnp.pad(t.decay, [(0, 0)] * 3 + [(0, C - t.decay.shape[-1])]).astype(jnp.float32)
    return (rows(t.a).astype(jnp.float32), rows(t.b).astype(jnp.float32), rows(decay), flat(t.qb), flat(t.attn),
            flat(t.u), flat(t.y), flat(t.z), flat(t.kg), flat(t.kr))


def _wy_from_kernels(local, qb, kt, p, v, chunk):
    """(a, b, decay, qb, attn, u, y, z, kg, kr) as `_xla_local` from `chunk_local`'s outputs: U = T V,
    Y = T diag(d) P, Z = T diag(e) P, Kg = diag(Gamma_L) Kt, Kr = diag(rho) Kt, in float64 (numpy)."""
    qb, kt, p, v = (np.asarray(to_rows(x, chunk), np.float64) for x in (qb, kt, p, v))
    t = np.asarray(local.t, np.float64)
    vec = {name: np.asarray(local.vecs[:, :, i], np.float64)[..., None] for i, name in enumerate(VECS)}
    return (vec["a"][..., 0], vec["b"][..., 0], local.decay, qb, local.attn, t @ v, t @ (vec["d"] * p),
            t @ (vec["e"] * p), vec["g_last"] * kt, vec["rho"] * kt)


def _check_local(args, C, dtype, tol, interpret):
    ref = jax.jit(functools.partial(_xla_local, chunk=C, op_dtype=dtype))(*args)
    qb, kt, p, v, la, lm, beta = (x.astype(dtype) if x.ndim == 4 else x for x in args)
    local = jax.jit(functools.partial(chunk_local, chunk=C, op_dtype=dtype, interpret=interpret))(qb, kt, p, la, lm,
                                                                                                   beta)
    assert local.t.dtype == local.attn.dtype == dtype and local.vecs.dtype == local.decay.dtype == jnp.float32
    for name, o, r in zip(LOCAL_NAMES, _wy_from_kernels(local, qb, kt, p, v, C), ref, strict=True):
        assert o.shape == r.shape, name
        err = rel(o, r)
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol}"


@pytest.mark.parametrize("C,K,V,gates", [(64, 32, 64, "random"), (16, 64, 32, "random"), (32, 16, 128, "mu0"),
                                         (64, 32, 32, "reset"), (64, 32, 32, "drift")])
def test_interpret_chunk_local_matches_xla_stage(C, K, V, gates):
    _check_local(_local_inputs(C + K + V, 1, 128, 2, K, V, gates), C, jnp.float32, 1e-5, interpret=True)


@pytest.mark.parametrize("gates", ["random", "reset", "mu0"])
@pytest.mark.usefixtures("x64")
def test_local_stage_vjp_matches_autodiff_of_xla_stage(gates):
    """The hand-written VJP (from the kernels' T) equals XLA autodiff of the XLA stage, in float64."""
    args = tuple(x.astype(jnp.float64) for x in _local_inputs(7, 1, 128, 2, 32, 64, gates))
    C, f64 = 32, jnp.float64
    ref_out, ref_vjp = jax.vjp(functools.partial(_xla_local, chunk=C, op_dtype=f64), *args)
    local = chunk_local(*args[:3], *args[4:], chunk=C, op_dtype=f64, interpret=True)
    rng = np.random.default_rng(1)
    cot = tuple(jnp.asarray(rng.standard_normal(o.shape), o.dtype) for o in ref_out)
    got = local_stage_vjp(args + (local.t,), cot, C, f64)
    for name, g, r in zip(("qb", "kt", "p", "v", "log_alpha", "log_mu", "beta"), got, ref_vjp(cot), strict=True):
        assert g.shape == r.shape, name
        assert np.all(np.isfinite(np.asarray(g))), name
        assert rel(g, r) < 1e-9, f"{name}: {rel(g, r):.2e}"


def _check_local_vjp_kernel(args, C, dtype, tol, interpret, seed=2, **blocks):
    """local_stage_vjp_kernel (with the gate-VJP kernel, or XLA's gate autodiff if blocks has gate_kernel=False) ==
    local_stage_vjp (XLA products, coefficients recomputed by XLA) on random cotangents of every stage output."""
    args = tuple(x.astype(dtype) if x.ndim == 4 else x for x in args)
    local, saved = chunk_local(*args[:3], *args[4:], chunk=C, op_dtype=dtype, interpret=interpret,
                               with_residuals=True)
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(functools.partial(_xla_local, chunk=C, op_dtype=dtype), *args)
    cot = tuple(jnp.asarray(rng.standard_normal(o.shape), jnp.float32).astype(o.dtype) for o in shapes)
    ref = jax.jit(functools.partial(local_stage_vjp, chunk=C, op_dtype=dtype))(args + (local.t,), cot)
    got = jax.jit(functools.partial(local_stage_vjp_kernel, chunk=C, op_dtype=dtype, interpret=interpret,
                                    **blocks))(args + (local, saved), cot)
    for name, g, r in zip(("qb", "kt", "p", "v", "log_alpha", "log_mu", "beta"), got, ref, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype, (name, g.shape, r.shape, g.dtype, r.dtype)
        err = rel(g, r)
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol}"


@pytest.mark.parametrize("C,K,V,gates,blocks", [(32, 32, 64, "random", {}), (16, 64, 32, "reset", dict(block_k=16)),
                                                (64, 32, 32, "mu0", dict(block_k=32, block_v=16)),
                                                (32, 32, 32, "drift", dict(gate_kernel=False))])
@pytest.mark.usefixtures("x64")
def test_interpret_local_vjp_kernel_matches_xla(C, K, V, gates, blocks):
    """The chunk-local VJP kernel (several K and V blocks) equals the XLA products, in float64."""
    args = tuple(x.astype(jnp.float64) for x in _local_inputs(C + K, 1, 128, 2, K, V, gates))
    _check_local_vjp_kernel(args, C, jnp.float64, 1e-10, interpret=True, **blocks)


@pytest.mark.parametrize("C,gates", [(32, "random"), (16, "reset"), (64, "mu0"), (32, "drift")])
@pytest.mark.usefixtures("x64")
def test_interpret_gate_vjp_kernel_matches_autodiff(C, gates):
    """The gate-coefficient VJP kernel == XLA autodiff of `local_vjp.coefficients`, in float64, and the
    coefficients the forward kernel saves == XLA's."""
    la, lm, beta = (x.astype(jnp.float64) for x in _local_inputs(C, 2, 128, 3, 16, 16, gates)[4:])
    coeffs, vjp = coefficients_with_vjp(la, lm, beta, C, jnp.float64)
    rng = np.random.default_rng(C)
    g = lambda *s: jnp.asarray(rng.standard_normal((6, 128 // C) + s), jnp.float64)  # noqa: E731
    ga, gb, gdecay, g_gamma, g_gdown, g_d, g_e, g_rho = g(C), g(C), g(C), g(C, C), g(C, C), g(C), g(C), g(C)
    ref = vjp(ga, gb, gdecay, g_gamma, g_gdown, g_rho, g_d, g_e)
    got = gate_vjp(la, lm, beta, g_gamma, g_gdown, jnp.stack([g_d, g_e, g_rho], 2), ga, gb, gdecay,
                   op_dtype=jnp.float64, interpret=True)
    for name, x, r in zip(("log_alpha", "log_mu", "beta"), got, ref, strict=True):
        assert x.shape == r.shape and x.dtype == r.dtype, name
        assert rel(x, r) < 1e-12, f"{name}: {rel(x, r):.2e}"
    q = jnp.ones(la.shape + (16,), jnp.float64)
    local, saved = chunk_local(q, q, q, la, lm, beta, chunk=C, op_dtype=jnp.float64, interpret=True,
                               with_residuals=True)
    a, b, _, gamma, gamma_down, rho, d, e = coeffs
    vecs = jnp.stack([a, b, d, e, gamma[..., -1, :], rho], 2)
    for name, x, r in (("gamma", saved.gamma, gamma), ("gamma_down", saved.gamma_down, gamma_down),
                       (", ".join(VECS), local.vecs, vecs)):
        assert rel(x, r) < 1e-12, name


@contextlib.contextmanager
def _traced_anew(monkeypatch, env=None):
    """The op traced anew inside (tuning's environment switches and spies on kernels act while tracing), with an
    environment switch of `mdn_jax.pallas.tuning` set if given (e.g. MDN_LOCAL_VJP_KERNEL=0: the chunk-local VJP
    as XLA products); no traces of it are left behind."""
    if env is not None:
        name, value = env.split("=")
        monkeypatch.setenv(name, value)
    _op.cache_clear()
    try:
        yield
    finally:
        _op.cache_clear()


def _run_and_grads_with_env(monkeypatch, env, inputs, init):
    """run and grads('pallas', ...) with an environment switch of `mdn_jax.pallas.tuning` set."""
    with _traced_anew(monkeypatch, env):
        return run("pallas", inputs, init), grads("pallas", inputs, init)


@pytest.mark.parametrize("env", ["MDN_LOCAL_VJP_KERNEL=0"])
def test_interpret_grads_with_env_switches(monkeypatch, env):
    """The op's outputs and gradients through the XLA-product chunk-local VJP == 'xla'."""
    inputs, init = make_inputs(17, B=2, T=130, H=2, K=32, V=32)
    out, g = _run_and_grads_with_env(monkeypatch, env, inputs, init)
    assert_close(out, run("xla", inputs, init), 1e-4, env)
    assert_grads_close(g, grads("xla", inputs, init), 1e-4, env)


def _count_mosaic_calls(monkeypatch):
    """Counts the traced calls of the Mosaic GPU passes: {'forward': n, 'forward_save': n, 'sweep': n}."""
    calls = dict.fromkeys(("forward", "forward_save", "sweep"), 0)

    def counted(fn, name_of):
        def call(*args, **kwargs):
            calls[name_of(kwargs)] += 1
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(mosaic_pass, "pass_forward_mosaic", counted(
        mosaic_pass.pass_forward_mosaic, lambda kw: "forward_save" if kw.get("save") else "forward"))
    monkeypatch.setattr(mosaic_pass, "sweep_mosaic", counted(mosaic_pass.sweep_mosaic, lambda kw: "sweep"))
    return calls


@pytest.mark.parametrize("T,K,V,with_init", [(130, 64, 128, True), (100, 256, 64, True)])  # K=256: block_v 32
def test_interpret_mosaic_passes_forward_and_grads(monkeypatch, T, K, V, with_init):
    """MDN_MOSAIC=1: the sequential passes as the Mosaic GPU kernels (interpret mode) inside the op == 'xla'."""
    inputs, init = make_inputs(19 + T, B=2, T=T, H=1, K=K, V=V, with_init=with_init)
    calls = _count_mosaic_calls(monkeypatch)
    out, g = _run_and_grads_with_env(monkeypatch, "MDN_MOSAIC=1", inputs, init)
    assert all(calls.values()), calls  # forward alone, forward saving, sweep
    assert_close(out, run("xla", inputs, init), 1e-4, "mosaic")
    assert_grads_close(g, grads("xla", inputs, init, seed=0), 1e-4, "mosaic")


def test_interpret_mosaic_passes_with_segment_ids(monkeypatch):
    """Packed documents in dense rows (the training data's layout) take the Mosaic passes: segment resets (one
    inside a chunk, one on a chunk boundary) give the outputs and gradients of 'xla' and the scan's outputs."""
    inputs, _ = make_inputs(23, B=2, T=150, H=1, K=64, V=128)
    seg = jnp.asarray(np.stack([np.repeat([0, 1, 2], [40, 24, 86]), np.repeat([0, 1], [128, 22])]), jnp.int32)
    calls = _count_mosaic_calls(monkeypatch)
    with _traced_anew(monkeypatch, "MDN_MOSAIC=1"):
        out = run("pallas", inputs, None, segment_ids=seg)
        g = grads("pallas", inputs, None, segment_ids=seg)
    assert all(calls.values()), calls
    assert_close(out, run("scan", inputs, None, segment_ids=seg), 1e-4, "mosaic segment_ids vs scan")
    assert_close(out, run("xla", inputs, None, segment_ids=seg), 1e-4, "mosaic segment_ids")
    assert_grads_close(g, grads("xla", inputs, None, segment_ids=seg), 1e-4, "mosaic segment_ids")


def test_interpret_mosaic_cotangent_kernel_in_the_op(monkeypatch):
    """MDN_GRADS_KERNEL=mosaic: the pass cotangents as the Mosaic GPU kernel (interpret mode) inside the op, the
    gradients == 'xla' (it is called: a spy counts its traced calls). K halves and V blocks: test_pallas_mosaic."""
    inputs, init = make_inputs(31, B=2, T=64, H=1, K=64, V=128, with_init=True)
    calls = []
    inner = mosaic_grads.pass_cotangents_mosaic
    monkeypatch.setattr(mosaic_grads, "pass_cotangents_mosaic", lambda *a, **k: calls.append(1) or inner(*a, **k))
    with _traced_anew(monkeypatch, "MDN_GRADS_KERNEL=mosaic"):
        g = grads("pallas", inputs, init)
    assert calls, "the Mosaic cotangent kernel was not called"
    assert_grads_close(g, grads("xla", inputs, init), 1e-4, "mosaic cotangents")


def test_grads_kernel_switch_rejects_unknown_values(monkeypatch):
    monkeypatch.setenv("MDN_GRADS_KERNEL", "cuda")
    with pytest.raises(ValueError, match="MDN_GRADS_KERNEL"):
        tuning.grads_kernel(True, jnp.bfloat16, interpret=False)


def test_interpret_mosaic_switch_keeps_triton_for_packed_sequences(monkeypatch):
    """cu_seqlens (not dense rows): MDN_MOSAIC=1 leaves the Triton passes, which read the layout tables."""
    inputs, _ = make_inputs(23, B=1, T=150, H=1, K=64, V=128, with_init=False)
    cu = jnp.asarray([0, 70, 150], jnp.int32)
    calls = _count_mosaic_calls(monkeypatch)
    with _traced_anew(monkeypatch, "MDN_MOSAIC=1"):
        out = run("pallas", inputs, None, cu_seqlens=cu)
    assert not any(calls.values()), calls
    assert_close(out, run("xla", inputs, None, cu_seqlens=cu), 1e-4, "cu_seqlens")


def _count_split_calls(monkeypatch):
    """The segment counts of the traced calls of the sequence-split forward (`mdn_jax.pallas.seq_split`), with
    "add" for each traced call of its last step's kernel (`start_response`)."""
    calls, real, real_add = [], core.split_forward, seq_split.add_start_response

    def counted(*args, **kwargs):
        calls.append(kwargs["split"].segments)
        return real(*args, **kwargs)

    def counted_add(*args, **kwargs):
        calls.append("add")
        return real_add(*args, **kwargs)

    monkeypatch.setattr(core, "split_forward", counted)
    monkeypatch.setattr(seq_split, "add_start_response", counted_add)
    return calls


def _start_response_inputs(seed, B, G, first_segment, NC, C, HV, K2, V, dtype):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    steps = -(-NC // G)
    o = jax.random.normal(keys[0], (B, NC * C, HV, V), jnp.float32).astype(dtype)
    psi = jax.random.normal(keys[1], (B * G * HV, steps * C, K2), jnp.float32).astype(dtype)
    starts = jax.random.normal(keys[2], (B * (G - first_segment) * HV, K2, V), jnp.float32).astype(dtype)
    return o, psi, starts


def _start_response_np(o, psi, starts, G, first_segment, C):
    """O + Psi x_start segment by segment in NumPy float64 (segments before first_segment unchanged)."""
    o, psi, starts = (np.asarray(x, np.float64) for x in (o, psi, starts))
    B, Tp, HV, V = o.shape
    psi = psi.reshape(B, G, HV, -1, psi.shape[-1])
    starts = starts.reshape(B, G - first_segment, HV, -1, V)
    out = o.copy()
    for g, (first, end) in enumerate(mosaic_pass.segment_bounds(Tp // C, G)):
        if g >= first_segment:
            n = (end - first) * C
            out[:, first * C:end * C] += np.einsum("bhti,bhiv->bthv", psi[:, g, :, :n], starts[:, g - first_segment])
    return out


@pytest.mark.parametrize("B,G,first_segment,NC,HV,K2,V,block_v,dtype,tol", [
    (2, 2, 0, 4, 3, 64, 128, 64, jnp.float32, 1e-6), (1, 3, 1, 5, 2, 256, 32, 64, jnp.bfloat16, 1e-2),
    (2, 4, 1, 4, 1, 32, 64, 32, jnp.float32, 1e-6)])
def test_interpret_start_response_matches_numpy(B, G, first_segment, NC, HV, K2, V, block_v, dtype, tol):
    """O + Psi x_start by the kernel of `start_response` and by its XLA form against NumPy: ragged segments (5
    chunks in 3: 1, 2, 2), segments before first_segment left as they are, several value blocks (block_v clipped
    to V)."""
    C = 32
    o, psi, starts = _start_response_inputs(B + V, B, G, first_segment, NC, C, HV, K2, V, dtype)
    ref = _start_response_np(o.astype(jnp.float32), psi.astype(jnp.float32), starts.astype(jnp.float32), G,
                             first_segment, C)
    kw = dict(segments=G, first_segment=first_segment, chunk=C)
    for out in (start_response.add_start_response(o, psi, starts, interpret=True, block_v=block_v, **kw),
                start_response.add_start_response_xla(o, psi, starts, **kw)):
        assert out.dtype == dtype
        err = rel(out.astype(jnp.float32), ref)  # NaN fails too
        assert err < tol, err


@gpu
def test_gpu_start_response_matches_xla():
    """The kernel at the split's S400 T=32768 shapes from a zero start (6 segments of 85 or 86 chunks, the first
    one left as it is; 6 heads, 2K = 256, V = 256)."""
    o, psi, starts = _start_response_inputs(3, 1, 6, 1, 512, 64, 6, 256, 256, jnp.bfloat16)
    kw = dict(segments=6, first_segment=1, chunk=64)
    out = jax.jit(functools.partial(start_response.add_start_response, interpret=False, **kw))(o, psi, starts)
    ref = start_response.add_start_response_xla(o, psi, starts, **kw)
    err = rel(out.astype(jnp.float32), ref.astype(jnp.float32))
    assert err < 1e-2, err


def test_start_response_rejects_mismatched_shapes():
    o, psi, starts = _start_response_inputs(1, 1, 2, 0, 2, 64, 2, 32, 64, jnp.float32)
    kw = dict(segments=2, first_segment=0, chunk=64, interpret=True)
    with pytest.raises(ValueError, match="disagree"):
        start_response.add_start_response(o, psi[:, :32], starts, **kw)
    with pytest.raises(ValueError, match="disagree"):
        start_response.add_start_response(o, psi, starts, **(kw | dict(first_segment=1)))
    with pytest.raises(ValueError, match="dtypes"):
        start_response.add_start_response(o, psi.astype(jnp.bfloat16), starts, **kw)


@pytest.mark.parametrize("segments,T,HV,K,V,gates,add_kernel,with_init", [
    (4, 256, 2, 64, 128, ("drift", -0.5), True, True), (2, 250, 4, 64, 128, "random", False, True),
    (2, 128, 2, 40, 72, ("drift", -1.0), True, True), (3, 320, 2, 64, 128, ("drift", -0.5), True, True),
    (3, 320, 2, 64, 128, ("drift", -0.5), True, False), (4, 250, 2, 64, 128, "random", False, False)])
def test_interpret_seq_split_forward(monkeypatch, segments, T, HV, K, V, gates, add_kernel, with_init):
    """MDN_SEQ_SPLIT (with MDN_MOSAIC=1: the split's pass is the Mosaic one): the forward as one pass over the
    rows' segments (identity columns, then the segments' recurrence) == 'xla', from a random initial state or
    from none (the first segment's identity columns not run), with grouped value heads, ragged segments (5 chunks
    in 3), a partial last chunk, and K, V padded to 64, 128 (identity columns on the padded rows of the state too);
    the gradients still come from the unsplit passes. Slowly decaying gates ('drift': alpha = exp(-0.01)) carry
    each segment's start state far into the next. add_kernel: the last step as the kernel of `start_response`.
    One consumer warpgroup: inside the op, the interpreter deadlocks on the two-consumer split pass beyond one
    step (its warpgroup threads in barrier waits, on this 2-core machine), though the same kernel alone runs
    (test_pallas_mosaic.py's split-pass tests, two consumers); the GPU runs two consumers at K = 128 in
    test_gpu_seq_split_forward."""
    inputs, init = make_inputs(23 + T, B=2, T=T, H=2, HV=HV, K=K, V=V, gates=gates, with_init=with_init)
    calls = _count_split_calls(monkeypatch)
    monkeypatch.setenv("MDN_MOSAIC", "1")
    monkeypatch.setenv("MDN_MOSAIC_CONSUMERS", "1")
    monkeypatch.setenv("MDN_SPLIT_ADD_KERNEL", str(int(add_kernel)))
    with _traced_anew(monkeypatch, f"MDN_SEQ_SPLIT={segments}"):
        out = run("pallas", inputs, init)
        assert calls == [segments] + ["add"] * add_kernel, calls
        g = grads("pallas", inputs, init)
    what = f"split {segments}"
    assert_close(out, run("xla", inputs, init), 1e-4, what)
    assert_grads_close(g, grads("xla", inputs, init), 1e-4, what)


@pytest.mark.parametrize("G,zero_start", [(1, False), (3, False), (8, False), (1, True), (3, True)])
def test_segment_starts_match_the_recurrence(G, zero_start):
    """`seq_split.segment_starts` against x_{g+1} = Phi_g x_g + x_local_g in NumPy float64, from a random start
    or a zero one (then segment 0's Phi is not read: NaN there; its start is not returned) (random contractive Phi,
    so errors would not hide in a decaying product)."""
    B, HV, K, V = 2, 3, 4, 5
    n = 2 * K
    rng = np.random.default_rng(G)
    phi = rng.standard_normal((B, G, HV, n, n)) / np.sqrt(n)
    ends = np.concatenate([phi, rng.standard_normal((B, G, HV, n, V))], axis=-1)
    x0 = np.zeros((B, HV, n, V)) if zero_start else rng.standard_normal((B, HV, n, V))
    if zero_start:
        ends[:, 0, ..., :n] = np.nan
    fs, fm = (jnp.asarray(ends[..., rows, :], jnp.float32) for rows in (slice(0, K), slice(K, n)))
    starts, x_end = seq_split.segment_starts(fs, fm, None if zero_start else jnp.asarray(x0, jnp.float32))
    x, want = x0, []
    for g in range(G):
        want.append(x)
        x = (ends[:, g, ..., n:] if zero_start and g == 0 else ends[:, g, ..., :n] @ x + ends[:, g, ..., n:])
    want = want[int(zero_start):]
    assert starts.shape == (B, len(want), HV, n, V) and x_end.shape == (B, HV, n, V)
    assert rel(x_end, x) < 1e-5
    if want:
        assert rel(starts, np.stack(want, axis=1)) < 1e-5


def test_interpret_seq_split_with_document_resets(monkeypatch):
    """Resets inside a row (segment_ids) fall inside and on the edges of the split's segments (slowly decaying
    gates otherwise)."""
    inputs, _ = make_inputs(29, B=1, T=256, H=2, K=64, V=128, gates=("drift", -0.5), with_init=False)
    seg = jnp.asarray(np.repeat([0, 1, 2, 3], [40, 100, 52, 64])[None], jnp.int32)  # resets at 40, 140, 192
    calls = _count_split_calls(monkeypatch)
    monkeypatch.setenv("MDN_MOSAIC", "1")
    monkeypatch.setenv("MDN_MOSAIC_CONSUMERS", "1")  # as test_interpret_seq_split_forward
    with _traced_anew(monkeypatch, "MDN_SEQ_SPLIT=4"):
        out = run("pallas", inputs, None, segment_ids=seg)
    assert calls == [4, "add"], calls  # the last step runs as the start_response kernel by default
    assert_close(out, run("xla", inputs, None, segment_ids=seg), 1e-4, "split with resets")


def test_interpret_seq_split_needs_the_mosaic_pass(monkeypatch):
    """MDN_MOSAIC=0: no Mosaic pass, so MDN_SEQ_SPLIT leaves the forward unsplit."""
    inputs, init = make_inputs(31, B=1, T=256, H=1, K=64, V=128)
    calls = _count_split_calls(monkeypatch)
    monkeypatch.setenv("MDN_MOSAIC", "0")
    with _traced_anew(monkeypatch, "MDN_SEQ_SPLIT=4"):
        out = run("pallas", inputs, init)
    assert calls == [], calls
    assert_close(out, run("xla", inputs, init), 1e-4, "unsplit")


def test_interpret_local_vjp_kernel_bf16_operands():
    _check_local_vjp_kernel(_local_inputs(4, 1, 128, 2, 64, 128), 64, jnp.bfloat16, 2e-2, interpret=True)


def test_interpret_chunk_local_bf16_operands():
    _check_local(_local_inputs(3, 1, 128, 2, 64, 128), 64, jnp.bfloat16, 1e-2, interpret=True)


# ---------------------------------------------------------------- pass-cotangent kernel vs its XLA version

GRADS_NAMES = ("da", "db", "dqb", "dy", "dz", "dkg", "dkr", "dattn", "ddecay")


def _grads_inputs(seed, B, HV, NC, C, K, V, dtype):
    """Random saved tensors and cotangents of the sequential pass (never zeros)."""
    rng = np.random.default_rng(seed)
    f = lambda *s, dt=dtype: jnp.asarray(rng.standard_normal(s), jnp.float32).astype(dt)  # noqa: E731
    BH = B * HV
    return (f(BH, NC, C, dt=jnp.float32), f(BH, NC, C, dt=jnp.float32), f(B, NC * C, HV, K), f(B, NC * C, HV, V),
            f(BH, NC, C, V), f(BH, NC, C, V), f(BH, NC, K, V), f(BH, NC, K, V), f(BH, NC, K, V), f(BH, NC, K, V))


def _check_grads_kernel(args, HV, tol, interpret, **blocks):
    ref = jax.jit(functools.partial(pass_cotangents_xla, num_heads=HV))(*args)
    out = jax.jit(functools.partial(pass_cotangents, num_heads=HV, interpret=interpret, **blocks))(*args)
    for name, o, r in zip(GRADS_NAMES, out, ref, strict=True):
        assert o.shape == r.shape and o.dtype == r.dtype, (name, o.shape, r.shape, o.dtype, r.dtype)
        err = rel(o, r)
        assert err < tol, f"{name}: rel err {err:.2e} >= {tol}"


@pytest.mark.parametrize("C,K,V,blocks", [(64, 64, 64, {}), (16, 64, 128, dict(block_k=32, block_v=32)),
                                          (32, 32, 16, dict(block_k=16, block_v=16))])
def test_interpret_pass_cotangents_match_xla(C, K, V, blocks):
    """Several K blocks (dattn from the first only, partial sums added) and V loop steps; grouped layout of dO."""
    _check_grads_kernel(_grads_inputs(C + K + V, 2, 3, 3, C, K, V, jnp.float32), 3, 1e-5, True, **blocks)


# ---------------------------------------------------------------- GPU: compiled Triton kernels


@gpu
@pytest.mark.parametrize("T,K,V,dtype,tol", [(1024, 128, 256, jnp.bfloat16, 1e-2), (256, 256, 512, jnp.float32, 1e-4),
                                             (1024, 128, 128, jnp.float32, 1e-4)])
def test_gpu_chunk_local_matches_xla_stage(T, K, V, dtype, tol):
    for gates in ("random", "mu0", "reset", "drift"):
        _check_local(_local_inputs(T + K, 2, T, 2, K, V, gates), 64, dtype, tol, interpret=False)



@gpu
@pytest.mark.parametrize("K,V,dtype,tol", [(128, 256, jnp.bfloat16, 1e-2), (256, 512, jnp.float32, 1e-4),
                                           (128, 128, jnp.float32, 1e-4)])
def test_gpu_pass_cotangents_match_xla(K, V, dtype, tol):
    _check_grads_kernel(_grads_inputs(K + V, 2, 3, 16, 64, K, V, dtype), 3, tol, False)


@gpu
@pytest.mark.parametrize("T,K,V,dtype,tol", [(1024, 128, 256, jnp.bfloat16, 2e-2), (256, 256, 512, jnp.float32, 1e-4),
                                             (1024, 128, 128, jnp.float32, 1e-4)])
def test_gpu_local_vjp_kernel_matches_xla(T, K, V, dtype, tol):
    for gates in ("random", "mu0", "reset", "drift"):
        _check_local_vjp_kernel(_local_inputs(T + K, 2, T, 2, K, V, gates), 64, dtype, tol, interpret=False)


def _gpu_case(seed, T, K, V, dtype, B=2, H=2, **kw):
    inputs, init = make_inputs(seed, B=B, T=T, H=H, K=K, V=V, dtype=dtype, **kw)
    ref_inputs = {n: (None if x is None else x.astype(jnp.float32)) for n, x in inputs.items()}
    return inputs, init, ref_inputs


GPU_CASES = [(jnp.float32, 2e-3, 64, 64, 64), (jnp.bfloat16, 1e-2, 64, 64, 64), (jnp.float32, 2e-3, 130, 128, 128),
             (jnp.bfloat16, 1e-2, 130, 128, 128), (jnp.bfloat16, 1e-2, 1024, 128, 256),
             (jnp.bfloat16, 1e-2, 300, 256, 256)]


@gpu
@pytest.mark.parametrize("dtype,tol,T,K,V", GPU_CASES)
def test_gpu_forward_and_grads(dtype, tol, T, K, V):
    inputs, init, ref_inputs = _gpu_case(T + K + V, T, K, V, dtype)
    ref = run("xla", ref_inputs, init)
    assert_close(run("pallas", inputs, init), ref, tol, f"{dtype.__name__} T={T} K={K} V={V}")
    g = grads("pallas", inputs, init)
    g_ref = grads("xla", ref_inputs, init)
    assert_grads_close(g, g_ref, 2 * tol, f"{dtype.__name__} T={T} K={K} V={V}")


@gpu
@pytest.mark.parametrize("env", ["MDN_LOCAL_VJP_KERNEL=0", "MDN_GRADS_KERNEL=triton"])
@pytest.mark.parametrize("dtype,tol,T,K,V", [GPU_CASES[1], GPU_CASES[2], GPU_CASES[4]])
def test_gpu_forward_and_grads_env_switches(monkeypatch, env, dtype, tol, T, K, V):
    """The op's outputs and gradients with the XLA-product chunk-local VJP, or the Triton pass cotangents (the
    default takes the Mosaic kernel for 16-bit operands), against the fp32 reference."""
    inputs, init, ref_inputs = _gpu_case(T + K + V + 1, T, K, V, dtype)
    what = f"{env} {dtype.__name__} T={T} K={K} V={V}"
    out, g = _run_and_grads_with_env(monkeypatch, env, inputs, init)
    assert_close(out, run("xla", ref_inputs, init), tol, what)
    assert_grads_close(g, grads("xla", ref_inputs, init), 2 * tol, what)


@gpu
@pytest.mark.parametrize("T,K,V", [(1024, 128, 256), (300, 64, 128), (130, 100, 128), (512, 256, 512)])
def test_gpu_mosaic_passes_forward_and_grads(monkeypatch, T, K, V):
    """MDN_MOSAIC=1: the op through the Mosaic GPU passes (bf16) against the fp32 reference."""
    inputs, init, ref_inputs = _gpu_case(T + K + V + 2, T, K, V, jnp.bfloat16)
    calls = _count_mosaic_calls(monkeypatch)
    out, g = _run_and_grads_with_env(monkeypatch, "MDN_MOSAIC=1", inputs, init)
    assert all(calls.values()), calls
    assert_close(out, run("xla", ref_inputs, init), 1e-2, f"mosaic T={T} K={K} V={V}")
    assert_grads_close(g, grads("xla", ref_inputs, init), 2e-2, f"mosaic T={T} K={K} V={V}")


@gpu
def test_gpu_default_passes_with_segment_ids_at_the_400m_micro_batch(monkeypatch):
    """The 400M run's micro-batch heads (B=4, H=6, K=128, V=256, bf16) with packed documents (segment_ids, resets
    inside and on chunk boundaries): the default takes the Mosaic passes, and outputs and gradients match the fp32
    reference."""
    T = 512
    inputs, _, ref_inputs = _gpu_case(37, T, 128, 256, jnp.bfloat16, B=4, H=6)
    rng = np.random.default_rng(37)
    starts = (rng.random((4, T)) < 0.01) | (np.arange(T) == 128)  # ~5 documents a row; one starts a chunk
    seg = jnp.asarray(np.cumsum(starts, axis=1), jnp.int32)
    calls = _count_mosaic_calls(monkeypatch)
    with _traced_anew(monkeypatch):
        out = run("pallas", inputs, None, segment_ids=seg)
        g = grads("pallas", inputs, None, segment_ids=seg)
    assert all(calls.values()), calls
    assert_close(out, run("xla", ref_inputs, None, segment_ids=seg), 1e-2, "segment_ids at B=4 H=6")
    assert_grads_close(g, grads("xla", ref_inputs, None, segment_ids=seg), 2e-2, "segment_ids at B=4 H=6")


@gpu
@pytest.mark.parametrize("B,K,V", [(8, 128, 256), (4, 256, 512)])
def test_gpu_mosaic_is_the_default_for_dense_s400_rows(monkeypatch, B, K, V):
    """At S400's heads (B=8, H=6, K=128, V=256) and 1.3B's (B=4, H=6, K=256, V=512), bf16, the default picks the
    Mosaic passes, the forward without differentiation with two consumer warpgroups; the result matches."""
    inputs, init, ref_inputs = _gpu_case(29, 256, K, V, jnp.bfloat16, B=B, H=6)
    calls = _count_mosaic_calls(monkeypatch)
    consumers, counted = [], mosaic_pass.pass_forward_mosaic
    monkeypatch.setattr(mosaic_pass, "pass_forward_mosaic",
                        lambda *a, **kw: consumers.append(kw["consumers"]) or counted(*a, **kw))
    with _traced_anew(monkeypatch):
        out = run("pallas", inputs, init)
    assert calls["forward"] == 1 and consumers == [2], (calls, consumers)
    assert_close(out, run("xla", ref_inputs, init), 1e-2, f"B={B} K={K} V={V} heads")


@gpu
@pytest.mark.parametrize("segments,expected,gates,add_kernel,with_init", [
    ("auto", 6, "random", False, True), ("16", 16, ("drift", -1.0), False, True),
    ("auto", 6, ("drift", -1.0), True, True), ("auto", 6, ("drift", -1.0), True, False),
    ("5", 5, "random", True, False)])
def test_gpu_seq_split_forward(monkeypatch, segments, expected, gates, add_kernel, with_init):
    """One long row per head pair (B=1, H=2, T=8192, S400's K and V, bf16): the forward split along the sequence
    (auto: 6 ragged segments of 21 or 22 chunks, from a random start or none; 16 of 8, slowly decaying gates; 5
    ragged ones of 25 or 26) against the fp32 reference; add_kernel: the last step as the kernel of `start_response`."""
    inputs, init, ref_inputs = _gpu_case(37, 8192, 128, 256, jnp.bfloat16, B=1, H=2, gates=gates,
                                         with_init=with_init)
    calls = _count_split_calls(monkeypatch)
    monkeypatch.setenv("MDN_SPLIT_ADD_KERNEL", str(int(add_kernel)))
    with _traced_anew(monkeypatch, f"MDN_SEQ_SPLIT={segments}"):
        out = run("pallas", inputs, init)
    assert calls == [expected] + ["add"] * add_kernel, calls
    assert_close(out, run("xla", ref_inputs, init), 1e-2, f"split {segments}")


@gpu
@pytest.mark.parametrize("log_mu", [-0.5, -1.0, -2.0])
def test_gpu_drifting_gates(log_mu):
    inputs, init, ref_inputs = _gpu_case(21, 1024, 128, 256, jnp.bfloat16, B=1, H=6, gates=("drift", log_mu))
    assert_close(run("pallas", inputs, init), run("xla", ref_inputs, init), 1e-2, f"drift {log_mu}")


@gpu
def test_gpu_long_sequence_is_finite():
    inputs, _, _ = _gpu_case(31, 65536, 128, 256, jnp.bfloat16, B=1, H=2, with_init=False)
    o, (S, M) = run("pallas", inputs, None)
    for x in (o, S, M):
        assert np.all(np.isfinite(np.asarray(x, np.float32)))


@gpu
def test_gpu_varlen():
    inputs, _, ref_inputs = _gpu_case(41, 1000, 128, 128, jnp.bfloat16, B=1, H=2)
    cu = jnp.asarray([0, 100, 101, 612, 1000], jnp.int32)
    rng = np.random.default_rng(0)
    init = tuple(jnp.asarray(rng.standard_normal((4, 2, 128, 128)), jnp.float32) for _ in range(2))
    assert_close(run("pallas", inputs, init, cu_seqlens=cu), run("xla", ref_inputs, init, cu_seqlens=cu), 1e-2)


# ---------------------------------------------------------------- decode-step kernel


def _step_inputs(seed, B, H, HV, K, V):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    args = (f(B, H, K), f(B, H, K), f(B, HV, V), jax.nn.log_sigmoid(f(B, HV)),
            jnp.maximum(jax.nn.log_sigmoid(f(B, HV)), -2.0), 0.5 * jax.nn.sigmoid(f(B, HV)),
            jnp.asarray(rng.uniform(0.0, 2.0, (B, HV)), jnp.float32))
    return args, (f(B, HV, K, V), f(B, HV, K, V))


@pytest.mark.parametrize("B", [1, 5])
def test_decode_kernel_matches_jnp_step(B):
    """A few decode steps with the Pallas kernel == the jnp step (grouped heads, donated state under jit)."""
    step = jax.jit(momentum_delta_rule_step, static_argnames="implementation", donate_argnums=(7,))
    args, state = _step_inputs(B, B, 2, 4, 32, 64)
    ref_state = state
    state = jax.tree.map(jnp.copy, state)
    for t in range(3):
        args_t = tuple(a * (1.0 + 0.1 * t) if a.ndim == 3 else a for a in args)
        o_ref, ref_state = momentum_delta_rule_step(*args_t, ref_state)
        o, state = step(*args_t, state, implementation="pallas")
        assert rel(o, o_ref) < 1e-5
    assert rel(state[0], ref_state[0]) < 1e-5 and rel(state[1], ref_state[1]) < 1e-5


@gpu
@pytest.mark.parametrize("B", [1, 16, 256])
def test_gpu_decode_kernel(B):
    args, state = _step_inputs(B, B, 6, 6, 128, 256)
    o_ref, (S_ref, M_ref) = momentum_delta_rule_step(*args, state)
    o, (S, M) = jax.jit(momentum_delta_rule_step, static_argnames="implementation")(*args, state,
                                                                                   implementation="pallas")
    assert rel(o, o_ref) < 1e-5 and rel(S, S_ref) < 1e-5 and rel(M, M_ref) < 1e-5
