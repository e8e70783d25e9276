"""The sequential passes in Mosaic GPU (wgmma, TMA): prototypes of the forward pass (with or without the residual
writes) and of the reverse sweep beside the Triton-lowered kernels of `mdn_jax.pallas.chunk_pass`, for side-by-side
measurement before they are worth a place in the library.

One program per (row x value head, value columns), as the Triton pass: S and M ([K, block_v] float32) are
carried in registers across the chunks; each chunk's tiles (P, Qb, Kt [C, K], T, attn [C, C], V, the [C] vectors
and decays) arrive by TMA, and the eight products of a chunk step run as wgmma from shared memory:

    R = V - diag(d) P S + diag(e) P M,   N = T R,   O = diag(a) Qb S - diag(b) Qb M + attn N,
    S' = a_L S - b_L M + Kt^T diag(Gamma_L) N,   M' = m_L M - Kt^T diag(rho) N.

The reverse sweep (`sweep_mosaic`) runs the chunks backwards with the same machinery and the seven products of
`chunk_pass._bwd_kernel`'s step. consumers=1: one warpgroup loads (`plgpu.emit_pipeline`, `stages` chunks in
flight) and computes block_v columns; consumers=2: two compute warpgroups of block_v columns each share the K-side
tiles that a memory warpgroup brings (`plgpu.emit_pipeline_warp_specialized`): half the programs and half the
K-side reads.

Prototype limits: dense rows only (one sequence per row, chunk_init/chunk_final of `ops.layout.dense_layout`),
16-bit operands on the GPU, K and block_v multiples of 64. Interpret mode (`--check`, CPU) drops the shared-memory
tiling/swizzle transforms, which the interpreter rejects.

    python experiments/mosaic_pass.py --check                    # CPU, interpret mode: equal to the Triton kernels
    python experiments/mosaic_pass.py --cases S400 --configs 64:2:1,64:1:2 --out DIR   # GPU: each mode timed
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.shapes import SHAPES  # noqa: E402
from mdn_jax.ops.layout import dense_layout  # noqa: E402
from mdn_jax.pallas import chunk_pass, common, tuning  # noqa: E402
from mdn_jax.pallas.chunk_local import VECS, LocalOutputs, chunk_local  # noqa: E402
from mdn_jax.pallas.chunk_pass import PassResiduals, pass_forward  # noqa: E402
from mdn_jax.pallas.tuning import block_config  # noqa: E402

_ROW = plgpu.Layout.WGMMA.reduce(1)  # a [C] vector indexed by the rows of a [C, N] wgmma tile


def _products(*pairs):
    """wgmma a @ b for each (a, b) into fresh float32 accumulators, issued together, then read."""
    def run(*accs):
        for acc, (a, b) in zip(accs, pairs, strict=True):
            plgpu.wgmma(acc, a, b)
        return tuple(acc[...] for acc in accs)
    return pl.run_scoped(run, *(plgpu.ACC((a.shape[0], b.shape[1]), jnp.float32) for a, b in pairs))


def _row_scales(vec_s, C, block_v):
    """The chunk's [C] vectors (shared memory [len(VECS), C]) by name, broadcast over [C, block_v] wgmma tiles."""
    return {name: lax.broadcast_in_dim(plgpu.load(vec_s.at[i], layout=_ROW, optimized=False), (C, block_v), [0])
            for i, name in enumerate(VECS)}


def _chunk_step(c, tiles, bufs, carry, out_refs, bh, row, head, vs):
    """One chunk of the pass for one [K, block_v] state block: writes O's [C, block_v] tile (and with residual
    refs in out_refs the chunk-start S, M and N) by TMA, waited for at the next step, and returns (S', M').
    tiles: the chunk's shared-memory inputs; bufs: this warpgroup's scratch."""
    vec_s, dec_s, t_s, attn_s, qb_s, kt_s, p_s, v_s = tiles
    s_smem, m_smem, rn_smem, gn_smem, hn_smem, o_smem = bufs
    o_ref, *res_refs = out_refs
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
    ps, pm = _products((p_s, s_smem), (p_s, m_smem))
    rn_smem[...] = (v_s[...].astype(f32) - col["d"] * ps + col["e"] * pm).astype(op)  # R
    plgpu.commit_smem()
    (n,) = _products((t_s, rn_smem))
    rn_smem[...] = n.astype(op)  # N, over R (read by the product above)
    gn_smem[...] = (col["g_last"] * n).astype(op)
    hn_smem[...] = (col["rho"] * n).astype(op)
    plgpu.commit_smem()
    if res_refs:
        plgpu.copy_smem_to_gmem(rn_smem, res_refs[2].at[bh, c, :, vs])
    qs, qm, an = _products((qb_s, s_smem), (qb_s, m_smem), (attn_s, rn_smem))
    o_smem[...] = (col["a"] * qs - col["b"] * qm + an).astype(op)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(o_smem, o_ref.at[row, pl.ds(c * C, C), head, vs])
    kt_t = kt_s.transpose((1, 0))
    ks, km = _products((kt_t, gn_smem), (kt_t, hn_smem))
    a_l, b_l, m_l = dec_s[0], dec_s[1], dec_s[2]
    return a_l * S - b_l * M + ks, m_l * M - km


def _sweep_step(c, tiles, bufs, carry, out_refs, bh, vs):
    """One chunk of the reverse sweep (adjoint recurrence, T form, `chunk_pass._bwd_kernel`) for one [K, block_v]
    block of (lS, lM): writes lS, lM and dN of the chunk by TMA (waited for at the next step) and returns the
    cotangents of the chunk-start states."""
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
    attn_do, k_ls, k_lm = _products((T(attn_s), do_s), (kt_s, ls_smem), (kt_s, lm_smem))
    do = do_s[...].astype(f32)
    dn_smem[...] = (attn_do + col["g_last"] * k_ls - col["rho"] * k_lm).astype(op)
    ado_smem[...] = (col["a"] * do).astype(op)
    bdo_smem[...] = (col["b"] * do).astype(op)
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(dn_smem, dn_ref.at[bh, c, :, vs])
    (w,) = _products((T(t_s), dn_smem))  # W = T^T dN
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # dN's store has read dn_smem: diag(d) W goes there
    dn_smem[...] = (col["d"] * w).astype(op)
    ew_smem[...] = (col["e"] * w).astype(op)
    plgpu.commit_smem()
    q_a, q_b, p_d, p_e = _products((T(qb_s), ado_smem), (T(qb_s), bdo_smem), (T(p_s), dn_smem), (T(p_s), ew_smem))
    a_l, b_l, m_l = dec_s[0], dec_s[1], dec_s[2]
    return a_l * lS + q_a - p_d, -b_l * lS + m_l * lM - q_b + p_e


def _over_chunks(step, gmem, in_specs, start, finish, bufs, *, num_chunks, block_v, stages, consumers):
    """Run step(c, tiles, bufs, carry, vs) -> carry over the chunks of this program's row, the chunk tiles brought by
    TMA. consumers 1: one warpgroup loads (`emit_pipeline`) and computes; 2: two compute warpgroups, each with its
    own block_v columns (vs) and scratch, share the tiles (the last, value-side one [C, 2 block_v] is split) that a
    third (memory) warpgroup brings (`emit_pipeline_warp_specialized`). start(vs) -> the first carry;
    finish(carry, vs) writes the last."""
    vb = lax.axis_index("vb")

    def wg_index():
        return lax.axis_index("wg") if consumers > 1 else 0

    def columns():  # this warpgroup's V columns
        return pl.ds((vb * consumers + wg_index()) * block_v, block_v)

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


def _chunk_specs(chunk_index, bh, row, head, vb, C, K, v_cols, transforms):
    """BlockSpecs of a chunk's tiles (vecs, decay, T, attn, Qb, Kt, P and the value-side [C, v_cols] tile), chunk
    chunk_index(step) at pipeline step `step`."""
    spec = functools.partial(plgpu.BlockSpec, transforms=transforms)
    ci = chunk_index
    specs = [plgpu.BlockSpec((None, None, len(VECS), C), lambda s: (bh, ci(s), 0, 0)),
             plgpu.BlockSpec((None, None, C), lambda s: (bh, ci(s), 0)),
             spec((None, None, C, C), lambda s: (bh, ci(s), 0, 0)),
             spec((None, None, C, C), lambda s: (bh, ci(s), 0, 0))]
    specs += [spec((None, C, None, K), lambda s: (row, ci(s), head, 0)) for _ in range(3)]
    return specs + [spec((None, C, None, v_cols), lambda s: (row, ci(s), head, vb))]


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
            *res_refs_and_bufs, num_heads, num_chunks, block_v, stages, consumers, save, transforms):
    res_refs, bufs = res_refs_and_bufs[:3 * save], res_refs_and_bufs[3 * save:]
    bh, vb = lax.axis_index("bh"), lax.axis_index("vb")
    row, head = bh // num_heads, bh % num_heads
    C, K = t_ref.shape[-1], qb_ref.shape[-1]
    in_specs = _chunk_specs(lambda s: s, bh, row, head, vb, C, K, consumers * block_v, transforms)
    start, finish = _state_io(row, head, (s0_ref, m0_ref), (fs_ref, fm_ref))

    def step(c, tiles, mine, carry, vs):
        return _chunk_step(c, tiles, mine, carry, (o_ref, *res_refs), bh, row, head, vs)

    _over_chunks(step, (vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref), in_specs, start, finish,
                 bufs, num_chunks=num_chunks, block_v=block_v, stages=stages, consumers=consumers)


def _sweep_kernel(vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, do_ref, gfs_ref, gfm_ref, ls_ref, lm_ref,
                  dn_ref, ds0_ref, dm0_ref, *bufs, num_heads, num_chunks, block_v, stages, consumers, transforms):
    bh, vb = lax.axis_index("bh"), lax.axis_index("vb")
    row, head = bh // num_heads, bh % num_heads
    C, K = t_ref.shape[-1], qb_ref.shape[-1]
    last = num_chunks - 1
    in_specs = _chunk_specs(lambda s: last - s, bh, row, head, vb, C, K, consumers * block_v, transforms)
    start, finish = _state_io(row, head, (gfs_ref, gfm_ref), (ds0_ref, dm0_ref))

    def step(s, tiles, mine, carry, vs):
        return _sweep_step(last - s, tiles, mine, carry, (ls_ref, lm_ref, dn_ref), bh, vs)

    _over_chunks(step, (vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, do_ref), in_specs, start, finish,
                 bufs, num_chunks=num_chunks, block_v=block_v, stages=stages, consumers=consumers)


def _launch(kernel, out_type, n_bufs_k, n_bufs_c, K, C, BH, V, op, *, block_v, consumers, interpret):
    """plgpu.kernel over (BH, V / (consumers block_v)) programs with per-warpgroup shared-memory scratch:
    n_bufs_k [K, block_v] and n_bufs_c [C, block_v] tiles in the operand dtype."""
    transforms = () if interpret else (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    smem = lambda *shape: plgpu.SMEM((consumers,) + shape, op, transforms=transforms)  # noqa: E731 - per warpgroup
    scratch = [smem(K, block_v) for _ in range(n_bufs_k)] + [smem(C, block_v) for _ in range(n_bufs_c)]
    threads = dict(num_threads=consumers + 1, thread_name="wg") if consumers > 1 else {}
    return plgpu.kernel(functools.partial(kernel, transforms=transforms), out_type=out_type, scratch_types=scratch,
                        grid=(BH, V // (consumers * block_v)), grid_names=("bh", "vb"),
                        interpret=plgpu.InterpretGPUParams() if interpret else False, **threads)


def _check_limits(K, V, block_v, consumers, state_shape, expected):
    if consumers not in (1, 2) or V % (consumers * block_v) or K % 64 or block_v % 64 or state_shape != expected:
        raise ValueError(f"prototype limits: K={K}, V={V}, block_v={block_v}, consumers={consumers}, "
                         f"states {state_shape} (expected {expected})")


def pass_forward_mosaic(local: LocalOutputs, qb, kt, p, v, s0, m0, *, block_v=64, stages=2, consumers=1,
                        save=False, interpret=False):
    """O [B, Tp, HV, V] (operand dtype) and the final (S, M) [B, HV, K, V] float32 of dense rows (s0, m0:
    [B, HV, K, V] float32, one sequence per row); the other arguments as `chunk_pass.pass_forward`'s. stages:
    chunks in flight (shared memory: S400 fits 2 at block_v 64, 1 at 128; K=256 fits 1 at 64); consumers: compute
    warpgroups per program (1 or 2, each with its own block_v state columns; 2 adds a memory warpgroup); save:
    also the chunk-start states and N ([B*HV, NC, K or C, V], operand dtype) as `chunk_pass.PassResiduals`."""
    B, Tp, HV, K = kt.shape
    V = v.shape[-1]
    BH, NC, C = local.t.shape[:3]
    _check_limits(K, V, block_v, consumers, s0.shape, (B, HV, K, V))
    op = kt.dtype
    out_type = (jax.ShapeDtypeStruct(v.shape, op), jax.ShapeDtypeStruct(s0.shape, jnp.float32),
                jax.ShapeDtypeStruct(m0.shape, jnp.float32))
    if save:
        out_type += (jax.ShapeDtypeStruct((BH, NC, K, V), op), jax.ShapeDtypeStruct((BH, NC, K, V), op),
                     jax.ShapeDtypeStruct((BH, NC, C, V), op))
    kernel = functools.partial(_kernel, num_heads=HV, num_chunks=NC, block_v=block_v, stages=stages,
                               consumers=consumers, save=save)
    call = _launch(kernel, out_type, 2, 4, K, C, BH, V, op, block_v=block_v, consumers=consumers,
                   interpret=interpret)
    o, fs, fm, *res = call(local.vecs, local.decay, local.t, local.attn, qb, kt, p, v, s0, m0)
    return (o, fs, fm, PassResiduals(*res)) if save else (o, fs, fm)


def sweep_mosaic(local: LocalOutputs, qb, kt, p, do, gfs, gfm, *, block_v=64, stages=2, consumers=1,
                 interpret=False):
    """The reverse sweep of dense rows: (lS, lM) [B*HV, NC, K, V] (the cotangents of the chunk-END states), dN
    [B*HV, NC, C, V] (operand dtype) and the cotangents of the start states [B, HV, K, V] float32, from do
    [B, Tp, HV, V] (operand dtype) and gfs, gfm [B, HV, K, V] float32 (those of the final states); as the kernel
    `chunk_pass.pass_backward` calls before the pass cotangents."""
    B, Tp, HV, K = kt.shape
    V = do.shape[-1]
    BH, NC, C = local.t.shape[:3]
    _check_limits(K, V, block_v, consumers, gfs.shape, (B, HV, K, V))
    op = kt.dtype
    out_type = (jax.ShapeDtypeStruct((BH, NC, K, V), op), jax.ShapeDtypeStruct((BH, NC, K, V), op),
                jax.ShapeDtypeStruct((BH, NC, C, V), op), jax.ShapeDtypeStruct(gfs.shape, jnp.float32),
                jax.ShapeDtypeStruct(gfm.shape, jnp.float32))
    kernel = functools.partial(_sweep_kernel, num_heads=HV, num_chunks=NC, block_v=block_v, stages=stages,
                               consumers=consumers)
    call = _launch(kernel, out_type, 2, 4, K, C, BH, V, op, block_v=block_v, consumers=consumers,
                   interpret=interpret)
    return call(local.vecs, local.decay, local.t, local.attn, qb, kt, p, do.astype(op), gfs, gfm)


def _inputs(B, T, H, K, V, seed=0, dtype=jnp.bfloat16, interpret=False):
    """The pass's inputs from ANCHORS.md-style random q, k, v and gates (through the op's preprocessing rules:
    L2-normalised, eta on k, alpha on p), with the chunk-local stage of `mdn_jax.pallas.chunk_local`."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 9)
    n = jax.random.normal
    unit = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    q, k = unit(n(keys[0], (B, T, H, K))), unit(n(keys[1], (B, T, H, K)))
    la = jax.nn.log_sigmoid(n(keys[3], (B, T, H))) / 8
    lm = jnp.maximum(jax.nn.log_sigmoid(n(keys[4], (B, T, H))) / 8, -2.0)
    beta = jax.nn.sigmoid(jax.random.uniform(keys[5], (B, T, H)))
    eta = jax.random.uniform(keys[6], (B, T, H), minval=0.0, maxval=2.0)
    qb, kt, p = (x.astype(dtype) for x in (q * K ** -0.5, k * eta[..., None], k * jnp.exp(la)[..., None]))
    v = n(keys[2], (B, T, H, V)).astype(dtype)
    s0, m0 = (0.1 * n(keys[i], (B, H, K, V)) for i in (7, 8))
    local = chunk_local(qb, kt, p, la, lm, beta, chunk=64, op_dtype=dtype, interpret=interpret)
    return local, qb, kt, p, v, s0, m0


def _triton_pass(local, qb, kt, p, v, s0, m0, *, block_v, interpret, save=False):
    """`chunk_pass.pass_forward` on dense rows."""
    B, Tp = kt.shape[:2]
    layout = dense_layout(B, Tp, local.t.shape[-1])
    return pass_forward(local, qb, kt, p, v, s0, m0, layout.chunk_init, layout.chunk_final, save=save,
                        block_v=block_v, interpret=interpret, num_warps=4)


def _triton_sweep(local, qb, kt, p, do, gfs, gfm, *, block_v, interpret):
    """The reverse-sweep kernel of `chunk_pass.pass_backward` alone, on dense rows: (lS, lM, dN, dS0, dM0)."""
    B, Tp, HV, K = kt.shape
    BH, NC, C = local.t.shape[:3]
    V = do.shape[-1]
    layout = dense_layout(B, Tp, C)
    op = kt.dtype
    lam = common.storage_dtype(op, gfs.dtype)
    kernel = functools.partial(chunk_pass._bwd_kernel, num_chunks=NC, num_heads=HV, block_v=block_v, num_states=B,
                               precision=common.dot_precision(op, interpret))
    out_shape = (jax.ShapeDtypeStruct((BH, NC, K, V), lam), jax.ShapeDtypeStruct((BH, NC, K, V), lam),
                 jax.ShapeDtypeStruct((BH, NC, C, V), lam), jax.ShapeDtypeStruct(gfs.shape, gfs.dtype),
                 jax.ShapeDtypeStruct(gfs.shape, gfs.dtype))
    return common.call(kernel, (BH, V // block_v), out_shape, interpret, 4, layout.chunk_init, layout.chunk_final,
                       local.decay, local.vecs, local.t, local.attn, qb, kt, p, do.astype(op), gfs, gfm,
                       stages=tuning.num_stages("pass_bwd", K, op))


def _cotangents(B, T, H, K, V, seed=1, dtype=jnp.bfloat16):
    """Random dO [B, T, H, V] (dtype) and cotangents of the final states [B, H, K, V] float32."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    do = jax.random.normal(keys[0], (B, T, H, V)).astype(dtype)
    return do, *(jax.random.normal(k, (B, H, K, V)) for k in keys[1:])


def _flat(outs):
    """(O, S_T, M_T[, S_c, M_c, N_c]) as a flat tuple."""
    return tuple(jax.tree.leaves(outs))


def _rel(x, y):
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))


def check(B=1, T=128, H=2, K=64, V=128, block_v=64, stages=2, consumers=1, save=False, dtype=jnp.float32):
    """Interpret mode on the CPU: relative errors of (O, S_T, M_T[, S_c, M_c, N_c]) against the Triton pass (also
    interpreted)."""
    args = _inputs(B, T, H, K, V, dtype=dtype, interpret=True)
    ours = pass_forward_mosaic(*args, block_v=block_v, stages=stages, consumers=consumers, save=save,
                               interpret=True)
    ref = _triton_pass(*args, block_v=block_v, interpret=True, save=save)
    return [_rel(a, b) for a, b in zip(_flat(ours), _flat(ref), strict=True)]


def check_sweep(B=1, T=128, H=2, K=64, V=128, block_v=64, stages=2, consumers=1, dtype=jnp.float32):
    """Interpret mode on the CPU: relative errors of (lS, lM, dN, dS0, dM0) of the Mosaic reverse sweep against the
    Triton sweep kernel (also interpreted)."""
    local, qb, kt, p, *_ = _inputs(B, T, H, K, V, dtype=dtype, interpret=True)
    cot = _cotangents(B, T, H, K, V, dtype=dtype)
    ours = sweep_mosaic(local, qb, kt, p, *cot, block_v=block_v, stages=stages, consumers=consumers, interpret=True)
    ref = _triton_sweep(local, qb, kt, p, *cot, block_v=block_v, interpret=True)
    return [_rel(a, b) for a, b in zip(ours, ref, strict=True)]


def _queued_ms(fn, args, reps=20, groups=5):
    """Median over groups of the mean device time per call of `reps` calls queued back to back."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(groups):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) * 1e3 / reps)
    return sorted(times)[len(times) // 2]


def bench(case, configs, mode="infer"):
    """GPU: a Triton kernel (its tuned block) and its Mosaic GPU version per (block_v, stages, consumers) on the
    same inputs: times and relative differences of the outputs. mode: 'infer' (the forward pass), 'save' (the
    forward under differentiation, also writing the chunk states and N) or 'sweep' (the reverse sweep)."""
    shape = SHAPES[case]
    local, qb, kt, p, v, s0, m0 = _inputs(**shape)
    blocks = block_config(shape["K"], shape["V"], 64, rows=shape["B"] * shape["H"])
    if mode == "sweep":
        args = (local, qb, kt, p, *_cotangents(**shape))
        triton_block, triton_fn, mosaic_fn = blocks.block_v, _triton_sweep, sweep_mosaic
        extra = {}
    else:
        args = (local, qb, kt, p, v, s0, m0)
        triton_block = blocks.block_v_save if mode == "save" else blocks.block_v_infer
        triton_fn, mosaic_fn, extra = _triton_pass, pass_forward_mosaic, dict(save=mode == "save")
    triton = jax.jit(functools.partial(triton_fn, block_v=triton_block, interpret=False, **extra))
    ref = _flat(triton(*args))
    base = dict(case=case, **shape, mode=mode)
    rows = [dict(base, impl="triton", block_v=triton_block, ms=_queued_ms(triton, args))]
    for block_v, stages, consumers in configs:
        row = dict(base, impl="mosaic", block_v=block_v, stages=stages, consumers=consumers)
        try:
            mosaic = jax.jit(functools.partial(mosaic_fn, block_v=block_v, stages=stages, consumers=consumers,
                                               **extra))
            row["rel_err"] = [_rel(a, b) for a, b in zip(_flat(mosaic(*args)), ref, strict=True)]
            row["ms"] = _queued_ms(mosaic, args)
        except Exception as e:  # noqa: BLE001 - a lowering or compile failure is a result of the probe too
            row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="interpret mode on the CPU against the Triton pass")
    ap.add_argument("--cases", default="S400")
    ap.add_argument("--configs", default="64:2:1,128:1:1,64:1:2",
                    help="comma-separated block_v:stages:consumers of the Mosaic pass")
    ap.add_argument("--modes", default="infer,save,sweep", help="comma-separated: infer, save, sweep (see bench)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.check:
        print(json.dumps(dict(check="interpret", rel_err=check(), rel_err_save=check(save=True),
                              rel_err_sweep=check_sweep())))
        return
    configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",")]
    rows = []
    for case, mode in ((c, m) for c in a.cases.split(",") for m in a.modes.split(",")):
        for r in bench(case, configs, mode):
            print(json.dumps(r), flush=True)
            rows.append(r)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "mosaic_pass.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
