"""`implementation="pallas"`: the chunk-local stage and the sequential pass (with the output) in Pallas kernels.

Without differentiation the op runs `chunk_local_infer` and `chunk_pass_infer` (the WY products formed inside the
pass from T: fewer bytes); under differentiation the composition of the chunk-local stage and `chunk_pass`, which
saves what the backward reads.

The chunk-local stage runs as the kernels of `mdn_jax.pallas.chunk_local`; its VJP is the kernels of
`mdn_jax.pallas.chunk_local_bwd` and `mdn_jax.pallas.gate_vjp` from the saved T and gate coefficients (or with
`MDN_LOCAL_VJP_KERNEL=0` `local_stage_vjp`, the same products in XLA).
`MDN_LOCAL_KERNEL=0` runs the stage in XLA with XLA's autodiff instead (for side-by-side measurement).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mdn_jax.ops.chunked import prepare_chunks
from mdn_jax.ops.core import CoreInputs
from mdn_jax.pallas import tuning
from mdn_jax.pallas.chunk_local import chunk_local, chunk_local_infer
from mdn_jax.pallas.chunk_local_bwd import local_stage_vjp_kernel
from mdn_jax.pallas.chunk_pass import chunk_pass, chunk_pass_infer
from mdn_jax.pallas.local_vjp import local_stage_vjp
from mdn_jax.pallas.tuning import block_config, local_vjp_config, use_gate_vjp_kernel, use_local_kernel


def _pow2_at_least_16(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _pad_last(x: jax.Array, size: int, axis: int = -1) -> jax.Array:
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _xla_local(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype):
    """The chunk-local stage in XLA, in the kernel layouts: [B*HV, NC, C, ...], operands in op_dtype."""
    x = CoreInputs(qb, kt, p, v, log_alpha, log_mu, beta, None, None, None, None)
    t = prepare_chunks(x, chunk, operand_dtype=None if op_dtype in (jnp.float32, jnp.float64) else op_dtype)
    B, HV, NC, C, K = t.y.shape
    rows = lambda a: a.reshape((B * HV, NC) + a.shape[3:])  # noqa: E731
    flat = lambda a: rows(a).astype(op_dtype)  # noqa: E731
    decay = _pad_last(t.decay, C).astype(jnp.float32)
    return (rows(t.a).astype(jnp.float32), rows(t.b).astype(jnp.float32), rows(decay), flat(t.qb), flat(t.attn),
            flat(t.u), flat(t.y), flat(t.z), flat(t.kg), flat(t.kr))


def _kernel_local(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype, interpret, with_t=False):
    warps = block_config(qb.shape[-1], v.shape[-1], chunk).local_warps
    return chunk_local(qb, kt, p, v, log_alpha, log_mu, beta, chunk=chunk, op_dtype=op_dtype, interpret=interpret,
                       num_warps=warps, with_t=with_t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9))
def _local_stage(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype, interpret):
    """The chunk-local stage: Pallas kernels, backward by `local_stage_vjp` (MDN_LOCAL_KERNEL=0: XLA and its
    autodiff)."""
    if not use_local_kernel():
        return _xla_local(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype)
    return _kernel_local(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype, interpret)


def _local_stage_fwd(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype, interpret):
    if not use_local_kernel():
        return jax.vjp(functools.partial(_xla_local, chunk=chunk, op_dtype=op_dtype), qb, kt, p, v, log_alpha,
                       log_mu, beta)
    outs, saved = _kernel_local(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype, interpret, with_t=True)
    dtypes = jnp.zeros((0,), qb.dtype)  # the inputs' dtype (a size-0 array: residuals must be arrays)
    return outs, (tuple(x.astype(op_dtype) for x in (qb, kt, p, v)) + (log_alpha, log_mu, beta, saved), dtypes)


def _local_stage_bwd(chunk, op_dtype, interpret, res, cot):
    if not use_local_kernel():
        return res(cot)  # the XLA stage's vjp
    saved, dtypes = res
    cfg = local_vjp_config()
    if cfg.use_kernel:
        grads = local_stage_vjp_kernel(saved, cot, chunk, op_dtype, interpret=interpret, block_k=cfg.block_k,
                                       block_v=cfg.block_v, num_warps=cfg.num_warps,
                                       gate_kernel=use_gate_vjp_kernel())
    else:
        grads = local_stage_vjp(saved[:7] + (saved[7].t,), cot, chunk, op_dtype)
    return tuple(g.astype(dtypes.dtype) for g in grads[:4]) + grads[4:]


_local_stage.defvjp(_local_stage_fwd, _local_stage_bwd)


def _train_core(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk_init, chunk_final, chunk, op_dtype, interpret,
                cfg):
    """The op as the differentiable composition of the chunk-local stage and `chunk_pass` (each a custom_vjp)."""
    a, b, decay, qbf, attn, u, y, z, kg, kr = _local_stage(qb, kt, p, v, log_alpha, log_mu, beta, chunk, op_dtype,
                                                           interpret)
    return chunk_pass(a, b, qbf, attn, u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final,
                      (cfg.block_v_infer, cfg.block_v_save, cfg.block_v), interpret, cfg.num_warps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(11, 12, 13, 14))
def _core(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk_init, chunk_final, chunk, op_dtype, interpret, cfg):
    """Without differentiation: `chunk_local_infer` and `chunk_pass_infer` (no WY products, no Kg, Kr).
    Under differentiation: `_train_core` and its VJP."""
    if not (use_local_kernel() and tuning.use_infer_pass()):
        return _train_core(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk_init, chunk_final, chunk, op_dtype,
                           interpret, cfg)
    qb, kt, p, v = (x.astype(op_dtype) for x in (qb, kt, p, v))
    t, attn, vecs, decay = chunk_local_infer(qb, kt, p, log_alpha, log_mu, beta, chunk=chunk, op_dtype=op_dtype,
                                             interpret=interpret, num_warps=cfg.local_warps)
    return chunk_pass_infer(t, attn, vecs, decay, qb, kt, p, v, s0, m0, chunk_init, chunk_final,
                            block_v=cfg.block_v_infer, interpret=interpret, num_warps=cfg.num_warps)


def _core_fwd(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk_init, chunk_final, chunk, op_dtype, interpret,
              cfg):
    train = functools.partial(_train_core, chunk=chunk, op_dtype=op_dtype, interpret=interpret, cfg=cfg)
    return jax.vjp(train, qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk_init, chunk_final)


def _core_bwd(chunk, op_dtype, interpret, cfg, vjp, cot):
    return vjp(cot)[:9] + (None, None)


_core.defvjp(_core_fwd, _core_bwd)


def pallas_core(x: CoreInputs, chunk_size: int, *, operand_dtype=None, interpret: bool | None = None):
    """Same contract as `mdn_jax.ops.chunked.chunked_core`.

    operand_dtype: dtype of the tensor-core operands in the kernels (the op's input dtype; bf16 in
      training), accumulation in float32. interpret: run the kernels in Pallas interpret mode (default:
      when no GPU is present).
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    B, Tp, HV, K = x.kt.shape
    V = x.v.shape[-1]
    C = chunk_size
    Kp, Vp = _pow2_at_least_16(K), _pow2_at_least_16(V)
    cfg = block_config(Kp, Vp, C, rows=B * HV)
    op_dtype = jnp.dtype(operand_dtype or x.qb.dtype)
    if op_dtype == jnp.float64 and not interpret:
        raise TypeError("implementation='pallas' on GPU takes float32/bfloat16/float16 inputs, not float64")
    s0, m0 = (_pad_last(_pad_last(s, Vp), Kp, axis=-2) for s in (x.s0, x.m0))
    qb, kt, p = (_pad_last(a, Kp) for a in (x.qb, x.kt, x.p))
    v = _pad_last(x.v, Vp)
    o, fs, fm = _core(qb, kt, p, v, x.log_alpha, x.log_mu, x.beta, s0, m0, x.chunk_init, x.chunk_final, C, op_dtype,
                      interpret, cfg)
    o = o[..., :V]
    return o, (fs[..., :K, :V], fm[..., :K, :V])
