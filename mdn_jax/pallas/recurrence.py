"""Pallas kernels (Triton lowering) for the sequential pass over chunks, forward and reverse.

The pass is the only sequential part of the chunkwise algorithm (spec 3.5). Per chunk c, with the
chunk-local operands of `mdn_jax.ops.chunked.ChunkTensors` (U, Y, Z, Kg = Kt diag(Gamma_L), Kr = Kt diag(rho)):

    N_c     = U_c - Y_c S_c + Z_c M_c
    S_{c+1} = a_L S_c - b_L M_c + Kg_c^T N_c
    M_{c+1} = m_L M_c - Kr_c^T N_c

One program owns one (row, value head, V block): S and M ([K, BV], float32) stay in registers for the
whole sequence. The reverse kernel runs the adjoint recurrence (B1)-(B2) of spec 4.2 for the same
linear map, so that `recurrence` below has an exact custom VJP:

    dN_c  = gN_c + Kg_c lS - Kr_c lM                           (lS, lM: cotangents of S_{c+1}, M_{c+1})
    lS   <- a_L lS + gS_c - Y_c^T dN_c
    lM   <- -b_L lS + m_L lM + gM_c + Z_c^T dN_c

Residual policy: the forward writes the chunk-start states S_c, M_c (needed by the output and by the
parameter cotangents), the backward recomputes nothing sequential twice: one reverse sweep.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.pallas import common


def _fwd_kernel(init_ref, final_ref, decay_ref, u_ref, y_ref, z_ref, kg_ref, kr_ref, s0_ref, m0_ref,
                s_ref, m_ref, n_ref, fs_ref, fm_ref, *, num_chunks, num_heads, block_v, num_states, precision):
    bh = pl.program_id(0)
    vs = pl.ds(pl.program_id(1) * block_v, block_v)
    row, head = bh // num_heads, bh % num_heads
    K = y_ref.shape[-1]
    op_dtype, acc = y_ref.dtype, fs_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)

    def body(c, carry):
        S, M = carry
        idx = init_ref[row, c]
        S, M = lax.cond(idx >= 0,
                        lambda: (s0_ref[idx, head, :, vs].astype(acc),
                                 m0_ref[idx, head, :, vs].astype(acc)),
                        lambda: (S, M))
        s_ref[bh, c, :, vs] = S.astype(s_ref.dtype)
        m_ref[bh, c, :, vs] = M.astype(m_ref.dtype)
        Sd, Md = S.astype(op_dtype), M.astype(op_dtype)
        n = (u_ref[bh, c, :, vs].astype(acc) - dot(y_ref[bh, c], Sd)
             + dot(z_ref[bh, c], Md))
        n_ref[bh, c, :, vs] = n.astype(n_ref.dtype)
        nd = n.astype(op_dtype)
        a_l, b_l, m_l = decay_ref[bh, c, 0], decay_ref[bh, c, 1], decay_ref[bh, c, 2]
        S_next = a_l * S - b_l * M + dot(kg_ref[bh, c], nd, trans_a=True)
        M_next = m_l * M - dot(kr_ref[bh, c], nd, trans_a=True)
        f = final_ref[row, c]

        @pl.when(f < num_states)
        def _():
            fs_ref[f, head, :, vs] = S_next.astype(fs_ref.dtype)
            fm_ref[f, head, :, vs] = M_next.astype(fm_ref.dtype)

        return S_next, M_next

    zeros = jnp.zeros((K, block_v), acc)
    lax.fori_loop(0, num_chunks, body, (zeros, zeros))


def _bwd_kernel(init_ref, final_ref, decay_ref, y_ref, z_ref, kg_ref, kr_ref, gs_ref, gm_ref, gn_ref,
                gfs_ref, gfm_ref, ls_ref, lm_ref, dn_ref, ds0_ref, dm0_ref,
                *, num_chunks, num_heads, block_v, num_states, precision):
    bh = pl.program_id(0)
    vs = pl.ds(pl.program_id(1) * block_v, block_v)
    row, head = bh // num_heads, bh % num_heads
    K = y_ref.shape[-1]
    op_dtype, acc = y_ref.dtype, ds0_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)

    def body(i, carry):
        lS, lM = carry
        c = num_chunks - 1 - i
        f = final_ref[row, c]
        lS, lM = lax.cond(f < num_states,
                          lambda: (lS + gfs_ref[f, head, :, vs].astype(acc),
                                   lM + gfm_ref[f, head, :, vs].astype(acc)),
                          lambda: (lS, lM))
        ls_ref[bh, c, :, vs] = lS.astype(ls_ref.dtype)
        lm_ref[bh, c, :, vs] = lM.astype(lm_ref.dtype)
        lSd, lMd = lS.astype(op_dtype), lM.astype(op_dtype)
        dn = (gn_ref[bh, c, :, vs].astype(acc) + dot(kg_ref[bh, c], lSd)
              - dot(kr_ref[bh, c], lMd))
        dn_ref[bh, c, :, vs] = dn.astype(dn_ref.dtype)
        dnd = dn.astype(op_dtype)
        a_l, b_l, m_l = decay_ref[bh, c, 0], decay_ref[bh, c, 1], decay_ref[bh, c, 2]
        lS_prev = a_l * lS + gs_ref[bh, c, :, vs].astype(acc) - dot(y_ref[bh, c], dnd, trans_a=True)
        lM_prev = (-b_l * lS + m_l * lM + gm_ref[bh, c, :, vs].astype(acc)
                   + dot(z_ref[bh, c], dnd, trans_a=True))
        idx = init_ref[row, c]

        @pl.when(idx >= 0)
        def _():
            ds0_ref[idx, head, :, vs] = lS_prev.astype(ds0_ref.dtype)
            dm0_ref[idx, head, :, vs] = lM_prev.astype(dm0_ref.dtype)

        keep = (idx < 0).astype(acc)
        return lS_prev * keep, lM_prev * keep

    zeros = jnp.zeros((K, block_v), acc)
    lax.fori_loop(0, num_chunks, body, (zeros, zeros))


@functools.partial(jax.custom_vjp, nondiff_argnums=(10, 11, 12))
def recurrence(u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final, block_v, interpret, num_warps):
    """Sequential pass (forward kernel). u [BH, NC, C, V]; y, z, kg, kr [BH, NC, C, K]; decay [BH, NC, 3];
    s0, m0 [N, HV, K, V]; chunk_init, chunk_final [B, NC] int32.

    Returns (S_c, M_c [BH, NC, K, V] chunk-start states, N [BH, NC, C, V], final S, M [N, HV, K, V]).
    """
    return _recurrence_fwd(u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final, block_v, interpret,
                           num_warps)[0]


def _recurrence_fwd(u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final, block_v, interpret, num_warps):
    BH, NC, C, V = u.shape
    K = y.shape[-1]
    n_states, HV = s0.shape[:2]
    acc = s0.dtype  # float32 (float64 only in interpret mode)
    # Chunk-start states are stored in the operand dtype (bf16 in training: half the traffic).
    state_dtype = common.storage_dtype(y.dtype, acc)
    kernel = functools.partial(_fwd_kernel, num_chunks=NC, num_heads=HV, block_v=block_v, num_states=n_states,
                               precision=common.dot_precision(y.dtype, interpret))
    out_shape = (jax.ShapeDtypeStruct((BH, NC, K, V), state_dtype),
                 jax.ShapeDtypeStruct((BH, NC, K, V), state_dtype),
                 jax.ShapeDtypeStruct((BH, NC, C, V), u.dtype),
                 jax.ShapeDtypeStruct(s0.shape, acc),
                 jax.ShapeDtypeStruct(m0.shape, acc))
    outs = common.call(kernel, (BH, V // block_v), out_shape, interpret, num_warps,
                 chunk_init, chunk_final, decay, u, y, z, kg, kr, s0, m0)
    s_start, m_start, n, fs, fm = outs
    res = (y, z, kg, kr, decay, s_start, m_start, n, chunk_init, chunk_final, s0, m0)
    return (s_start, m_start, n, fs, fm), res


def _recurrence_bwd(block_v, interpret, num_warps, res, cot):
    y, z, kg, kr, decay, s_start, m_start, n, chunk_init, chunk_final, s0, m0 = res
    gs, gm, gn, gfs, gfm = cot
    BH, NC, C, V = n.shape
    K = y.shape[-1]
    n_states, HV = s0.shape[:2]
    kernel = functools.partial(_bwd_kernel, num_chunks=NC, num_heads=HV, block_v=block_v, num_states=n_states,
                               precision=common.dot_precision(y.dtype, interpret))
    acc = s0.dtype
    lam_dtype = common.storage_dtype(y.dtype, acc)
    out_shape = (jax.ShapeDtypeStruct((BH, NC, K, V), lam_dtype),
                 jax.ShapeDtypeStruct((BH, NC, K, V), lam_dtype),
                 jax.ShapeDtypeStruct((BH, NC, C, V), acc),
                 jax.ShapeDtypeStruct(s0.shape, acc),
                 jax.ShapeDtypeStruct(m0.shape, acc))
    ls, lm, dn, ds0, dm0 = common.call(kernel, (BH, V // block_v), out_shape, interpret, num_warps,
                                 chunk_init, chunk_final, decay, y, z, kg, kr, gs, gm, gn, gfs, gfm)
    # Parameter cotangents: parallel over chunks (ls, lm are the cotangents of the chunk-END states).
    hi = "highest"
    du = dn.astype(n.dtype)
    mm = functools.partial(jnp.einsum, precision=hi, preferred_element_type=acc)
    dnd = dn.astype(y.dtype)
    dy = -mm("bncv,bnkv->bnck", dnd, s_start).astype(y.dtype)
    dz = mm("bncv,bnkv->bnck", dnd, m_start).astype(z.dtype)
    dkg = mm("bncv,bnkv->bnck", n, ls).astype(kg.dtype)
    dkr = -mm("bncv,bnkv->bnck", n, lm).astype(kr.dtype)
    d_al = mm("bnkv,bnkv->bn", ls, s_start)
    d_bl = -mm("bnkv,bnkv->bn", ls, m_start)
    d_ml = mm("bnkv,bnkv->bn", lm, m_start)
    ddecay = jnp.stack([d_al, d_bl, d_ml], axis=-1).astype(decay.dtype)
    # A start state taken from the table was written into ds0/dm0 by the kernel; untouched rows are zero.
    used = jnp.zeros((n_states,), bool).at[chunk_init.reshape(-1)].set(True, mode="drop")
    ds0 = jnp.where(used[:, None, None, None], ds0, 0.0).astype(s0.dtype)
    dm0 = jnp.where(used[:, None, None, None], dm0, 0.0).astype(m0.dtype)
    return du, dy, dz, dkg, dkr, ddecay, ds0, dm0, None, None


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
