"""The sequential passes in Mosaic GPU (wgmma, TMA) for dense rows: the forward pass (with or without the residual
writes) and the reverse sweep of `mdn_jax.pallas.chunk_pass`, the same recurrences with the same operands.

One program per (row x value head, value columns), as the Triton pass: S and M ([K, block_v] float32) are
carried in registers across the chunks; each chunk's tiles (P, Qb, Kt [C, K], T, attn [C, C], V, the [C] vectors
and decays) arrive by TMA, and the eight products of a chunk step run as wgmma from shared memory:

    R = V - diag(d) P S + diag(e) P M,   N = T R,   O = diag(a) Qb S - diag(b) Qb M + attn N,
    S' = a_L S - b_L M + Kt^T diag(Gamma_L) N,   M' = m_L M - Kt^T diag(rho) N.

`split_pass_mosaic` runs the same step over the segments of `mdn_jax.pallas.seq_split` (identity columns in front of
v's, ragged segments, one program per segment and column block). The reverse sweep (`sweep_mosaic`) runs the
chunks backwards with the same machinery and the seven products of
`chunk_pass._bwd_kernel`'s step. consumers=1: one warpgroup loads (`plgpu.emit_pipeline`, `stages` chunks in
flight) and computes block_v columns; consumers=2: two compute warpgroups of block_v columns each share the K-side
tiles that a memory warpgroup brings (`plgpu.emit_pipeline_warp_specialized`): half the programs and half the
K-side reads. H200, S400 (experiments/results/h200_2026-12-02_0bbac19): block_v 64 with 2 consumers, forward
0.47 ms vs 0.54 for the Triton pass, saving forward 0.62 vs 0.85, sweep 0.56 vs 0.77; at K=128 block_v 32 lets
two chunks be in flight, faster again (H100, S400 forward+backward 3.096 ms with one consumer against 3.535 at
block_v 64, one stage; `tuning.mosaic_config`); at K=256 one consumer of block_v 64 (one stage) is 2.3-2.9x slower
than the Triton kernels; two consumers fit there at block_v 32 (all tiles then swizzled by 64 bytes), which beat
them (H100, 1.3B forward+backward 5.26 vs 6.90 ms).

Limits (`supported`): dense rows (one sequence per row: chunk_init/chunk_final of `ops.layout.dense_layout`), chunk
size 64 (the wgmma M of the [C, C] products), K a multiple of 64, V of consumers * block_v, the tiles within shared
memory (`smem_bytes`), 16-bit operands on the GPU. Interpret mode (CPU) drops the shared-memory tiling/swizzle
transforms, which the interpreter rejects.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from mdn_jax.pallas.chunk_local import VECS, LocalOutputs
from mdn_jax.pallas.mosaic_common import ROW, accumulate, in_place, products, smem_transforms
from mdn_jax.pallas.tuning import split_programs


def _row_scales(vec_s, C, block_v):
    """The chunk's [C] vectors (shared memory [len(VECS), C]) by name, broadcast over [C, block_v] wgmma tiles."""
    return {name: lax.broadcast_in_dim(plgpu.load(vec_s.at[i], layout=ROW, optimized=False), (C, block_v), [0])
            for i, name in enumerate(VECS)}


def _chunk_step(c, tiles, bufs, carry, write_o, res_refs, bh, vs, *, acc_in_place, values=None):
    """One chunk of the pass for one [K, block_v] state block: writes O's [C, block_v] tile by write_o(o_smem, c,
    vs) (and with res_refs the chunk-start S, M and N) by TMA, waited for at the next step, and returns (S', M').
    tiles: the chunk's shared-memory inputs; bufs: this warpgroup's scratch; acc_in_place: S' and M' accumulate
    their key products in wgmma accumulators initialised with the decayed states (`mosaic_common.accumulate`; no
    second pair of [K, block_v] float32 tiles live); values: None, or a scalar 0/1 that scales the value tile (0:
    the identity columns of `mdn_jax.pallas.seq_split`)."""
    vec_s, dec_s, t_s, attn_s, qb_s, kt_s, p_s, v_s = tiles
    s_smem, m_smem, rn_smem, gn_smem, hn_smem, o_smem = bufs
    S, M = carry
    C, block_v = v_s.shape
    op, f32 = qb_s.dtype, jnp.float32
    col = _row_scales(vec_s, C, block_v)
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous step's stores have read their buffers
    s_smem[...] = S.astype(op)
    m_smem[...] = M.astype(op)
    plgpu.commit_smem()
    if res_refs:  # the chunk-start states, as the backward reads them
        plgpu.copy_smem_to_gmem(s_smem, res_refs[0].at[bh, c, :, vs])
        plgpu.copy_smem_to_gmem(m_smem, res_refs[1].at[bh, c, :, vs])
    ps, pm = products((p_s, s_smem), (p_s, m_smem))
    v = v_s[...].astype(f32)
    if values is not None:
        v = v * values
    rn_smem[...] = (v - col["d"] * ps + col["e"] * pm).astype(op)  # R
    plgpu.commit_smem()
    (n,) = products((t_s, rn_smem))
    rn_smem[...] = n.astype(op)  # N, over R (read by the product above)
    gn_smem[...] = (col["g_last"] * n).astype(op)
    hn_smem[...] = (-col["rho"] * n).astype(op)  # M' = m_l M + Kt^T (-rho N)
    plgpu.commit_smem()
    if res_refs:
        plgpu.copy_smem_to_gmem(rn_smem, res_refs[2].at[bh, c, :, vs])
    qs, qm, an = products((qb_s, s_smem), (qb_s, m_smem), (attn_s, rn_smem))
    o_smem[...] = (col["a"] * qs - col["b"] * qm + an).astype(op)
    plgpu.commit_smem()
    write_o(o_smem, c, vs)
    kt_t = kt_s.transpose((1, 0))
    a_l, b_l, m_l = dec_s[0], dec_s[1], dec_s[2]
    return accumulate([(a_l * S - b_l * M, [(kt_t, gn_smem)]), (m_l * M, [(kt_t, hn_smem)])],
                      in_place=acc_in_place, stored=True)


def _sweep_step(c, tiles, bufs, carry, out_refs, bh, vs, *, acc_in_place):
    """One chunk of the reverse sweep (adjoint recurrence, T form, `chunk_pass._bwd_kernel`) for one [K, block_v]
    block of (lS, lM): writes lS, lM and dN of the chunk by TMA (waited for at the next step) and returns the
    cotangents of the chunk-start states. acc_in_place: as `_chunk_step`'s (two accumulators of two products
    each onto the decayed lS, lM, instead of four fresh ones)."""
    vec_s, dec_s, t_s, attn_s, qb_s, kt_s, p_s, do_s = tiles
    ls_smem, lm_smem, dn_smem, ado_smem, bdo_smem, ew_smem = bufs
    ls_ref, lm_ref, dn_ref = out_refs
    lS, lM = carry
    C, block_v = do_s.shape
    op, f32 = qb_s.dtype, jnp.float32
    col = _row_scales(vec_s, C, block_v)
    T = lambda ref: ref.transpose((1, 0))  # noqa: E731 - a transposed shared-memory operand
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the previous step's stores have read their buffers
    ls_smem[...] = lS.astype(op)
    lm_smem[...] = lM.astype(op)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(ls_smem, ls_ref.at[bh, c, :, vs])
    plgpu.copy_smem_to_gmem(lm_smem, lm_ref.at[bh, c, :, vs])
    attn_do, k_ls, k_lm = products((T(attn_s), do_s), (kt_s, ls_smem), (kt_s, lm_smem))
    do = do_s[...].astype(f32)
    dn_smem[...] = (attn_do + col["g_last"] * k_ls - col["rho"] * k_lm).astype(op)
    ado_smem[...] = (col["a"] * do).astype(op)
    bdo_smem[...] = (-col["b"] * do).astype(op)  # lM' takes -Qb^T (b dO)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(dn_smem, dn_ref.at[bh, c, :, vs])
    (w,) = products((T(t_s), dn_smem))  # W = T^T dN
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # dN's store has read dn_smem: diag(d) W goes there
    dn_smem[...] = (-col["d"] * w).astype(op)  # lS' takes -P^T (d W)
    ew_smem[...] = (col["e"] * w).astype(op)
    plgpu.commit_smem()
    a_l, b_l, m_l = dec_s[0], dec_s[1], dec_s[2]
    return accumulate([(a_l * lS, [(T(qb_s), ado_smem), (T(p_s), dn_smem)]),
                       (m_l * lM - b_l * lS, [(T(qb_s), bdo_smem), (T(p_s), ew_smem)])],
                      in_place=acc_in_place, stored=True)


def _over_chunks(step, gmem, in_specs, start, finish, bufs, *, num_chunks, block_v, stages, consumers,
                 col_block=lambda: lax.axis_index("vb")):
    """Run step(s, tiles, bufs, carry, vs) -> carry over the steps s of this program's row (num_chunks), the chunk
    tiles brought by TMA. consumers 1: one warpgroup loads (`emit_pipeline`) and computes; 2: two compute
    warpgroups, each with its own block_v columns (vs) and scratch, share the tiles (the last, value-side one
    [C, 2 block_v] is split) that a third (memory) warpgroup brings (`emit_pipeline_warp_specialized`).
    start(vs) -> the first carry; finish(carry, vs) writes the last. col_block(): the program's block of
    consumers * block_v state columns (the grid's "vb" index)."""

    def wg_index():
        return lax.axis_index("wg") if consumers > 1 else 0

    def columns():  # this warpgroup's V columns
        return pl.ds((col_block() * consumers + wg_index()) * block_v, block_v)

    def body(idx, *tiles_and_carry):
        *tiles, carry = tiles_and_carry
        wg = wg_index()
        if consumers > 1:
            tiles[-1] = tiles[-1].at[:, pl.ds(wg * block_v, block_v)]
        return step(idx[0], tiles, tuple(b.at[wg] for b in bufs), carry, columns())

    def run(pipeline):
        vs = columns()
        finish(pipeline(start(vs)), vs)
        plgpu.wait_smem_to_gmem(0)  # the last step's stores

    if consumers == 1:
        run(lambda carry: plgpu.emit_pipeline(body, grid=(num_chunks,), in_specs=in_specs,
                                              max_concurrent_steps=stages, init_carry=carry)(*gmem))
    else:
        plgpu.emit_pipeline_warp_specialized(
            body, grid=(num_chunks,), memory_registers=40, in_specs=in_specs, wg_axis="wg",
            num_compute_wgs=consumers, max_concurrent_steps=stages, compute_context=run)(*gmem)


def _chunk_specs(chunk_index, bh, row, head, vb, C, K, v_cols, transforms, value_index=None, scalars_index=None):
    """BlockSpecs of a chunk's tiles (vecs, decay, T, attn, Qb, Kt, P and the value-side [C, v_cols] tile, block vb
    of its columns), chunk chunk_index(step) at pipeline step `step`; value_index(step): the value-side tile's
    block index instead of (row, chunk, head, vb); scalars_index(step): the chunk of the vecs and decay tiles
    instead of chunk_index(step)."""
    spec = functools.partial(plgpu.BlockSpec, transforms=transforms)
    ci = chunk_index
    si = scalars_index or chunk_index
    specs = [plgpu.BlockSpec((None, None, len(VECS), C), lambda s: (bh, si(s), 0, 0)),
             plgpu.BlockSpec((None, None, C), lambda s: (bh, si(s), 0)),
             spec((None, None, C, C), lambda s: (bh, ci(s), 0, 0)),
             spec((None, None, C, C), lambda s: (bh, ci(s), 0, 0))]
    specs += [spec((None, C, None, K), lambda s: (row, ci(s), head, 0)) for _ in range(3)]
    return specs + [spec((None, C, None, v_cols), value_index or (lambda s: (row, ci(s), head, vb)))]


def _state_io(row, head, srcs, dsts):
    """start(vs): the carry loaded from the float32 [N, HV, K, V] tables srcs; finish(carry, vs): stored into dsts
    (this program's row, head and V columns vs)."""
    def start(vs):
        return tuple(plgpu.load(r.at[row, head, :, vs], layout=plgpu.Layout.WGMMA, optimized=False) for r in srcs)

    def finish(carry, vs):
        for r, x in zip(dsts, carry, strict=True):
            r[row, head, :, vs] = x
    return start, finish


def _kernel(vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref, s0_ref, m0_ref, o_ref, fs_ref, fm_ref,
            *refs_and_bufs, num_heads, num_chunks, block_v, stages, consumers, save, acc_in_place, transforms):
    out_refs, bufs = refs_and_bufs[:3 * save], refs_and_bufs[3 * save:]
    bh, vb = lax.axis_index("bh"), lax.axis_index("vb")
    row, head = bh // num_heads, bh % num_heads
    C, K = t_ref.shape[-1], qb_ref.shape[-1]
    in_specs = _chunk_specs(lambda s: s, bh, row, head, vb, C, K, consumers * block_v, transforms)
    start, finish = _state_io(row, head, (s0_ref, m0_ref), (fs_ref, fm_ref))

    def write_o(src, c, vs):
        plgpu.copy_smem_to_gmem(src, o_ref.at[row, pl.ds(c * C, C), head, vs])

    def step(c, tiles, mine, carry, vs):
        return _chunk_step(c, tiles, mine, carry, write_o, out_refs, bh, vs, acc_in_place=acc_in_place)

    _over_chunks(step, (vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref), in_specs, start, finish,
                 bufs, num_chunks=num_chunks, block_v=block_v, stages=stages, consumers=consumers)


class _SplitProgram(NamedTuple):
    """What one program of the split pass runs (int32 / bool scalars from the grid indices)."""

    bh: jax.Array  # row x head
    row: jax.Array
    head: jax.Array
    seg_row: jax.Array  # row * segments + segment
    is_value: jax.Array  # value columns (else identity columns)
    col_block: jax.Array  # its block of consumers * block_v state columns (identity columns first)
    v_block: jax.Array  # its block of v's columns (0 for identity programs: read, scaled by 0)
    first: jax.Array  # the segment's first chunk
    size: jax.Array  # the segment's chunks


def _split_program(*, num_heads, segments, num_chunks, value_blocks, identity_blocks, skip_first) -> _SplitProgram:
    """The program at grid index (bh, vb): along vb first the value programs of every segment (value_blocks
    each), then the identity programs (identity_blocks each) of segments skip_first .. segments - 1. Segment g
    holds chunks [g NC // G, (g + 1) NC // G)."""
    bh, j = lax.axis_index("bh"), lax.axis_index("vb")
    n_value = segments * value_blocks
    is_value = j < n_value
    ji = jnp.maximum(j - n_value, 0)
    g = jnp.where(is_value, j // value_blocks, ji // identity_blocks + skip_first)
    blk = jnp.where(is_value, j % value_blocks, ji % identity_blocks)
    first = g * num_chunks // segments
    row = bh // num_heads
    return _SplitProgram(bh=bh, row=row, head=bh % num_heads, seg_row=row * segments + g, is_value=is_value,
                         col_block=jnp.where(is_value, identity_blocks + blk, blk),
                         v_block=jnp.where(is_value, blk, 0), first=first,
                         size=(g + 1) * num_chunks // segments - first)


def _split_kernel(vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref, s_basis, m_basis, o_ref, fs_ref,
                  fm_ref, psi_ref, *bufs, num_heads, segments, num_chunks, steps, identity_cols, skip_first, block_v,
                  stages, consumers, acc_in_place, transforms):
    C, K = t_ref.shape[-1], qb_ref.shape[-1]
    width = consumers * block_v
    plan = functools.partial(_split_program, num_heads=num_heads, segments=segments, num_chunks=num_chunks,
                             value_blocks=v_ref.shape[-1] // width, identity_blocks=identity_cols // width,
                             skip_first=int(skip_first))

    ragged = num_chunks % segments != 0

    def chunk(s, x):  # a short segment's last step re-reads its last chunk's tiles (the identity chunk's scalars)
        return x.first + (jnp.minimum(s, x.size - 1) if ragged else s)

    def scalars_chunk(s):  # ragged: a short segment's last step reads the identity chunk NC of the vecs and decays
        x = plan()
        return jnp.where(s < x.size, x.first + s, num_chunks)

    # the chunk and v's block are computed inside the index maps: with both closed over as values of the kernel's
    # scope the interpreter hung with two consumers (either one alone did not)
    x = plan()
    in_specs = _chunk_specs(lambda s: chunk(s, plan()), x.bh, x.row, x.head, None, C, K, width, transforms,
                            value_index=lambda s: (plan().row, chunk(s, plan()), plan().head, plan().v_block),
                            scalars_index=scalars_chunk if ragged else None)

    def start(vs):
        return tuple(plgpu.load(r.at[:, vs], layout=plgpu.Layout.WGMMA, optimized=False) for r in (s_basis, m_basis))

    def finish(carry, vs):
        y = plan()
        for r, state in zip((fs_ref, fm_ref), carry, strict=True):
            r[y.seg_row, y.head, :, vs] = state

    # the program's plan is read inside the pipeline's body (a value computed in the kernel's scope and closed over
    # there hung the interpreter with two consumers)
    def step(s, tiles, mine, carry, vs):
        y = plan()
        valid = s < y.size if ragged else True  # a short segment's last step writes nothing

        def write_o(src, c, vs):  # O's tile at its position; identity columns: Psi's at the segment's step
            @pl.when(valid & y.is_value)
            def _():
                plgpu.copy_smem_to_gmem(src, o_ref.at[y.row, pl.ds(c * C, C), y.head,
                                                      pl.ds(vs.start - identity_cols, vs.size)])

            @pl.when(valid & jnp.logical_not(y.is_value))
            def _():
                plgpu.copy_smem_to_gmem(src, psi_ref.at[y.seg_row * num_heads + y.head, pl.ds(s * C, C), vs])

        return _chunk_step(chunk(s, y), tiles, mine, carry, write_o, (), y.bh, vs, acc_in_place=acc_in_place,
                           values=y.is_value.astype(jnp.float32))

    _over_chunks(step, (vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref), in_specs, start, finish,
                 bufs, num_chunks=steps, block_v=block_v, stages=stages, consumers=consumers,
                 col_block=lambda: plan().col_block)


def _sweep_kernel(vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, do_ref, gfs_ref, gfm_ref, ls_ref, lm_ref,
                  dn_ref, ds0_ref, dm0_ref, *bufs, num_heads, num_chunks, block_v, stages, consumers, acc_in_place,
                  transforms):
    bh, vb = lax.axis_index("bh"), lax.axis_index("vb")
    row, head = bh // num_heads, bh % num_heads
    C, K = t_ref.shape[-1], qb_ref.shape[-1]
    last = num_chunks - 1
    in_specs = _chunk_specs(lambda s: last - s, bh, row, head, vb, C, K, consumers * block_v, transforms)
    start, finish = _state_io(row, head, (gfs_ref, gfm_ref), (ds0_ref, dm0_ref))

    def step(s, tiles, mine, carry, vs):
        return _sweep_step(last - s, tiles, mine, carry, (ls_ref, lm_ref, dn_ref), bh, vs, acc_in_place=acc_in_place)

    _over_chunks(step, (vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, do_ref), in_specs, start, finish,
                 bufs, num_chunks=num_chunks, block_v=block_v, stages=stages, consumers=consumers)


def _pass_acc_in_place(interpret: bool) -> bool:
    """The passes' state updates accumulate in place (`mosaic_common.in_place`; env MDN_MOSAIC_PASS_ACC=fresh:
    fresh accumulators added afterwards, the form before 998b272, for timing)."""
    return in_place(interpret, "MDN_MOSAIC_PASS_ACC")


_K_BUFS, _C_BUFS = 2, 4  # each consumer's scratch tiles: [K, block_v] (S, M or lS, lM) and [C, block_v]


def _launch(kernel, out_type, K, C, BH, V, op, *, block_v, consumers, interpret, programs=None):
    """plgpu.kernel over (BH, programs) programs (default V / (consumers block_v)) with per-warpgroup shared-memory
    scratch:
    _K_BUFS [K, block_v] and _C_BUFS [C, block_v] tiles in the operand dtype. All tiles share one swizzle (wgmma
    takes both operands at one): 128 bytes, or at block_v 32 the 64 of its rows (a [C, 2 block_v] value tile then
    splits between the consumers at a tile boundary)."""
    transforms = smem_transforms(min(block_v, 64), jnp.dtype(op).itemsize, interpret)
    smem = lambda *shape: plgpu.SMEM((consumers,) + shape, op, transforms=transforms)  # noqa: E731 - per warpgroup
    scratch = [smem(K, block_v) for _ in range(_K_BUFS)] + [smem(C, block_v) for _ in range(_C_BUFS)]
    threads = dict(num_threads=consumers + 1, thread_name="wg") if consumers > 1 else {}
    return plgpu.kernel(functools.partial(kernel, transforms=transforms), out_type=out_type, scratch_types=scratch,
                        grid=(BH, programs or V // (consumers * block_v)), grid_names=("bh", "vb"),
                        interpret=plgpu.InterpretGPUParams() if interpret else False, **threads)


SMEM_BYTES = 232448  # shared memory a block of an H100/H200 may take (227 KiB)
_SMEM_SLACK = 1024  # the pipeline's barriers and alignment (544 bytes at K = 256, block_v 32, two stages)


def smem_bytes(K: int, C: int, block_v: int, consumers: int, stages: int) -> int:
    """Shared memory of a pass (any of the three) with 16-bit operands, barriers aside: `stages` chunks of tiles
    (the [len(VECS), C] vectors and [C] decays in float32, T and attn [C, C], Qb, Kt, P [C, K], the value-side
    [C, consumers * block_v]) and each consumer's scratch (`_launch`'s)."""
    tiles = 4 * (len(VECS) * C + C) + 2 * (2 * C * C + 3 * C * K + C * consumers * block_v)
    return stages * tiles + consumers * 2 * (_K_BUFS * K * block_v + _C_BUFS * C * block_v)


def supported(K: int, V: int, C: int, block_v: int, consumers: int, identity_cols: int = 0, stages: int = 1) -> bool:
    """Whether the kernels take these shapes (dense rows assumed): C = 64, K a multiple of 64, V (the state's
    columns) and identity_cols (those of `pass_forward_mosaic`'s) of consumers * block_v, block_v 32 or a multiple
    of 64 (a row of the 64- or 128-byte swizzle of 16-bit operands), and the tiles within the shared memory of
    16-bit operands (`smem_bytes`; float32 runs only in interpret mode): at K = 256 two consumers fit at block_v 32
    and one stage (218 KiB), not at block_v 64 (330 KB)."""
    per_program = consumers * block_v
    shapes = (C == 64 and K % 64 == 0 and (block_v == 32 or block_v % 64 == 0) and consumers in (1, 2)
              and V % per_program == 0 and identity_cols % per_program == 0)
    return shapes and smem_bytes(K, C, block_v, consumers, stages) + _SMEM_SLACK <= SMEM_BYTES


def _check(K, V, C, block_v, consumers, stages, state_shape, expected, identity_cols=0):
    if not supported(K, V, C, block_v, consumers, identity_cols, stages) or state_shape != expected:
        raise ValueError(f"Mosaic pass limits: K={K}, V={V}, chunk={C}, block_v={block_v}, consumers={consumers}, "
                         f"stages={stages}, identity_cols={identity_cols}, states {state_shape} (dense rows: "
                         f"expected {expected})")


def pass_forward_mosaic(local: LocalOutputs, qb, kt, p, v, s0, m0, *, block_v=64, stages=1, consumers=2,
                        save=False, interpret=False):
    """The forward pass of dense rows: O [B, Tp, HV, V] (operand dtype) and the final (S, M) [B, HV, K, V]
    float32; save: also the chunk-start states S_c, M_c [B*HV, NC, K, V] and N_c [B*HV, NC, C, V] (operand dtype,
    the fields of `chunk_pass.PassResiduals`). s0, m0: [B, HV, K, V] float32, one sequence per row; the other
    arguments as `chunk_pass.pass_forward`'s. stages: chunks in flight (S400 fits 2 at block_v 64 with one
    consumer, 1 with two); consumers: compute warpgroups per program (1 or 2, each with its own block_v state
    columns; 2 adds a memory warpgroup)."""
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    BH, NC, C = local.t.shape[:3]
    _check(K, V, C, block_v, consumers, stages, s0.shape, (B, HV, K, V))
    op = kt.dtype
    out_type = (jax.ShapeDtypeStruct(v.shape, op), jax.ShapeDtypeStruct(s0.shape, jnp.float32),
                jax.ShapeDtypeStruct(m0.shape, jnp.float32))
    if save:
        out_type += (jax.ShapeDtypeStruct((BH, NC, K, V), op), jax.ShapeDtypeStruct((BH, NC, K, V), op),
                     jax.ShapeDtypeStruct((BH, NC, C, V), op))
    kernel = functools.partial(_kernel, num_heads=HV, num_chunks=NC, block_v=block_v, stages=stages,
                               consumers=consumers, save=save, acc_in_place=_pass_acc_in_place(interpret))
    call = _launch(kernel, out_type, K, C, BH, V, op, block_v=block_v, consumers=consumers, interpret=interpret)
    return call(local.vecs, local.decay, local.t, local.attn, qb, kt, p, v, s0, m0)


def segment_bounds(num_chunks: int, segments: int) -> list[tuple[int, int]]:
    """[first, end) chunks of each segment of `split_pass_mosaic`: sizes num_chunks // segments or one more."""
    return [(g * num_chunks // segments, (g + 1) * num_chunks // segments) for g in range(segments)]


def split_pass_mosaic(local: LocalOutputs, qb, kt, p, v, s_basis, m_basis, *, segments, skip_first=False,
                      block_v=64, stages=1, consumers=2, interpret=False):
    """The forward pass of dense rows cut along the sequence into `segments` segments of whole chunks
    (`segment_bounds`: ragged by at most one chunk), each run from its own start over identity_cols + V state
    columns (`mdn_jax.pallas.seq_split`): the first identity_cols = 2K with zero values, the last V with v's.
    One program per (row x head, block of consumers * block_v columns of one segment), each of ceil(NC / G)
    steps (a shorter segment's last step leaves its state unchanged: it reads an identity chunk appended to the
    vecs and decay tables: on an H100 at 6 segments of T=32768 1.259 ms forward against 1.249 with a 0/1 mask of
    that step's decays and rows, which it replaced, and 1.802 with 6b3a989's mask of the tiles,
    experiments/results/h100_2026-12-07_d0761f7).

    local, qb, kt, p, v: as `pass_forward_mosaic`'s (the unsplit rows); s_basis, m_basis: [K, 2K + V] float32,
    the start of S and M in every segment ([I, 0, 0] and [0, I, 0] for the split). Returns O [B, Tp, HV, V]
    (operand dtype: each segment's output from its own start), the segments' end states fs, fm
    [B * G, HV, K, 2K + V] float32 (segment g of row b at b G + g) and Psi [B * G * HV, ceil(NC / G) * C, 2K]
    (operand dtype, the identity columns' outputs by position in the segment, row (b G + g) HV + head).
    skip_first: segment 0's identity columns do not run (a zero start state: its Phi and Psi are not needed);
    their parts of fs, fm and Psi are left unwritten."""
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    BH, NC, C = local.t.shape[:3]
    ident, cols = 2 * K, 2 * K + V
    _check(K, cols, C, block_v, consumers, stages, s_basis.shape, (K, cols), ident)
    if m_basis.shape != s_basis.shape or not 1 <= segments <= NC:
        raise ValueError(f"split pass: segments={segments} of {NC} chunks, bases {s_basis.shape}, {m_basis.shape}")
    op = kt.dtype
    steps = -(-NC // segments)
    out_type = (jax.ShapeDtypeStruct(v.shape, op), jax.ShapeDtypeStruct((B * segments, HV, K, cols), jnp.float32),
                jax.ShapeDtypeStruct((B * segments, HV, K, cols), jnp.float32),
                jax.ShapeDtypeStruct((B * segments * HV, steps * C, ident), op))
    vecs, decay = local.vecs, local.decay
    if NC % segments:  # chunk NC: the state passes unchanged (decays 1, 0, 1; zero vectors)
        vecs = jnp.concatenate([vecs, jnp.zeros_like(vecs[:, :1])], axis=1)
        decay = jnp.concatenate([decay, jnp.zeros_like(decay[:, :1]).at[..., 0].set(1).at[..., 2].set(1)], axis=1)
    kernel = functools.partial(_split_kernel, num_heads=HV, segments=segments, num_chunks=NC, steps=steps,
                               identity_cols=ident, skip_first=skip_first, block_v=block_v, stages=stages,
                               consumers=consumers, acc_in_place=_pass_acc_in_place(interpret))
    programs = split_programs(segments, V, ident, consumers * block_v, skip_first)
    call = _launch(kernel, out_type, K, C, BH, cols, op, block_v=block_v, consumers=consumers, interpret=interpret,
                   programs=programs)
    return call(vecs, decay, local.t, local.attn, qb, kt, p, v, s_basis, m_basis)


def sweep_mosaic(local: LocalOutputs, qb, kt, p, do, gfs, gfm, *, block_v=64, stages=1, consumers=2,
                 interpret=False):
    """The reverse sweep of dense rows: (lS, lM) [B*HV, NC, K, V] (the cotangents of the chunk-END states), dN
    [B*HV, NC, C, V] (operand dtype) and the cotangents of the start states [B, HV, K, V] float32, from do
    [B, Tp, HV, V] and gfs, gfm [B, HV, K, V] float32 (those of the final states); what the Triton sweep of
    `chunk_pass.pass_backward` gives before the pass cotangents."""
    B, Tp, HV, K = kt.shape
    V = do.shape[-1]
    BH, NC, C = local.t.shape[:3]
    _check(K, V, C, block_v, consumers, stages, gfs.shape, (B, HV, K, V))
    op = kt.dtype
    out_type = (jax.ShapeDtypeStruct((BH, NC, K, V), op), jax.ShapeDtypeStruct((BH, NC, K, V), op),
                jax.ShapeDtypeStruct((BH, NC, C, V), op), jax.ShapeDtypeStruct(gfs.shape, jnp.float32),
                jax.ShapeDtypeStruct(gfm.shape, jnp.float32))
    kernel = functools.partial(_sweep_kernel, num_heads=HV, num_chunks=NC, block_v=block_v, stages=stages,
                               consumers=consumers, acc_in_place=_pass_acc_in_place(interpret))
    call = _launch(kernel, out_type, K, C, BH, V, op, block_v=block_v, consumers=consumers,
                   interpret=interpret)
    return call(local.vecs, local.decay, local.t, local.attn, qb, kt, p, do.astype(op), gfs, gfm)
