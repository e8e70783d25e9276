"""`implementation="pallas"`: the chunk-local stage and the sequential pass (with the output) in Pallas kernels.

The op is one custom_vjp: forward = `chunk_local.chunk_local` then `chunk_pass.pass_forward` (which under
differentiation also saves the chunk states); backward = `chunk_pass.pass_backward` (reverse sweep and pass
cotangents), then the chunk-local VJP: the kernels of `mdn_jax.pallas.chunk_local_bwd` and
`mdn_jax.pallas.gate_vjp` from the saved T and gate coefficients (`MDN_LOCAL_VJP_KERNEL=0`: `local_stage_vjp`,
the same products in XLA). For dense rows the sequential passes may run in Mosaic GPU instead of Triton
(`tuning.mosaic_config`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mdn_jax.ops.core import CoreInputs
from mdn_jax.pallas.chunk_local import chunk_local
from mdn_jax.pallas.chunk_local_bwd import local_stage_vjp_kernel
from mdn_jax.pallas.chunk_pass import pass_backward, pass_forward
from mdn_jax.pallas.local_vjp import local_stage_vjp
from mdn_jax.pallas.mosaic_pass import supported as mosaic_supports
from mdn_jax.pallas.seq_split import SplitConfig, split_forward
from mdn_jax.pallas.tuning import (
    BlockConfig,
    block_config,
    local_vjp_config,
    mosaic_config,
    seq_split_segments,
    split_add_kernel,
    use_gate_vjp_kernel,
    use_local_vjp_kernel,
)


def _pow2_at_least_16(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _pad_last(x: jax.Array, size: int, axis: int = -1) -> jax.Array:
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _local(qb, kt, p, log_alpha, log_mu, beta, chunk, op_dtype, interpret, cfg: BlockConfig, with_residuals):
    return chunk_local(qb, kt, p, log_alpha, log_mu, beta, chunk=chunk, op_dtype=op_dtype, interpret=interpret,
                       num_warps=cfg.local_warps, solve_warps=cfg.solve_warps, with_residuals=with_residuals)


@functools.partial(jax.custom_vjp, nondiff_argnums=(11, 12, 13, 14, 15))
def _core(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk_init, chunk_final, chunk, op_dtype, interpret, cfg,
          split):
    """O [B, Tp, HV, V] and the final (S, M) table; qb, kt, p, v in op_dtype. split: `SplitConfig` of the
    sequence split (without differentiation only) or None."""
    if split is not None:
        return split_forward(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk=chunk, op_dtype=op_dtype,
                             interpret=interpret, split=split)
    local = _local(qb, kt, p, log_alpha, log_mu, beta, chunk, op_dtype, interpret, cfg, False)
    return pass_forward(local, qb, kt, p, v, s0, m0, chunk_init, chunk_final, save=False, block_v=cfg.block_v_infer,
                        interpret=interpret, num_warps=cfg.num_warps, mosaic=cfg.mosaic_infer)


def _core_fwd(qb, kt, p, v, log_alpha, log_mu, beta, s0, m0, chunk_init, chunk_final, chunk, op_dtype, interpret,
              cfg, split):
    del split  # differentiated: the chunk states for the backward come from the unsplit saving pass
    local, local_res = _local(qb, kt, p, log_alpha, log_mu, beta, chunk, op_dtype, interpret, cfg, True)
    o, fs, fm, pass_res = pass_forward(local, qb, kt, p, v, s0, m0, chunk_init, chunk_final, save=True,
                                       block_v=cfg.block_v_save, interpret=interpret, num_warps=cfg.num_warps,
                                       mosaic=cfg.mosaic)
    res = (qb, kt, p, v, log_alpha, log_mu, beta, s0, chunk_init, chunk_final, local, local_res, pass_res)
    return (o, fs, fm), res


def _core_bwd(chunk, op_dtype, interpret, cfg, split, res, cot):
    del split
    qb, kt, p, v, log_alpha, log_mu, beta, s0, chunk_init, chunk_final, local, local_res, pass_res = res
    local_cot, (ds0, dm0) = pass_backward(local, pass_res, qb, kt, p, s0, chunk_init, chunk_final, *cot,
                                          block_v=cfg.block_v, interpret=interpret, num_warps=cfg.num_warps,
                                          mosaic=cfg.mosaic)
    inputs = (qb, kt, p, v, log_alpha, log_mu, beta)
    if use_local_vjp_kernel():
        vjp_cfg = local_vjp_config()
        grads = local_stage_vjp_kernel(inputs + (local, local_res), local_cot, chunk, op_dtype, interpret=interpret,
                                       block_k=vjp_cfg.block_k, block_v=vjp_cfg.block_v,
                                       num_warps=vjp_cfg.num_warps, gate_kernel=use_gate_vjp_kernel())
    else:
        grads = local_stage_vjp(inputs + (local.t,), local_cot, chunk, op_dtype)
    return tuple(grads) + (ds0, dm0, None, None)


_core.defvjp(_core_fwd, _core_bwd)


def _mosaic_pass(K, V, C, rows, op_dtype, dense, interpret, identity_cols=0, infer=False):
    """The Mosaic GPU passes' configuration where `tuning.mosaic_config` picks them and their kernels take the
    shapes (`mosaic_pass.supported`), else None (the Triton passes); identity_cols > 0: the sequence split's pass;
    infer: the forward pass without differentiation."""
    mosaic = mosaic_config(K, V, rows, op_dtype, dense=dense, interpret=interpret, split=identity_cols > 0,
                           infer=infer)
    if mosaic is None or not mosaic_supports(K, V, C, mosaic.block_v, mosaic.consumers, identity_cols, mosaic.stages):
        return None
    return mosaic


def _split_config(rows, num_chunks, K, V, C, op_dtype, dense, interpret, zero_start) -> SplitConfig | None:
    """The sequence split of the forward without differentiation (`tuning.seq_split_segments`), with the
    configuration of its Mosaic GPU pass over 2K + V columns; None: no split (also where that pass would not be
    the Mosaic one)."""
    segments = seq_split_segments(rows, num_chunks, K, V, dense=dense, zero_start=zero_start)
    if segments == 1:
        return None
    cols = 2 * K + V
    mosaic = _mosaic_pass(K, cols, C, rows * segments, op_dtype, dense, interpret, identity_cols=2 * K)
    if mosaic is None:
        return None
    return SplitConfig(segments, block_config(K, cols, C, rows=rows * segments)._replace(mosaic=mosaic),
                       split_add_kernel(), zero_start)


def pallas_core(x: CoreInputs, chunk_size: int, *, operand_dtype=None, interpret: bool | None = None,
                dense_rows: bool = False, zero_start: bool = False):
    """Same contract as `mdn_jax.ops.chunked.chunked_core`.

    operand_dtype: dtype of the tensor-core operands in the kernels (the op's input dtype; bf16 in
      training), accumulation in float32. interpret: run the kernels in Pallas interpret mode (default:
      when no GPU is present). dense_rows: the layout is `dense_layout`'s (one sequence per row, N = B), which
      lets the sequential passes run as the Mosaic GPU kernels (`tuning.mosaic_config`). zero_start: x.s0 and
      x.m0 are known to be zero (no initial state given), which the forward's sequence split uses.
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
    dense = dense_rows and x.s0.dtype == jnp.float32
    cfg = cfg._replace(mosaic=_mosaic_pass(Kp, Vp, C, B * HV, op_dtype, dense, interpret),
                       mosaic_infer=_mosaic_pass(Kp, Vp, C, B * HV, op_dtype, dense, interpret, infer=True))
    split = _split_config(B * HV, Tp // C, Kp, Vp, C, op_dtype, dense, interpret, zero_start)
    s0, m0 = (_pad_last(_pad_last(s, Vp), Kp, axis=-2) for s in (x.s0, x.m0))
    qb, kt, p = (_pad_last(a, Kp) for a in (x.qb, x.kt, x.p))
    v = _pad_last(x.v, Vp)
    qb, kt, p, v = (a.astype(op_dtype) for a in (qb, kt, p, v))
    o, fs, fm = _core(qb, kt, p, v, x.log_alpha, x.log_mu, x.beta, s0, m0, x.chunk_init, x.chunk_final, C, op_dtype,
                      interpret, cfg, split)
    o = o[..., :V]
    return o, (fs[..., :K, :V], fm[..., :K, :V])
