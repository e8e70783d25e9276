"""The pass cotangents of `mdn_jax.pallas.chunk_grads` in Mosaic GPU (wgmma, TMA): the same products of saved
tiles, the same results as `chunk_grads.pass_cotangents`.

Work item: (row x head, chunk, 64 rows of K). Its seven products reduce over V, which a warp-specialized pipeline
brings in [., 64] column blocks by TMA (dO, dN, N [C, 64]; S_c, M_c, lS, lM [64, 64]); two compute warpgroups
each own 32 of the item's K columns (six [C, 32] float32 accumulators and a [C, C / (2 K/64)] slice of dattn,
~104 registers), so the accumulators fit beside the tiles they read. On the GPU each V block's seven products
accumulate in place onto them (`mosaic_common.accumulate`; no spills, where fresh accumulators added afterwards
spilled):

    dQb = diag(a) dO S^T - diag(b) dO M^T,  dY = -dN S^T,  dZ = dN M^T,  dKg = N lS^T,  dKr = -N lM^T,
    dattn = dO N^T,  da = rowsum(Qb o dO S^T),  db = -rowsum(Qb o dO M^T),  d(a_L, b_L, m_L) = (<lS, S>, -<lS, M>,
    <lM, M>).

The kernel is persistent: `programs` programs (about one per SM) each run one pipeline over
(items_per_program, V / 64) steps, so the next item's tiles load while the current one finishes; at an item's
last V block the accumulators go out (by TMA through shared memory) and are reset. da, db and the decay sums
leave as per-warpgroup row partials that XLA adds up. Limits (`supported`): C = 64, K a multiple of 64 up to 256,
V a multiple of 64, 16-bit operands on the GPU. Interpret mode (CPU) drops the tiling/swizzle transforms.

H200, the kernel alone (experiments/results/h200_2026-12-03_53b9edd): S400 0.466 ms at 3 stages (0.495 at 2) vs
0.527 with fresh accumulators at 2 (the kernel of 2f92d60; 0.575 at 3) and 0.653 for the Triton kernel; 1.3B 0.741
(0.789) vs 0.836 and 1.111. Bringing the epilogue's qb and (a, b) by TMA at an item's first block, and reading each
decay tile once, was slower (0.61, 0.91 at 2b82f96; h200_2026-12-02_83270bd).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from mdn_jax.pallas import mosaic_common
from mdn_jax.pallas.mosaic_common import ROW, accumulate, smem_transforms

KH = 64  # K rows of the state tiles per work item
KQ = 32  # K columns of the outputs per compute warpgroup
BV = 64  # V columns per pipeline step
_WGS = 2  # compute warpgroups


def supported(K: int, V: int, C: int) -> bool:
    """Whether the kernel takes these shapes: chunk 64 (the wgmma M), K a multiple of 64 up to 256 (dattn's
    columns split over 2 K / 64 warpgroups, at least 8 each), V a multiple of 64."""
    return C == 64 and K % KH == 0 and K <= 256 and V % BV == 0


def _kernel(a_ref, b_ref, qb_ref, do_ref, dn_ref, n_ref, s_ref, m_ref, ls_ref, lm_ref,
            dqb_ref, dy_ref, dz_ref, dkg_ref, dkr_ref, dattn_ref, dab_ref, ddecay_ref, out_smem, att_smem, dec_smem,
            *, num_heads, programs, steps, stages, transforms, in_place):
    BH, NC, C, V = n_ref.shape
    K = s_ref.shape[2]
    nkh = K // KH
    cw = C // (_WGS * nkh)  # dattn columns per warpgroup
    total = BH * NC * nkh
    nvb = V // BV
    pid = lax.axis_index("p")

    def item(i):  # this program's i-th work item (the last one repeated past the end, its results not written)
        it = jnp.minimum(pid + i * programs, total - 1)
        bh = it // (NC * nkh)
        return bh, (it // nkh) % NC, it % nkh

    def op_index(i, j, kind):
        bh, c, kh = item(i)
        if kind == "op":  # [B, T, HV, V]
            return bh // num_heads, c, bh % num_heads, j
        return (bh, c, 0, j) if kind == "rows" else (bh, c, kh, j)

    spec = functools.partial(plgpu.BlockSpec, transforms=transforms)
    in_specs = [spec((None, C, None, BV), lambda i, j: op_index(i, j, "op"))]
    in_specs += [spec((None, None, C, BV), lambda i, j: op_index(i, j, "rows")) for _ in range(2)]
    in_specs += [spec((None, None, KH, BV), lambda i, j: op_index(i, j, "k")) for _ in range(4)]
    T = lambda ref: ref.transpose((1, 0))  # noqa: E731 - a transposed shared-memory operand

    def body(idx, do_s, dn_s, n_s, s_s, m_s, ls_s, lm_s, accs):
        i, j = idx
        wg = lax.axis_index("wg")
        mine = pl.ds(wg * KQ, KQ)
        bh, c, kh = item(i)
        q = kh * _WGS + wg  # this warpgroup's K columns (KQ of K) and dattn columns (cw of C), in units
        fresh = (j > 0).astype(jnp.float32)  # an item's first V block: the accumulators start at zero
        accs = tuple(x * fresh for x in accs)
        sn = lambda y: T(y.at[mine])  # noqa: E731 - this warpgroup's K rows of a state tile, as a [BV, KQ] operand

        def decay_sums(x_s, y_s, slot):  # dec_smem[wg, slot] (+)= rowsum(x o y) over this V block
            xy = jnp.sum(x_s[...].astype(jnp.float32) * y_s[...].astype(jnp.float32), axis=1)

            @pl.when(j == 0)
            def _():
                dec_smem[wg, slot] = xy

            @pl.when(j > 0)
            def _():
                dec_smem[wg, slot] = xy + plgpu.load(dec_smem.at[wg, slot], layout=ROW, optimized=False)

        def decay_all():
            @pl.when(wg == 0)
            def _():
                decay_sums(ls_s, s_s, 0)
                decay_sums(ls_s, m_s, 1)

            @pl.when(wg == 1)
            def _():
                decay_sums(lm_s, m_s, 0)

        pairs = ((do_s, sn(s_s)), (do_s, sn(m_s)), (dn_s, sn(s_s)), (dn_s, sn(m_s)), (n_s, sn(ls_s)),
                 (n_s, sn(lm_s)), (do_s, T(n_s.at[pl.ds(q * cw, cw)])))
        groups = tuple((x, [ab]) for x, ab in zip(accs, pairs, strict=True))
        if in_place:  # all seven into the carried accumulators
            accs = accumulate(groups, in_place=True, during=decay_all)
        else:  # fresh accumulators in two groups (one of seven would double the registers)
            accs = accumulate(groups[:4], in_place=False) + accumulate(groups[4:], in_place=False, during=decay_all)

        @pl.when((j == nvb - 1) & (pid + i * programs < total))
        def _():
            row, head = bh // num_heads, bh % num_heads
            cols = pl.ds(kh * KH + wg * KQ, KQ)
            scale = lambda vec: lax.broadcast_in_dim(  # noqa: E731 - a [C] vector over [C, KQ] tiles
                plgpu.load(vec.at[bh, c], layout=ROW, optimized=False), (C, KQ), [0])
            qb = plgpu.load(qb_ref.at[row, pl.ds(c * C, C), head, cols], layout=plgpu.Layout.WGMMA,
                            optimized=False).astype(jnp.float32)
            g_s, g_m, g_y, g_z, g_g, g_r, g_a = accs
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous item's stores have read out_smem
            outs = (scale(a_ref) * g_s - scale(b_ref) * g_m, -g_y, g_z, g_g, -g_r)
            for t, x in enumerate(outs):
                out_smem[wg, t] = x.astype(out_smem.dtype)
            att_smem[wg] = g_a.astype(att_smem.dtype)
            plgpu.commit_smem()
            for t, ref in enumerate((dqb_ref, dy_ref, dz_ref, dkg_ref, dkr_ref)):
                plgpu.copy_smem_to_gmem(out_smem.at[wg, t], ref.at[bh, c, :, cols])
            plgpu.copy_smem_to_gmem(att_smem.at[wg], dattn_ref.at[bh, c, :, pl.ds(q * cw, cw)])
            dab_ref[0, q, bh, c] = jnp.sum(qb * g_s, axis=1)
            dab_ref[1, q, bh, c] = -jnp.sum(qb * g_m, axis=1)
            dec = lambda slot: plgpu.load(dec_smem.at[wg, slot], layout=ROW, optimized=False)  # noqa: E731
            ddecay_ref[kh, 2 * wg, bh, c] = dec(0)  # wg 0: <lS, S> rows; wg 1: <lM, M> rows

            @pl.when(wg == 0)
            def _():
                ddecay_ref[kh, 1, bh, c] = dec(1)  # <lS, M> rows

        return accs

    def run(pipeline):
        zeros = lambda cols: plgpu.layout_cast(jnp.zeros((C, cols), jnp.float32), plgpu.Layout.WGMMA)  # noqa: E731
        pipeline(tuple(zeros(KQ) for _ in range(6)) + (zeros(cw),))
        plgpu.wait_smem_to_gmem(0)  # the last item's stores

    plgpu.emit_pipeline_warp_specialized(
        body, grid=(steps, nvb), memory_registers=40, in_specs=in_specs, wg_axis="wg", num_compute_wgs=_WGS,
        max_concurrent_steps=stages, compute_context=run)(do_ref, dn_ref, n_ref, s_ref, m_ref, ls_ref, lm_ref)


def _default_programs(total: int) -> int:
    """About one program per SM, as many items each: ceil(total / ceil(total / SMs))."""
    sms = getattr(jax.devices()[0], "core_count", None) or 132
    return math.ceil(total / math.ceil(total / sms))


def pass_cotangents_mosaic(a, b, qb, do, dn, n, s_start, m_start, ls, lm, *, num_heads, programs=None, stages=3,
                           interpret=False):
    """`chunk_grads.pass_cotangents` as one persistent Mosaic GPU kernel (same arguments and results).

    a, b: [BH, NC, C] float32; qb: [B, NC * C, HV, K] and do: [B, NC * C, HV, V]; dn, n: [BH, NC, C, V];
    s_start, m_start, ls, lm: [BH, NC, K, V] (operand dtype). Returns (da, db) [BH, NC, C] float32, (dqb, dy, dz,
    dkg, dkr) [BH, NC, C, K] and dattn [BH, NC, C, C] in the operand dtype, ddecay [BH, NC, 3] float32.
    programs: persistent programs (default: about one per SM); stages: V blocks in flight.
    """
    BH, NC, C, V = n.shape
    K = qb.shape[-1]
    if not supported(K, V, C) or s_start.shape != (BH, NC, K, V):
        raise ValueError(f"Mosaic cotangent kernel limits: K={K}, V={V}, chunk={C}, states {s_start.shape} "
                         f"(expected {(BH, NC, K, V)}; C = 64, K a multiple of 64 up to 256, V of 64)")
    op = n.dtype
    nkh = K // KH
    total = BH * NC * nkh
    programs = min(programs or _default_programs(total), total)
    steps = math.ceil(total / programs)
    cw = C // (_WGS * nkh)
    f32 = jnp.float32
    ck = jax.ShapeDtypeStruct((BH, NC, C, K), op)
    out_type = (ck,) * 5 + (jax.ShapeDtypeStruct((BH, NC, C, C), op),
                            jax.ShapeDtypeStruct((2, _WGS * nkh, BH, NC, C), f32),
                            jax.ShapeDtypeStruct((nkh, 3, BH, NC, KH), f32))
    itemsize = jnp.dtype(op).itemsize
    tile_t = smem_transforms(BV, itemsize, interpret)
    scratch = [plgpu.SMEM((_WGS, 5, C, KQ), op, transforms=smem_transforms(KQ, itemsize, interpret)),
               plgpu.SMEM((_WGS, C, cw), op, transforms=smem_transforms(cw, itemsize, interpret)),
               plgpu.SMEM((_WGS, 2, KH), f32)]
    kernel = functools.partial(_kernel, num_heads=num_heads, programs=programs, steps=steps,
                               stages=stages, transforms=tile_t, in_place=mosaic_common.in_place(interpret))
    call = plgpu.kernel(kernel, out_type=out_type, scratch_types=scratch, grid=(programs,), grid_names=("p",),
                        num_threads=_WGS + 1, thread_name="wg",
                        interpret=plgpu.InterpretGPUParams() if interpret else False)
    dqb, dy, dz, dkg, dkr, dattn, dab, ddecay = call(a, b, qb, do, dn, n, s_start, m_start, ls, lm)
    dec = ddecay.sum(axis=(0, 4))  # [3, BH, NC]: <lS, S>, <lS, M>, <lM, M>
    ddecay = jnp.stack([dec[0], -dec[1], dec[2]], axis=-1)
    return dab[0].sum(0), dab[1].sum(0), dqb, dy, dz, dkg, dkr, dattn, ddecay
