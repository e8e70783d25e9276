"""Pallas kernels (Triton lowering) for the sequential pass over chunks with the output fused in.

The pass is the only sequential part of the chunkwise algorithm (spec 3.4-3.5). Per chunk c, from the
chunk-local stage's T, attn = Gamma o Qb Kt^T and [C] vectors a, b, d, e, Gamma_L, rho
(`mdn_jax.pallas.chunk_local`) and the inputs P, V, Qb, Kt:

    N_c     = T (V - diag(d) P S_c + diag(e) P M_c)          (= U - Y S_c + Z M_c of spec 3.4)
    O_c     = diag(a) Qb S_c - diag(b) Qb M_c + attn N_c
    S_{c+1} = a_L S_c - b_L M_c + Kt^T diag(Gamma_L) N_c     (= Kg^T N_c)
    M_{c+1} = m_L M_c - Kt^T diag(rho) N_c                   (= Kr^T N_c)

so the WY products U, Y, Z and Kg, Kr are never written or read: each step reads three [C, K] tiles (P, Qb, Kt)
and two [C, C] ones (T, attn). One program owns one (row, value head, block of V columns): S and M ([K, BV],
float32) stay in registers for the whole sequence, O is written chunk by chunk. The reverse kernel runs the
adjoint recurrence of spec 4.2 (B1)-(B2) with the output's contributions formed in registers from dO:

    dN_c = attn^T dO_c + diag(Gamma_L) Kt lS - diag(rho) Kt lM,   W_c = T^T dN_c   (lS, lM: of S_{c+1}, M_{c+1})
    lS  <- a_L lS + Qb^T diag(a) dO_c - P^T diag(d) W_c           (Y^T dN_c = P^T diag(d) W_c)
    lM  <- -b_L lS + m_L lM - Qb^T diag(b) dO_c + P^T diag(e) W_c

Residual policy: the forward under differentiation saves the chunk-start states S_c, M_c and N_c (operand dtype:
bf16 in training); the backward is one reverse sweep, then every cotangent of the pass's operands is a product of
saved tensors, parallel over chunks (`mdn_jax.pallas.chunk_grads`), returned as the cotangents of (U, Y, Z, Kg,
Kr) that the chunk-local VJP takes. With a `tuning.MosaicConfig` (dense rows) the forward pass and the reverse
sweep run as the Mosaic GPU kernels of `mdn_jax.pallas.mosaic_pass` instead, the same products and outputs.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.pallas import chunk_grads, common, mosaic_grads, mosaic_pass, tuning
from mdn_jax.pallas.chunk_local import VECS, LocalOutputs, vec_columns


class PassResiduals(NamedTuple):
    """What the forward under differentiation saves, [B*HV, NC, ...] per chunk, operand dtype."""

    s_start: jax.Array  # [K, V] S_c
    m_start: jax.Array  # [K, V] M_c
    n: jax.Array  # [C, V] N_c


def _load_start(idx, table_ref, head, vs, acc, carry):
    return lax.cond(idx >= 0, lambda: table_ref[idx, head, :, vs].astype(acc), lambda: carry)


def _fwd_kernel(init_ref, final_ref, decay_ref, vec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref, s0_ref,
                m0_ref, o_ref, fs_ref, fm_ref, *res_refs, num_chunks, num_heads, block_v, num_states, precision):
    bh = pl.program_id(0)
    vs = pl.ds(pl.program_id(1) * block_v, block_v)
    row, head = bh // num_heads, bh % num_heads
    chunk, K = t_ref.shape[-1], kt_ref.shape[-1]
    op_dtype, acc = kt_ref.dtype, fs_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)

    def body(c, carry):
        idx = init_ref[row, c]
        S = _load_start(idx, s0_ref, head, vs, acc, carry[0])
        M = _load_start(idx, m0_ref, head, vs, acc, carry[1])
        Sd, Md = S.astype(op_dtype), M.astype(op_dtype)
        ts = pl.ds(c * chunk, chunk)
        x = vec_columns(vec_ref, bh, c)
        p = p_ref[row, ts, head, :]
        r = v_ref[row, ts, head, vs].astype(acc) - x["d"] * dot(p, Sd) + x["e"] * dot(p, Md)
        n = dot(t_ref[bh, c], r.astype(op_dtype))
        nd = n.astype(op_dtype)
        qb = qb_ref[row, ts, head, :]
        o = x["a"] * dot(qb, Sd) - x["b"] * dot(qb, Md) + dot(attn_ref[bh, c], nd)
        o_ref[row, ts, head, vs] = o.astype(o_ref.dtype)
        if res_refs:
            s_ref, m_ref, n_ref = res_refs
            s_ref[bh, c, :, vs] = Sd.astype(s_ref.dtype)
            m_ref[bh, c, :, vs] = Md.astype(m_ref.dtype)
            n_ref[bh, c, :, vs] = nd.astype(n_ref.dtype)
        kt = kt_ref[row, ts, head, :]
        a_l, b_l, m_l = decay_ref[bh, c, 0], decay_ref[bh, c, 1], decay_ref[bh, c, 2]
        S_next = a_l * S - b_l * M + dot(kt, (x["g_last"] * n).astype(op_dtype), trans_a=True)
        M_next = m_l * M - dot(kt, (x["rho"] * n).astype(op_dtype), trans_a=True)
        f = final_ref[row, c]

        @pl.when(f < num_states)
        def _():
            fs_ref[f, head, :, vs] = S_next.astype(fs_ref.dtype)
            fm_ref[f, head, :, vs] = M_next.astype(fm_ref.dtype)

        return S_next, M_next

    zeros = jnp.zeros((K, block_v), acc)
    lax.fori_loop(0, num_chunks, body, (zeros, zeros))


def _bwd_kernel(init_ref, final_ref, decay_ref, vec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, do_ref, gfs_ref,
                gfm_ref, ls_ref, lm_ref, dn_ref, ds0_ref, dm0_ref, *, num_chunks, num_heads, block_v, num_states,
                precision):
    bh = pl.program_id(0)
    vs = pl.ds(pl.program_id(1) * block_v, block_v)
    row, head = bh // num_heads, bh % num_heads
    chunk, K = t_ref.shape[-1], kt_ref.shape[-1]
    op_dtype, acc = kt_ref.dtype, ds0_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)

    def body(i, carry):
        c = num_chunks - 1 - i
        f = final_ref[row, c]
        lS = lax.cond(f < num_states, lambda: carry[0] + gfs_ref[f, head, :, vs].astype(acc), lambda: carry[0])
        lM = lax.cond(f < num_states, lambda: carry[1] + gfm_ref[f, head, :, vs].astype(acc), lambda: carry[1])
        lSd, lMd = lS.astype(op_dtype), lM.astype(op_dtype)
        ls_ref[bh, c, :, vs] = lSd.astype(ls_ref.dtype)
        lm_ref[bh, c, :, vs] = lMd.astype(lm_ref.dtype)
        ts = pl.ds(c * chunk, chunk)
        x = vec_columns(vec_ref, bh, c)
        do = do_ref[row, ts, head, vs].astype(acc)
        kt = kt_ref[row, ts, head, :]
        dn = (dot(attn_ref[bh, c], do.astype(op_dtype), trans_a=True) + x["g_last"] * dot(kt, lSd)
              - x["rho"] * dot(kt, lMd))
        dn_ref[bh, c, :, vs] = dn.astype(dn_ref.dtype)
        w = dot(t_ref[bh, c], dn.astype(op_dtype), trans_a=True)
        # Each state's two products in one expression: forming both P^T products first keeps more [K, block_v]
        # accumulators live, 1.3B fwd+bwd 8.27 ms vs 6.92 (H200, 7c99108 vs b4699bc).
        qb, p = qb_ref[row, ts, head, :], p_ref[row, ts, head, :]
        a_l, b_l, m_l = decay_ref[bh, c, 0], decay_ref[bh, c, 1], decay_ref[bh, c, 2]
        lS_prev = (a_l * lS + dot(qb, (x["a"] * do).astype(op_dtype), trans_a=True)
                   - dot(p, (x["d"] * w).astype(op_dtype), trans_a=True))
        lM_prev = (-b_l * lS + m_l * lM - dot(qb, (x["b"] * do).astype(op_dtype), trans_a=True)
                   + dot(p, (x["e"] * w).astype(op_dtype), trans_a=True))
        idx = init_ref[row, c]

        @pl.when(idx >= 0)
        def _():
            ds0_ref[idx, head, :, vs] = lS_prev.astype(ds0_ref.dtype)
            dm0_ref[idx, head, :, vs] = lM_prev.astype(dm0_ref.dtype)

        keep = (idx < 0).astype(acc)
        return lS_prev * keep, lM_prev * keep

    zeros = jnp.zeros((K, block_v), acc)
    lax.fori_loop(0, num_chunks, body, (zeros, zeros))


def pass_forward(local: LocalOutputs, qb, kt, p, v, s0, m0, chunk_init, chunk_final, *, save, block_v, interpret,
                 num_warps, mosaic: tuning.MosaicConfig | None = None):
    """The sequential pass with fused output.

    local: the chunk-local stage's outputs ([B*HV, NC, ...]); qb, kt, p: [B, NC * C, HV, K] and v:
    [B, NC * C, HV, V] (operand dtype, the op's layout); s0, m0: [N, HV, K, V] float32 start-state table;
    chunk_init, chunk_final: [B, NC] int32 (see `mdn_jax.ops.layout`). Returns O [B, NC * C, HV, V] and the
    final (S, M) [N, HV, K, V]; save: also `PassResiduals` for `pass_backward`. mosaic: the Mosaic GPU kernel
    (dense rows only: chunk_init, chunk_final are then those of `dense_layout` and not read).
    """
    if mosaic is not None:
        o, fs, fm, *res = mosaic_pass.pass_forward_mosaic(local, qb, kt, p, v, s0, m0, save=save,
                                                          interpret=interpret, **mosaic._asdict())
        return (o, fs, fm, PassResiduals(*res)) if save else (o, fs, fm)
    BH, NC = local.t.shape[:2]
    K, V = kt.shape[-1], v.shape[-1]
    n_states, HV = s0.shape[:2]
    acc = s0.dtype  # float32 (float64 only in interpret mode)
    res_dtype = common.storage_dtype(kt.dtype, acc)
    kernel = functools.partial(_fwd_kernel, num_chunks=NC, num_heads=HV, block_v=block_v, num_states=n_states,
                               precision=common.dot_precision(kt.dtype, interpret))
    out_shape = [jax.ShapeDtypeStruct(v.shape, res_dtype), jax.ShapeDtypeStruct(s0.shape, acc),
                 jax.ShapeDtypeStruct(m0.shape, acc)]
    if save:
        C = local.t.shape[-1]
        out_shape += [jax.ShapeDtypeStruct((BH, NC, K, V), res_dtype), jax.ShapeDtypeStruct((BH, NC, K, V), res_dtype),
                      jax.ShapeDtypeStruct((BH, NC, C, V), res_dtype)]
    o, fs, fm, *res = common.call(kernel, (BH, V // block_v), tuple(out_shape), interpret, num_warps,
                                  chunk_init, chunk_final, local.decay, local.vecs, local.t, local.attn, qb, kt, p, v,
                                  s0, m0, stages=tuning.num_stages("pass_save" if save else "pass", K, kt.dtype,
                                                                   None if save else block_v))
    return (o, fs, fm, PassResiduals(*res)) if save else (o, fs, fm)


def pass_backward(local: LocalOutputs, res: PassResiduals, qb, kt, p, s0, chunk_init, chunk_final, do, gfs, gfm, *,
                  block_v, interpret, num_warps, mosaic: tuning.MosaicConfig | None = None):
    """The reverse sweep and the pass cotangents, from `pass_forward`'s inputs and residuals.

    do: [B, NC * C, HV, V] cotangent of O; gfs, gfm: [N, HV, K, V] those of the final states. Returns the
    cotangents of the chunk-local stage's quantities in the layouts of `mdn_jax.pallas.local_vjp.local_stage_vjp`:
    (a, b, decay) [B*HV, NC, C] float32, (qb, attn, u, y, z, kg, kr) [B*HV, NC, C, .] in the operand dtype; and
    those of s0, m0 [N, HV, K, V] (zero for table rows no sequence starts from). mosaic: the reverse sweep as
    the Mosaic GPU kernel (dense rows, as in `pass_forward`).
    """
    BH, NC, K, V = res.s_start.shape
    C = local.t.shape[-1]
    n_states, HV = s0.shape[:2]
    acc = s0.dtype
    op_dtype = kt.dtype
    lam_dtype = common.storage_dtype(op_dtype, acc)
    kernel = functools.partial(_bwd_kernel, num_chunks=NC, num_heads=HV, block_v=block_v, num_states=n_states,
                               precision=common.dot_precision(op_dtype, interpret))
    out_shape = (jax.ShapeDtypeStruct((BH, NC, K, V), lam_dtype), jax.ShapeDtypeStruct((BH, NC, K, V), lam_dtype),
                 jax.ShapeDtypeStruct((BH, NC, C, V), lam_dtype), jax.ShapeDtypeStruct(s0.shape, acc),
                 jax.ShapeDtypeStruct(s0.shape, acc))
    do_op = do.astype(op_dtype)
    if mosaic is not None:
        ls, lm, dn, ds0, dm0 = mosaic_pass.sweep_mosaic(local, qb, kt, p, do_op, gfs, gfm, interpret=interpret,
                                                        **mosaic._asdict())
    else:
        ls, lm, dn, ds0, dm0 = common.call(kernel, (BH, V // block_v), out_shape, interpret, num_warps, chunk_init,
                                           chunk_final, local.decay, local.vecs, local.t, local.attn, qb, kt, p,
                                           do_op, gfs, gfm, stages=tuning.num_stages("pass_bwd", K, op_dtype))
    # Cotangents of the pass's operands, parallel over chunks (ls, lm: cotangents of the chunk-END states).
    cfg = tuning.grads_config()
    a, b = (local.vecs[:, :, VECS.index(name)] for name in ("a", "b"))
    args = (a, b, qb, do_op, dn, res.n, res.s_start, res.m_start, ls, lm)
    kind = tuning.grads_kernel(mosaic_grads.supported(K, V, C), op_dtype, interpret=interpret)
    if kind == "mosaic":
        da, db, dqb, dy, dz, dkg, dkr, dattn, ddecay = mosaic_grads.pass_cotangents_mosaic(
            *args, num_heads=HV, interpret=interpret)
    elif kind == "triton":
        da, db, dqb, dy, dz, dkg, dkr, dattn, ddecay = chunk_grads.pass_cotangents(
            *args, num_heads=HV, interpret=interpret, block_k=cfg.block_k, block_v=cfg.block_v,
            num_warps=cfg.num_warps)
    else:
        da, db, dqb, dy, dz, dkg, dkr, dattn, ddecay = chunk_grads.pass_cotangents_xla(*args, num_heads=HV)
    ddecay = jnp.pad(ddecay, [(0, 0), (0, 0), (0, C - 3)]).astype(acc)
    # A start state taken from the table was written into ds0/dm0 by the kernel; rows never used stay zero.
    used = jnp.zeros((n_states,), bool).at[chunk_init.reshape(-1)].set(True, mode="drop")
    ds0, dm0 = (jnp.where(used[:, None, None, None], x, 0.0) for x in (ds0, dm0))
    return (da, db, ddecay, dqb, dattn, dn, dy, dz, dkg, dkr), (ds0, dm0)
