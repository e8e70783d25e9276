"""The forward pass without differentiation in Mosaic GPU (wgmma, TMA): a prototype beside the Triton-lowered
`mdn_jax.pallas.chunk_pass.pass_forward`, for side-by-side measurement before it is worth a place in the library.

One program per (row x value head, value columns), as the Triton pass: S and M ([K, block_v] float32) are
carried in registers across the chunks; each chunk's tiles (P, Qb, Kt [C, K], T, attn [C, C], V, the [C] vectors
and decays) arrive by TMA, and the eight products of a chunk step run as wgmma from shared memory:

    R = V - diag(d) P S + diag(e) P M,   N = T R,   O = diag(a) Qb S - diag(b) Qb M + attn N,
    S' = a_L S - b_L M + Kt^T diag(Gamma_L) N,   M' = m_L M - Kt^T diag(rho) N.

consumers=1: one warpgroup loads (`plgpu.emit_pipeline`, `stages` chunks in flight) and computes block_v columns;
consumers=2: two compute warpgroups of block_v columns each share the K-side tiles that a memory warpgroup brings
(`plgpu.emit_pipeline_warp_specialized`): half the programs and half the K-side reads.

Prototype limits: dense rows only (one sequence per row, chunk_init/chunk_final of `ops.layout.dense_layout`),
16-bit operands on the GPU, K and block_v multiples of 64. Interpret mode (`--check`, CPU) drops the shared-memory
tiling/swizzle transforms, which the interpreter rejects.

    python experiments/mosaic_pass.py --check                    # CPU, interpret mode: equal to pass_forward
    python experiments/mosaic_pass.py --cases S400 --configs 64:2:1,64:1:2 --save 0,1 --out DIR   # GPU: timed
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
    col = {name: lax.broadcast_in_dim(plgpu.load(vec_s.at[i], layout=_ROW, optimized=False), (C, block_v), [0])
           for i, name in enumerate(VECS)}
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


def _kernel(vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref, s0_ref, m0_ref, o_ref, fs_ref, fm_ref,
            *res_refs_and_bufs, num_heads, num_chunks, block_v, stages, consumers, save, transforms):
    """consumers 1: one warpgroup loads (TMA through `emit_pipeline`) and computes; 2: two compute warpgroups,
    each with its own [K, block_v] state block, share one [C, 2 block_v] value tile and the K-side tiles that a
    third (memory) warpgroup brings (`emit_pipeline_warp_specialized`)."""
    res_refs, bufs = res_refs_and_bufs[:3 * save], res_refs_and_bufs[3 * save:]
    bh, vb = lax.axis_index("bh"), lax.axis_index("vb")
    row, head = bh // num_heads, bh % num_heads
    C, K = t_ref.shape[-1], qb_ref.shape[-1]
    gmem = (vec_ref, dec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref)
    spec = functools.partial(plgpu.BlockSpec, transforms=transforms)
    in_specs = [plgpu.BlockSpec((None, None, len(VECS), C), lambda c: (bh, c, 0, 0)),
                plgpu.BlockSpec((None, None, C), lambda c: (bh, c, 0)),
                spec((None, None, C, C), lambda c: (bh, c, 0, 0)),
                spec((None, None, C, C), lambda c: (bh, c, 0, 0))]
    in_specs += [spec((None, C, None, K), lambda c: (row, c, head, 0)) for _ in range(3)]
    in_specs += [spec((None, C, None, consumers * block_v), lambda c: (row, c, head, vb))]

    def wg_index():
        return lax.axis_index("wg") if consumers > 1 else 0

    def columns():  # this warpgroup's V columns
        return pl.ds((vb * consumers + wg_index()) * block_v, block_v)

    def body(idx, *tiles_and_carry):
        *tiles, carry = tiles_and_carry
        wg = wg_index()
        if consumers > 1:
            tiles[-1] = tiles[-1].at[:, pl.ds(wg * block_v, block_v)]
        mine = tuple(b.at[wg] for b in bufs)
        return _chunk_step(idx[0], tiles, mine, carry, (o_ref, *res_refs), bh, row, head, columns())

    def run(pipeline):  # states in, pipeline, states out
        vs = columns()
        load = lambda src: plgpu.load(src.at[row, head, :, vs], layout=plgpu.Layout.WGMMA, optimized=False)  # noqa: E731
        S, M = pipeline((load(s0_ref), load(m0_ref)))
        fs_ref[row, head, :, vs] = S
        fm_ref[row, head, :, vs] = M
        plgpu.wait_smem_to_gmem(0)  # the last step's stores

    if consumers == 1:
        run(lambda carry: plgpu.emit_pipeline(body, grid=(num_chunks,), in_specs=in_specs,
                                              max_concurrent_steps=stages, init_carry=carry)(*gmem))
    else:
        plgpu.emit_pipeline_warp_specialized(
            body, grid=(num_chunks,), memory_registers=40, in_specs=in_specs, wg_axis="wg",
            num_compute_wgs=consumers, max_concurrent_steps=stages, compute_context=run)(*gmem)


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
    if consumers not in (1, 2) or V % (consumers * block_v) or K % 64 or block_v % 64 or s0.shape != (B, HV, K, V):
        raise ValueError(f"prototype limits: K={K}, V={V}, block_v={block_v}, consumers={consumers}, s0 {s0.shape}")
    op = kt.dtype
    transforms = () if interpret else (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    smem = lambda *shape: plgpu.SMEM((consumers,) + shape, op, transforms=transforms)  # noqa: E731 - per warpgroup
    scratch = [smem(K, block_v), smem(K, block_v)] + [smem(C, block_v) for _ in range(4)]
    kernel = functools.partial(_kernel, num_heads=HV, num_chunks=NC, block_v=block_v, stages=stages,
                               consumers=consumers, save=save, transforms=transforms)
    out_type = (jax.ShapeDtypeStruct(v.shape, op), jax.ShapeDtypeStruct(s0.shape, jnp.float32),
                jax.ShapeDtypeStruct(m0.shape, jnp.float32))
    if save:
        out_type += (jax.ShapeDtypeStruct((BH, NC, K, V), op), jax.ShapeDtypeStruct((BH, NC, K, V), op),
                     jax.ShapeDtypeStruct((BH, NC, C, V), op))
    threads = dict(num_threads=consumers + 1, thread_name="wg") if consumers > 1 else {}
    call = plgpu.kernel(kernel, out_type=out_type, scratch_types=scratch, grid=(BH, V // (consumers * block_v)),
                        grid_names=("bh", "vb"), interpret=plgpu.InterpretGPUParams() if interpret else False,
                        **threads)
    o, fs, fm, *res = call(local.vecs, local.decay, local.t, local.attn, qb, kt, p, v, s0, m0)
    return (o, fs, fm, PassResiduals(*res)) if save else (o, fs, fm)


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


def bench(case, configs, save=False):
    """GPU: the Triton pass (its tuned block) and the Mosaic GPU pass per (block_v, stages, consumers) on the same
    inputs: times and relative differences of the outputs (save: the forward under differentiation, which also
    writes the chunk states and N)."""
    shape = SHAPES[case]
    args = _inputs(**shape)
    blocks = block_config(shape["K"], shape["V"], 64, rows=shape["B"] * shape["H"])
    triton_block = blocks.block_v_save if save else blocks.block_v_infer
    triton = jax.jit(functools.partial(_triton_pass, block_v=triton_block, interpret=False, save=save))
    ref = _flat(triton(*args))
    base = dict(case=case, **shape, save=save)
    rows = [dict(base, impl="triton", block_v=triton_block, ms=_queued_ms(triton, args))]
    for block_v, stages, consumers in configs:
        row = dict(base, impl="mosaic", block_v=block_v, stages=stages, consumers=consumers)
        try:
            mosaic = jax.jit(functools.partial(pass_forward_mosaic, block_v=block_v, stages=stages,
                                               consumers=consumers, save=save))
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
    ap.add_argument("--save", default="0", help="comma-separated 0/1: without / with the residual writes")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.check:
        print(json.dumps(dict(check="interpret", rel_err=check())))
        return
    configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",")]
    rows = []
    for case, save in ((c, s) for c in a.cases.split(",") for s in a.save.split(",")):
        for r in bench(case, configs, save=save == "1"):
            print(json.dumps(r), flush=True)
            rows.append(r)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "mosaic_pass.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
