"""`implementation="pallas"`: chunk-local stages in XLA, the sequential pass in Pallas kernels."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from mdn_jax.ops.chunked import chunk_output, prepare_chunks
from mdn_jax.ops.core import CoreInputs
from mdn_jax.pallas.chunk_pass import chunk_pass
from mdn_jax.pallas.recurrence import recurrence
from mdn_jax.pallas.tuning import block_config

# Output fused into the sequential kernels (default) or computed by XLA after the pass (MDN_FUSED=0).
FUSED_OUTPUT = os.environ.get("MDN_FUSED", "1") != "0"


def _pow2_at_least_16(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _pad_last(x: jax.Array, size: int, axis: int = -1) -> jax.Array:
    extra = size - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def pallas_core(x: CoreInputs, chunk_size: int, *, operand_dtype=None, interpret: bool | None = None):
    """Same contract as `mdn_jax.ops.chunked.chunked_core`.

    operand_dtype: dtype of the tensor-core operands in the kernels (the op's input dtype; bf16 in
      training), accumulation in float32. interpret: run the kernels in Pallas interpret mode (default:
      when no GPU is present).
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    t = prepare_chunks(x, chunk_size)
    B, HV, NC, C, K = t.y.shape
    V = t.u.shape[-1]
    Kp, Vp = _pow2_at_least_16(K), _pow2_at_least_16(V)
    cfg = block_config(Kp, Vp, C)
    op_dtype = jnp.dtype(operand_dtype or x.s0.dtype)
    if op_dtype == jnp.float64 and not interpret:
        raise TypeError("implementation='pallas' on GPU takes float32/bfloat16/float16 inputs, not float64")

    def flat(a, size):  # [B, HV, NC, C, D] -> [B*HV, NC, C, size] in the operand dtype
        return _pad_last(a, size).reshape(B * HV, NC, C, size).astype(op_dtype)

    s0, m0 = (_pad_last(_pad_last(s, Vp), Kp, axis=-2) for s in (x.s0, x.m0))
    if FUSED_OUTPUT:
        rows = lambda a: a.reshape((B * HV, NC) + a.shape[3:])  # noqa: E731
        o, fs, fm = chunk_pass(
            rows(t.a), rows(t.b), flat(t.qb, Kp), flat(t.attn, C), flat(t.u, Vp), flat(t.y, Kp), flat(t.z, Kp),
            flat(t.kg, Kp), flat(t.kr, Kp), rows(t.decay), s0, m0, x.chunk_init, x.chunk_final, cfg.block_v,
            interpret, cfg.num_warps)
        o = jnp.moveaxis(o.reshape(B, HV, NC * C, Vp)[..., :V], 1, 2)
        return o, (fs[..., :K, :V], fm[..., :K, :V])
    s_start, m_start, n, fs, fm = recurrence(
        flat(t.u, Vp), flat(t.y, Kp), flat(t.z, Kp), flat(t.kg, Kp), flat(t.kr, Kp),
        t.decay.reshape(B * HV, NC, 3), s0, m0, x.chunk_init, x.chunk_final,
        cfg.block_v, interpret, cfg.num_warps)

    def unflat(a, rows, cols):
        return a.reshape((B, HV, NC) + a.shape[2:])[..., :rows, :cols]

    o = chunk_output(t, unflat(s_start, K, V), unflat(m_start, K, V), unflat(n, C, V))
    return o, (fs[..., :K, :V], fm[..., :K, :V])
