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
    (256, 512, 32, 1, 2, False), (256, 512, 32, 1, 2, True)])
def test_gpu_matches_triton_pass(K, V, block_v, stages, consumers, save):
    args = _inputs(2, 1024, 2, K, V)
    ours = jax.jit(lambda *a: pass_forward_mosaic(*a, block_v=block_v, stages=stages, consumers=consumers,
                                                  save=save))(*args)
    ref = jax.jit(lambda *a: _triton_pass(*a, block_v=16 if K > 128 else 32, interpret=False, save=save))(*args)
    errs = rel_errs(_flat(ours), _flat(ref))
    assert all(e < 2e-2 for e in errs), errs


@pytest.mark.skipif(not ON_GPU, reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("K,V,block_v,stages,consumers", [(128, 256, 64, 2, 1), (128, 256, 64, 1, 2),
                                                         (256, 512, 64, 1, 1), (256, 512, 32, 1, 2)])
def test_gpu_sweep_matches_triton_sweep(K, V, block_v, stages, consumers):
    local, qb, kt, p, *_ = _inputs(2, 1024, 2, K, V)
    args = (local, qb, kt, p, *_cotangents(2, 1024, 2, K, V))
    ours = jax.jit(lambda *a: sweep_mosaic(*a, block_v=block_v, stages=stages, consumers=consumers))(*args)
    ref = jax.jit(lambda *a: _triton_sweep(*a, block_v=16 if K > 128 else 32, interpret=False))(*args)
    errs = rel_errs(ours, ref)
    assert all(e < 2e-2 for e in errs), errs


@pytest.mark.parametrize("K,V,block_v,stages,consumers,save", [(128, 256, 64, 2, 1, False), (128, 256, 64, 1, 2, False),
                                                              (256, 512, 64, 1, 1, False), (128, 256, 64, 2, 1, True),
                                                              (128, 256, 64, 1, 2, True), (256, 512, 32, 1, 2, True)])
def test_lowers_for_cuda_within_shared_memory(K, V, block_v, stages, consumers, save):
    """The Mosaic GPU lowering (layouts, transforms, the shared-memory budget) of the GPU configurations, run on
    any machine: `lower(lowering_platforms=("cuda",))` needs no GPU."""
    assert "mosaic_gpu" in _lower_for_cuda(K, V, block_v, stages, consumers, save)


@pytest.mark.parametrize("K,V,block_v,stages,consumers", [(128, 256, 64, 2, 1), (128, 256, 64, 1, 2),
                                                         (256, 512, 64, 1, 1), (256, 512, 32, 1, 2)])
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


def _with_identity_columns(local, qb, kt, p, v, s0, m0, identity_cols):
    """The pass's inputs with identity_cols more state columns in front (random start states for all columns)."""
    extra = jax.random.normal(jax.random.PRNGKey(5), s0.shape[:-1] + (2 * identity_cols,), s0.dtype)
    return (local, qb, kt, p, v, jnp.concatenate([extra[..., :identity_cols], s0], axis=-1),
            jnp.concatenate([extra[..., identity_cols:], m0], axis=-1))


def test_interpret_identity_columns_match_triton_pass():
    """identity_cols (the sequence split's pass): zero values in the leading state columns, their outputs as the
    head-major Psi, against the Triton pass over the same columns with zeros concatenated in front of v."""
    B, T, H, K, V, ident = 2, 192, 2, 64, 128, 128
    args = _with_identity_columns(*_inputs(B, T, H, K, V, dtype=jnp.float32, interpret=True), ident)
    o, fs, fm, psi = pass_forward_mosaic(*args, block_v=64, stages=1, consumers=2, identity_cols=ident,
                                         interpret=True)
    local, qb, kt, p, v, s0, m0 = args
    v_ext = jnp.concatenate([jnp.zeros(v.shape[:-1] + (ident,), v.dtype), v], axis=-1)
    ro, rfs, rfm = _triton_pass(local, qb, kt, p, v_ext, s0, m0, block_v=64, interpret=True)
    ref_psi = ro[..., :ident].transpose(0, 2, 1, 3).reshape(B * H, T, ident)
    errs = rel_errs((o, fs, fm, psi), (ro[..., ident:], rfs, rfm, ref_psi))
    assert all(e < 1e-6 for e in errs), errs


def test_identity_columns_lower_for_cuda_and_reject_saving():
    """The split's configuration at S400's K, V (256 identity columns, two consumers) lowers for CUDA; with
    save=True, or not a multiple of the program's columns, identity columns are refused."""
    args = _with_identity_columns(*_inputs(1, 256, 2, 128, 256, interpret=True), 256)
    fn = functools.partial(pass_forward_mosaic, block_v=64, stages=1, consumers=2, identity_cols=256)
    assert "mosaic_gpu" in _cuda_text(fn, args)
    with pytest.raises(ValueError, match="identity_cols"):
        pass_forward_mosaic(*args, block_v=64, consumers=2, identity_cols=256, save=True, interpret=True)
    args = _with_identity_columns(*_inputs(1, 128, 1, 64, 128, dtype=jnp.float32, interpret=True), 64)
    with pytest.raises(ValueError, match="identity_cols"):
        pass_forward_mosaic(*args, block_v=64, consumers=2, identity_cols=64, interpret=True)


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
