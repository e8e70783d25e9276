"""The sequence split's last step as one Pallas kernel (Triton lowering): each segment's outputs plus the response
to its start state, O + Psi x_start (`mdn_jax.pallas.seq_split`).

One program per (segment row x value head, block of bt positions) reads a [bt, 2K] tile of Psi (head-major) once
and, for each block of bv value columns (unrolled), the [2K, bv] start state (from L2: one [2K, V] per segment
row) and the [bt, bv] tile of O, and writes O + Psi x_start over O (aliased). In XLA (`add_start_response_xla`,
the default) the same step is a batched product into float32 [.., Tg, V] and a fusion adding it to O through a
transpose (H200, T=32768: 0.080 + 0.096 ms, ~600 MB moved); here Psi and O are read once (~300 MB). Compiled for
sm_90a by triton 3.6 at those shapes (`experiments/kernel_regs.py`): 128 registers, no spills.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mdn_jax.pallas import common


def _start_response_kernel(o_ref, psi_ref, x_ref, out_ref, *, num_heads, block_t, block_v, precision):
    r, j = pl.program_id(0), pl.program_id(1)
    seg, head = r // num_heads, r % num_heads
    ts = pl.ds(j * block_t, block_t)
    acc = common.acc_dtype(o_ref.dtype)
    psi = psi_ref[r, ts, :]  # read once for all value blocks
    for vb in range(o_ref.shape[-1] // block_v):
        vs = pl.ds(vb * block_v, block_v)
        response = common.dot(psi, x_ref[r, :, vs], precision, acc)
        out_ref[seg, ts, head, vs] = (o_ref[seg, ts, head, vs].astype(acc) + response).astype(out_ref.dtype)


def add_start_response(o, psi, starts, *, interpret: bool, block_t: int = 64, block_v: int = 64,
                       num_warps: int = 4):
    """o: [R, Tg, HV, V] (R segment rows, operand dtype), psi: [R * HV, Tg, 2K] (head-major, o's dtype),
    starts: [R * HV, 2K, V] (o's dtype) -> o + Psi x_start [R, Tg, HV, V] in o's dtype, accumulated in float32
    (float64 for float64 o). Tg must be a multiple of block_t (the chunk size divides it) and V of block_v
    (both clipped to the array's size)."""
    R, Tg, HV, V = o.shape
    block_t, block_v = min(block_t, Tg), min(block_v, V)
    if psi.shape[:2] != (R * HV, Tg) or starts.shape != (R * HV, psi.shape[2], V):
        raise ValueError(f"add_start_response: o {o.shape}, psi {psi.shape}, starts {starts.shape} disagree")
    if Tg % block_t or V % block_v or not (psi.dtype == starts.dtype == o.dtype):
        raise ValueError(f"add_start_response: Tg={Tg}, V={V} by blocks {block_t}, {block_v}; dtypes "
                         f"{o.dtype}, {psi.dtype}, {starts.dtype}")
    kernel = functools.partial(_start_response_kernel, num_heads=HV, block_t=block_t, block_v=block_v,
                               precision=common.dot_precision(o.dtype, interpret))
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(o.shape, o.dtype), grid=(R * HV, Tg // block_t),
        input_output_aliases={0: 0}, interpret=interpret,
        compiler_params=None if interpret else pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
    )(o, psi, starts)


def add_start_response_xla(o, psi, starts):
    """`add_start_response` as XLA's batched product (float32, about float32 for float32 operands as the pass's
    own products) and add."""
    R, Tg, HV, V = o.shape
    acc = common.acc_dtype(o.dtype)
    sixteen_bit = jnp.dtype(o.dtype).itemsize == 2
    psi_x = jnp.einsum("rti,riv->rtv", psi, starts, preferred_element_type=acc,
                       precision=None if sixteen_bit else lax.Precision.HIGHEST)
    return (o.astype(acc) + psi_x.reshape(R, HV, Tg, V).transpose(0, 2, 1, 3)).astype(o.dtype)
