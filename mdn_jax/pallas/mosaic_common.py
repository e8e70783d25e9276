"""Helpers of the Mosaic GPU kernels: the row-vector layout of wgmma tiles, the shared-memory transforms, products
into fresh accumulators and wgmma accumulation onto float32 tiles held in registers (`mosaic_grads`, and the
passes' state updates of `mosaic_pass`: H100, experiments/results/h100_2026-12-07_d0761f7, S400 forward+backward
3.535 ms against 3.793 with fresh accumulators added afterwards, 1.3B 5.036 against 5.677)."""

from __future__ import annotations

import os

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

ROW = plgpu.Layout.WGMMA.reduce(1)  # a [C] vector indexed by the rows of a [C, N] wgmma tile


def products(*pairs):
    """wgmma a @ b for each (a, b) into fresh float32 accumulators, issued together, then read."""
    def run(*accs):
        for acc, (a, b) in zip(accs, pairs, strict=True):
            plgpu.wgmma(acc, a, b)
        return tuple(acc[...] for acc in accs)
    return pl.run_scoped(run, *(plgpu.ACC((a.shape[0], b.shape[1]), jnp.float32) for a, b in pairs))


def smem_transforms(cols: int, itemsize: int, interpret: bool):
    """Tiling and swizzle of a shared-memory tile with `cols` columns (none in interpret mode, whose interpreter
    rejects them, and for rows of 16 bytes: the narrowest swizzle is 32)."""
    if interpret or cols * itemsize < 32:
        return ()
    swizzle = min(128, cols * itemsize)
    return plgpu.TilingTransform((8, swizzle // itemsize)), plgpu.SwizzleTransform(swizzle)


def in_place(interpret: bool, env: str = "MDN_MOSAIC_ACC") -> bool:
    """Whether `accumulate` runs its products in accumulators initialised with the addends (no second set of
    registers), the GPU default, or in fresh accumulators added afterwards (interpret mode, whose interpreter
    cannot run wgmma on an initialised accumulator; env=fresh on the GPU, for timing). env: MDN_MOSAIC_ACC for the
    pass-cotangent kernel, MDN_MOSAIC_PASS_ACC for the sequential passes' state updates."""
    mode = os.environ.get(env, "inplace")
    if mode not in ("inplace", "fresh"):
        raise ValueError(f"{env} must be 'inplace' or 'fresh', got {mode!r}")
    return not interpret and mode == "inplace"


def accumulate(groups, *, in_place: bool, during=None, stored: bool = False):
    """x + sum_i a_i @ b_i for each group (x, [(a_1, b_1), ...]): the wgmma of all groups issued together, x a
    float32 array in the wgmma layout, a_i, b_i shared-memory operands. in_place:
    the products accumulate onto x (no second set of registers): in `ACC.init` accumulators (`run_state`), or
    with stored, in scoped accumulators that x is stored into (inside a pipeline body, whose buffer slot is a
    traced index, `run_state` fails to lower). `during()` runs while they compute. Returns the results in
    order."""
    def issue(accs):
        for acc, (_, pairs) in zip(accs, groups, strict=True):
            for a, b in pairs:
                plgpu.wgmma(acc, a, b)
        if during is not None:
            during()

    if in_place and not stored:
        return pl.run_state(issue)(tuple(plgpu.ACC.init(x) for x, _ in groups))

    def run_scoped(*accs):
        if in_place:
            for acc, (x, _) in zip(accs, groups, strict=True):
                acc[...] = x
        issue(accs)
        if in_place:
            return tuple(acc[...] for acc in accs)
        return tuple(x + acc[...] for acc, (x, _) in zip(accs, groups, strict=True))
    shapes = [(pairs[0][0].shape[0], pairs[0][1].shape[1]) for _, pairs in groups]
    return pl.run_scoped(run_scoped, *(plgpu.ACC(s, jnp.float32) for s in shapes))

