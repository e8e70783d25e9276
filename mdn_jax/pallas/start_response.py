"""The sequence split's last step as one Pallas kernel (Triton lowering): each segment's outputs plus the response
to its start state, O + Psi x_start (`mdn_jax.pallas.seq_split`).

The segments are whole chunks (`mosaic_pass.segment_bounds`, ragged by at most one chunk). One program per
(row x segment x value head, chunk of the segment) reads a [C, 2K] tile of Psi (head-major, by position in the
segment) once and, for each block of bv value columns (unrolled), the [2K, bv] start state (from L2: one [2K, V]
per segment row) and the [C, bv] tile of O, and writes O + Psi x_start over O (aliased); segments before
`first_segment` (the first one, from a zero start) are left as they are. In XLA (`add_start_response_xla`) the
same step is a batched product into float32 and an add through a transpose (H200, T=32768: 0.080 + 0.096 ms,
~600 MB moved); here Psi and O are read once (~300 MB). Compiled for sm_90a by triton 3.6 at those shapes
(`experiments/kernel_regs.py`): 128 registers, no spills.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mdn_jax.pallas import common
from mdn_jax.pallas.mosaic_pass import segment_bounds


def _start_response_kernel(o_ref, psi_ref, x_ref, out_ref, *, num_heads, segments, first_segment, num_chunks,
                           chunk, block_v, precision):
    r, j = pl.program_id(0), pl.program_id(1)
    later = segments - first_segment  # segments with a response
    row, head = r // (later * num_heads), r % num_heads
    g = first_segment + (r // num_heads) % later
    first = g * num_chunks // segments

    @pl.when(j < (g + 1) * num_chunks // segments - first)
    def _():
        acc = common.acc_dtype(o_ref.dtype)
        psi = psi_ref[(row * segments + g) * num_heads + head, pl.ds(j * chunk, chunk), :]  # once for all blocks
        ts = pl.ds((first + j) * chunk, chunk)
        for vb in range(o_ref.shape[-1] // block_v):
            vs = pl.ds(vb * block_v, block_v)
            response = common.dot(psi, x_ref[r, :, vs], precision, acc)
            out_ref[row, ts, head, vs] = (o_ref[row, ts, head, vs].astype(acc) + response).astype(out_ref.dtype)


def _check(o, psi, starts, segments, first_segment, chunk):
    B, Tp, HV, V = o.shape
    NC = Tp // chunk
    steps = -(-NC // max(segments, 1))
    ok = (Tp % chunk == 0 and 1 <= segments <= NC and 0 <= first_segment < segments
          and psi.shape[:2] == (B * segments * HV, steps * chunk)
          and starts.shape == (B * (segments - first_segment) * HV, psi.shape[2], V))
    if not ok:
        raise ValueError(f"add_start_response: o {o.shape}, psi {psi.shape}, starts {starts.shape} disagree with "
                         f"{segments} segments of chunk {chunk} from segment {first_segment}")
    if not psi.dtype == starts.dtype == o.dtype:
        raise ValueError(f"add_start_response: dtypes {o.dtype}, {psi.dtype}, {starts.dtype} differ")


def add_start_response(o, psi, starts, *, segments: int, first_segment: int, chunk: int, interpret: bool,
                       block_v: int = 64, num_warps: int = 4):
    """o: [B, Tp, HV, V] (operand dtype, every segment's output from its own start), psi: [B * G * HV, L * chunk,
    2K] (L = ceil(NC / G), row (b G + g) HV + head; `mosaic_pass.split_pass_mosaic`'s), starts:
    [B * (G - first_segment) * HV, 2K, V] (segments first_segment .. G - 1, o's dtype) -> o + Psi x_start in o's
    dtype, accumulated in float32 (float64 for float64 o); segments before first_segment keep o. V must be a
    multiple of block_v (clipped to V)."""
    _check(o, psi, starts, segments, first_segment, chunk)
    B, Tp, HV, V = o.shape
    block_v = min(block_v, V)
    if V % block_v:
        raise ValueError(f"add_start_response: V={V} is not a multiple of block_v={block_v}")
    NC = Tp // chunk
    kernel = functools.partial(_start_response_kernel, num_heads=HV, segments=segments, first_segment=first_segment,
                               num_chunks=NC, chunk=chunk, block_v=block_v,
                               precision=common.dot_precision(o.dtype, interpret))
    return pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct(o.shape, o.dtype),
        grid=(starts.shape[0], psi.shape[1] // chunk), input_output_aliases={0: 0}, interpret=interpret,
        compiler_params=None if interpret else pltriton.CompilerParams(num_warps=num_warps, num_stages=1),
    )(o, psi, starts)


def add_start_response_xla(o, psi, starts, *, segments: int, first_segment: int, chunk: int):
    """`add_start_response` as XLA's batched products (float32, about float32 for float32 operands as the pass's
    own products), one per segment, and adds."""
    _check(o, psi, starts, segments, first_segment, chunk)
    B, Tp, HV, V = o.shape
    acc = common.acc_dtype(o.dtype)
    sixteen_bit = jnp.dtype(o.dtype).itemsize == 2
    psi = psi.reshape(B, segments, HV, psi.shape[1], psi.shape[2])
    starts = starts.reshape(B, segments - first_segment, HV, starts.shape[1], V)
    pieces = []
    for g, (first, end) in enumerate(segment_bounds(Tp // chunk, segments)):
        piece = o[:, first * chunk:end * chunk]
        if g >= first_segment:
            psi_x = jnp.einsum("bhti,bhiv->bthv", psi[:, g, :, :(end - first) * chunk], starts[:, g - first_segment],
                               preferred_element_type=acc,
                               precision=None if sixteen_bit else lax.Precision.HIGHEST)
            piece = (piece.astype(acc) + psi_x).astype(o.dtype)
        pieces.append(piece)
    return jnp.concatenate(pieces, axis=1)
