"""The Mosaic GPU sequential passes (`mdn_jax.pallas.mosaic_pass`) against the Triton kernels of `chunk_pass` on the
same chunk-local outputs (helpers of `experiments/mosaic_pass.py`), the Mosaic pass-cotangent kernel
(`mdn_jax.pallas.mosaic_grads`) against XLA's products; the op through them in `test_pallas.py`."""

import functools

import jax
import jax.numpy as jnp
import pytest

from experiments.common import rel_errs
from experiments.mosaic_grads import check as mosaic_grads_check
from experiments.mosaic_grads import inputs as grads_inputs
from experiments.mosaic_pass import (
    _cotangents,
    _flat,
    _inputs,
    _triton_pass,
    _triton_sweep,
    check,
    check_sweep,
)
from mdn_jax.pallas import mosaic_pass
from mdn_jax.pallas.chunk_grads import pass_cotangents_xla
from mdn_jax.pallas.mosaic_grads import pass_cotangents_mosaic
from mdn_jax.pallas.mosaic_pass import pass_forward_mosaic, sweep_mosaic

ON_GPU = jax.default_backend() == "gpu"


@pytest.mark.parametrize("B,T,H,K,V,block_v,stages,consumers,save,dtype,tol", [
    (1, 128, 3, 64, 64, 64, 2, 1, False, jnp.float32, 1e-6),
    (2, 192, 2, 128, 256, 128, 1, 1, False, jnp.bfloat16, 1e-3),
    (1, 192, 2, 64, 256, 64, 2, 2, False, jnp.float32, 1e-6),
    (1, 192, 2, 64, 128, 64, 2, 1, True, jnp.float32, 1e-6),
    (1, 128, 2, 64, 256, 64, 1, 2, True, jnp.bfloat16, 1e-2),
    (1, 192, 1, 256, 128, 32, 1, 2, True, jnp.float32, 1e-6)])  # K = 256's configuration
def test_interpret_matches_triton_pass(B, T, H, K, V, block_v, stages, consumers, save, dtype, tol):
    """(O, S_T, M_T) and with save the residuals (S_c, M_c, N_c) of both passes in interpret mode, on the same
    chunk-local outputs (consumers 2: two compute warpgroups and a memory warpgroup)."""
    errs = check(B=B, T=T, H=H, K=K, V=V, block_v=block_v, stages=stages, consumers=consumers, save=save,
                 dtype=dtype)
    assert all(e < tol for e in errs), errs  # NaN fails too


@pytest.mark.parametrize("B,T,H,K,V,block_v,stages,consumers,dtype,tol", [
    (1, 128, 2, 64, 128, 64, 2, 1, jnp.float32, 1e-6),
    (1, 192, 2, 64, 256, 64, 1, 2, jnp.float32, 1e-6),
    (2, 128, 2, 128, 256, 128, 1, 1, jnp.bfloat16, 1e-3),
    (1, 192, 1, 256, 128, 32, 1, 2, jnp.float32, 1e-6)])
def test_interpret_sweep_matches_triton_sweep(B, T, H, K, V, block_v, stages, consumers, dtype, tol):
    """(lS, lM, dN, dS0, dM0) of both reverse sweeps in interpret mode."""
    errs = check_sweep(B=B, T=T, H=H, K=K, V=V, block_v=block_v, stages=stages, consumers=consumers, dtype=dtype)
    assert all(e < tol for e in errs), errs


def test_rejects_shapes_outside_the_limits():
    args = _inputs(1, 64, 1, 32, 64, dtype=jnp.float32, interpret=True)
    with pytest.raises(ValueError, match="Mosaic pass limits"):
        pass_forward_mosaic(*args, block_v=64, interpret=True)


@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("K,V,block_v,stages,consumers,save", [
    (128, 256, 64, 2, 1, False), (128, 256, 128, 1, 1, False), (128, 256, 64, 1, 2, False),
    (256, 512, 64, 1, 1, False), (128, 256, 64, 2, 1, True), (128, 256, 64, 1, 2, True),
    (256, 512, 32, 1, 2, False), (256, 512, 32, 1, 2, True), (128, 256, 32, 2, 1, False), (128, 256, 32, 2, 1, True),
    (128, 256, 32, 2, 2, False), (128, 256, 32, 2, 2, True)])
def test_gpu_matches_triton_pass(K, V, block_v, stages, consumers, save):
    args = _inputs(2, 1024, 2, K, V)
    ours = jax.jit(lambda *a: pass_forward_mosaic(*a, block_v=block_v, stages=stages, consumers=consumers,
                                                  save=save))(*args)
    ref = jax.jit(lambda *a: _triton_pass(*a, block_v=16 if K > 128 else 32, interpret=False, save=save))(*args)
    errs = rel_errs(_flat(ours), _flat(ref))
    assert all(e < 2e-2 for e in errs), errs


@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("K,V,block_v,stages,consumers", [(128, 256, 64, 2, 1), (128, 256, 64, 1, 2),
                                                         (256, 512, 64, 1, 1), (256, 512, 32, 1, 2),
                                                         (128, 256, 32, 2, 1), (128, 256, 32, 2, 2)])
def test_gpu_sweep_matches_triton_sweep(K, V, block_v, stages, consumers):
    local, qb, kt, p, *_ = _inputs(2, 1024, 2, K, V)
    args = (local, qb, kt, p, *_cotangents(2, 1024, 2, K, V))
    ours = jax.jit(lambda *a: sweep_mosaic(*a, block_v=block_v, stages=stages, consumers=consumers))(*args)
    ref = jax.jit(lambda *a: _triton_sweep(*a, block_v=16 if K > 128 else 32, interpret=False))(*args)
    errs = rel_errs(ours, ref)
    assert all(e < 2e-2 for e in errs), errs


@pytest.mark.parametrize("K,V,block_v,stages,consumers,save", [(128, 256, 64, 2, 1, False), (128, 256, 64, 1, 2, False),
                                                              (256, 512, 64, 1, 1, False), (128, 256, 64, 2, 1, True),
                                                              (128, 256, 64, 1, 2, True), (256, 512, 32, 1, 2, True),
                                                              (128, 256, 32, 2, 1, True), (128, 256, 32, 2, 2, True)])
def test_lowers_for_cuda_within_shared_memory(K, V, block_v, stages, consumers, save):
    """The Mosaic GPU lowering (layouts, transforms, the shared-memory budget) of the GPU configurations, run on
    any machine: `lower(lowering_platforms=("cuda",))` needs no GPU."""
    assert "mosaic_gpu" in _lower_for_cuda(K, V, block_v, stages, consumers, save)


@pytest.mark.parametrize("K,V,block_v,stages,consumers", [(128, 256, 64, 2, 1), (128, 256, 64, 1, 2),
                                                         (256, 512, 64, 1, 1), (256, 512, 32, 1, 2),
                                                         (128, 256, 32, 2, 1), (128, 256, 32, 2, 2)])
def test_sweep_lowers_for_cuda_within_shared_memory(K, V, block_v, stages, consumers):
    local, qb, kt, p, *_ = _inputs(1, 256, 2, K, V, interpret=True)
    args = (local, qb, kt, p, *_cotangents(1, 256, 2, K, V))
    text = _cuda_text(functools.partial(sweep_mosaic, block_v=block_v, stages=stages, consumers=consumers), args)
    assert "mosaic_gpu" in text


@pytest.mark.parametrize("K,V,block_v,stages,consumers", [
    (128, 256, 64, 2, 2), (256, 512, 64, 1, 2), (256, 512, 32, 2, 2), (256, 512, 32, 1, 2), (128, 256, 64, 1, 2),
    (128, 256, 128, 2, 1), (256, 512, 32, 2, 1), (128, 256, 32, 2, 1), (128, 256, 32, 2, 2)])
def test_shared_memory_estimate_agrees_with_the_lowering(monkeypatch, K, V, block_v, stages, consumers):
    """`supported`'s shared-memory estimate (`smem_bytes`) against Mosaic GPU's own count at lowering, on either
    side of the limit: what it refuses (with the limits named) is what the lowering rejects, what it takes lowers."""
    fits = mosaic_pass.supported(K, V, 64, block_v, consumers, stages=stages)
    if not fits:
        with pytest.raises(ValueError, match="Mosaic pass limits"):
            _lower_for_cuda(K, V, block_v, stages, consumers)
    monkeypatch.setattr(mosaic_pass, "supported", lambda *a, **k: True)  # the lowering's own check
    if fits:
        assert "mosaic_gpu" in _lower_for_cuda(K, V, block_v, stages, consumers)
    else:
        with pytest.raises(ValueError, match="exceeds available shared memory"):
            _lower_for_cuda(K, V, block_v, stages, consumers)


def _bases(K, V):
    eye, zk, zv = jnp.eye(K), jnp.zeros((K, K)), jnp.zeros((K, V))
    return jnp.concatenate([eye, zk, zv], axis=1), jnp.concatenate([zk, eye, zv], axis=1)


def _split_reference(local, qb, kt, p, v, segments):
    """`split_pass_mosaic`'s (O, fs, fm, Psi) from the Triton pass run on each segment's chunks alone, over the
    2K + V columns (zeros in front of v), from the identity bases; fs, fm, Psi per segment."""
    B, Tp, HV, K = kt.shape
    C, V = local.t.shape[-1], v.shape[-1]
    v_ext = jnp.concatenate([jnp.zeros(v.shape[:-1] + (2 * K,), v.dtype), v], axis=-1)
    s0, m0 = (jnp.broadcast_to(b, (B, HV) + b.shape) for b in _bases(K, V))
    outs = []
    for first, end in mosaic_pass.segment_bounds(Tp // C, segments):
        ts = slice(first * C, end * C)
        loc = type(local)(*(x[:, first:end] for x in local))
        o, fs, fm = _triton_pass(loc, qb[:, ts], kt[:, ts], p[:, ts], v_ext[:, ts], s0, m0, block_v=64, interpret=True)
        psi = o[..., :2 * K].transpose(0, 2, 1, 3).reshape(B * HV, (end - first) * C, 2 * K)
        outs.append((o[..., 2 * K:], fs, fm, psi))
    return outs


@pytest.mark.parametrize("T,segments,skip_first", [(192, 1, False), (320, 3, False), (320, 3, True), (256, 4, True)])
def test_interpret_split_pass_matches_triton_per_segment(T, segments, skip_first):
    """The split's pass (`split_pass_mosaic`): segments of whole chunks, ragged where G does not divide the chunks
    (5 chunks in 3 segments: 1, 2, 2; the short segment's missing step reads an identity chunk), two consumers,
    K = 64 (at K = 128 the interpreter hangs on the two-consumer pass with identity columns; the GPU runs K = 128
    in test_pallas.py's split tests) against the Triton pass on each segment alone. skip_first: segment 0's
    identity columns are not run (not compared)."""
    B, H, K, V = 2, 2, 64, 128
    local, qb, kt, p, v, _, _ = _inputs(B, T, H, K, V, dtype=jnp.float32, interpret=True)
    o, fs, fm, psi = mosaic_pass.split_pass_mosaic(local, qb, kt, p, v, *_bases(K, V), segments=segments,
                                                   skip_first=skip_first, block_v=64, consumers=2, interpret=True)
    fs, fm = (x.reshape((B, segments) + x.shape[1:]) for x in (fs, fm))
    psi = psi.reshape((B, segments, H) + psi.shape[1:])
    C = local.t.shape[-1]
    for g, ((first, end), (ro, rfs, rfm, rpsi)) in enumerate(
            zip(mosaic_pass.segment_bounds(T // C, segments), _split_reference(local, qb, kt, p, v, segments),
                strict=True)):
        cols = slice(2 * K if skip_first and g == 0 else 0, None)  # skipped: only the value columns were run
        mine = (o[:, first * C:end * C], fs[:, g, ..., cols], fm[:, g, ..., cols])
        ref = (ro, rfs[..., cols], rfm[..., cols])
        if not (skip_first and g == 0):
            mine += (psi[:, g, :, :(end - first) * C].reshape(rpsi.shape),)
            ref += (rpsi,)
        errs = rel_errs(mine, ref)
        assert all(e < 1e-6 for e in errs), (g, errs)  # NaN fails too


def test_split_pass_lowers_for_cuda_and_checks_its_arguments():
    """The split's configuration at S400's K, V (2K = 256 identity columns, two consumers, ragged: 4 chunks in
    3 segments, the first segment's identity columns skipped) lowers for CUDA; bad bases or segment counts are
    refused."""
    local, qb, kt, p, v, _, _ = _inputs(1, 256, 2, 128, 256, interpret=True)
    s_basis, m_basis = _bases(128, 256)
    fn = functools.partial(mosaic_pass.split_pass_mosaic, segments=3, skip_first=True, block_v=64, consumers=2)
    assert "mosaic_gpu" in _cuda_text(fn, (local, qb, kt, p, v, s_basis, m_basis))
    with pytest.raises(ValueError, match="segments=5 of 4 chunks"):
        mosaic_pass.split_pass_mosaic(local, qb, kt, p, v, s_basis, m_basis, segments=5, interpret=True)
    with pytest.raises(ValueError, match="Mosaic pass limits"):
        mosaic_pass.split_pass_mosaic(local, qb, kt, p, v, s_basis[:, :256], m_basis, segments=2, interpret=True)


def _lower_for_cuda(K, V, block_v, stages, consumers, save=False):
    fn = functools.partial(pass_forward_mosaic, block_v=block_v, stages=stages, consumers=consumers, save=save)
    return _cuda_text(fn, _inputs(1, 256, 2, K, V, interpret=True))


def _cuda_text(fn, args):
    """fn(*args) traced on abstract values and lowered for CUDA (no GPU needed): the module's text."""
    leaves, tree = jax.tree.flatten(args)
    f = jax.jit(lambda *a: fn(*jax.tree.unflatten(tree, a)))
    return f.trace(*(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves)).lower(
        lowering_platforms=("cuda",)).as_text()


@pytest.mark.parametrize("B,T,H,K,V,programs,stages,dtype,tol", [
    (1, 192, 2, 128, 128, 5, 2, jnp.float32, 1e-6),   # 12 items over 5 programs: the last ones repeated
    (2, 128, 1, 64, 128, 4, 3, jnp.float32, 1e-6),    # one K half (dattn in 32-column slices)
    (1, 128, 1, 256, 64, 3, 2, jnp.bfloat16, 1e-2)])  # four K halves (8-column dattn slices), one V block
def test_interpret_cotangents_match_xla(B, T, H, K, V, programs, stages, dtype, tol):
    """The nine results of the Mosaic pass-cotangent kernel against `pass_cotangents_xla`, interpret mode."""
    errs = mosaic_grads_check(B=B, T=T, H=H, K=K, V=V, programs=programs, stages=stages, dtype=dtype)
    assert all(e < tol for e in errs), errs


def test_cotangents_reject_shapes_outside_the_limits():
    args = grads_inputs(1, 128, 1, 96, 64, dtype=jnp.float32)
    with pytest.raises(ValueError, match="Mosaic cotangent kernel limits"):
        pass_cotangents_mosaic(*args, num_heads=1, interpret=True)


@pytest.mark.parametrize("K,V,stages", [(128, 256, 3), (256, 512, 3)])
def test_cotangents_lower_for_cuda_within_shared_memory(K, V, stages):
    args = grads_inputs(1, 256, 2, K, V)
    fn = functools.partial(pass_cotangents_mosaic, num_heads=2, stages=stages, programs=7)
    assert "mosaic_gpu" in _cuda_text(fn, args)


@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("K,V,stages", [(128, 256, 3), (256, 512, 3), (64, 128, 2)])
def test_gpu_cotangents_match_xla(K, V, stages):
    args = grads_inputs(2, 1024, 3, K, V)
    ours = jax.jit(functools.partial(pass_cotangents_mosaic, num_heads=3, stages=stages))(*args)
    ref = jax.jit(functools.partial(pass_cotangents_xla, num_heads=3))(*args)
    errs = rel_errs(ours, ref)
    assert all(e < 1e-2 for e in errs), errs
