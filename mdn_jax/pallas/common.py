"""Helpers shared by the Pallas kernels: dot precision, storage dtypes, the pallas_call wrapper."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton


def dot(a, b, precision, acc, trans_a=False):
    if trans_a:
        a = a.T
    return jnp.dot(a, b, precision=precision, preferred_element_type=acc)


def dot_t(x, y, precision, acc):
    """x y^T for x [M, J], y [N, J] (contracting the last dims, no transposed operand)."""
    return lax.dot_general(x, y, (((1,), (1,)), ((), ())), precision=precision, preferred_element_type=acc)


def iota(shape, axis):
    return lax.broadcasted_iota(jnp.int32, shape, axis)


def pick_row(x, r):
    """Row r of x [R, C] as a vector [C]."""
    return jnp.sum(jnp.where(iota(x.shape, 0) == r, x, 0.0), axis=0)


def scalars_vector(n, *xs):
    """A vector [n] holding the scalars xs first, then zeros (kernels write small results as one row)."""
    idx = iota((n,), 0)
    out = 0.0
    for i in reversed(range(len(xs))):
        out = jnp.where(idx == i, xs[i], out)
    return out


def acc_dtype(dtype):
    """The accumulation dtype of operands of `dtype`: float64 for float64 (interpret mode), else float32."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def storage_dtype(op_dtype, acc_dtype):
    return op_dtype if op_dtype in (jnp.bfloat16, jnp.float16) else acc_dtype


def dot_precision(dtype, interpret: bool):
    if dtype not in (jnp.float32, jnp.float64):
        return None  # bf16/fp16 operands, fp32 accumulation
    if interpret:
        return lax.Precision.HIGHEST
    return lax.DotAlgorithmPreset.TF32_TF32_F32_X3


# Tests set this to fill every kernel output with NaN before the kernel runs (through input/output
# aliasing), so that an element the kernel fails to write cannot pass.
POISON_OUTPUTS = False


def call(kernel, grid, out_shape, interpret, num_warps, *args, stages=1):
    """pallas_call on whole-array refs; stages: Triton software-pipelining stages (`tuning.num_stages`)."""
    aliases = {}
    if POISON_OUTPUTS:
        poisoned = [jnp.full(s.shape, jnp.nan, s.dtype) for s in out_shape]
        aliases = {len(args) + i: i for i in range(len(poisoned))}
        n_in, inner = len(args), kernel

        def kernel(*refs):  # the aliased inputs arrive as extra input refs: skip them
            return inner(*refs[:n_in], *refs[n_in + len(poisoned):])

        args = args + tuple(poisoned)
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=grid, interpret=interpret, input_output_aliases=aliases,
        compiler_params=None if interpret else pltriton.CompilerParams(num_warps=num_warps, num_stages=stages),
    )(*args)


