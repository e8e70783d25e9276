"""The sequence split's last step as one Pallas kernel (Triton lowering): each segment's outputs plus the response
to its start state, O + Psi x_start (`mdn_jax.pallas.seq_split`).

One program per (segment row x value head, block of bt positions, block of bv value columns) reads a [bt, 2K]
tile of Psi (head-major), the [2K, bv] start state and the [bt, bv] tile of O, and writes O + Psi x_start over O
(aliased). In XLA the same step is a batched product into float32 [.., Tg, V] and a fusion adding it to O
through a transpose (H200, T=32768: 0.080 + 0.096 ms, ~600 MB moved); here Psi and O are read once (~300 MB).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mdn_jax.pallas import common


def _start_response_kernel(o_ref, psi_ref, x_ref, out_ref, *, num_heads, block_t, block_v, precision):
    r, j, vb = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    seg, head = r // num_heads, r % num_heads
    ts, vs = pl.ds(j * block_t, block_t), pl.ds(vb * block_v, block_v)
    acc = jnp.float64 if o_ref.dtype == jnp.float64 else jnp.float32
    response = common.dot(psi_ref[r, ts, :], x_ref[r, :, vs], precision, acc)
    out_ref[seg, ts, head, vs] = (o_ref[seg, ts, head, vs].astype(acc) + response).astype(out_ref.dtype)


def add_start_response(o, psi, starts, *, interpret: bool, block_t: int = 64, block_v: int = 64,
                       num_warps: int = 4, stages: int = 2):
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
        kernel, out_shape=jax.ShapeDtypeStruct(o.shape, o.dtype), grid=(R * HV, Tg // block_t, V // block_v),
        input_output_aliases={0: 0}, interpret=interpret,
        compiler_params=None if interpret else pltriton.CompilerParams(num_warps=num_warps, num_stages=stages),
    )(o, psi, starts)
