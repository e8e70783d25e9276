"""Cotangents of the chunk-local operands of the sequential pass, parallel over chunks (spec 4.2, B3).

After the reverse sweep of `mdn_jax.pallas.chunk_pass` has produced, per chunk c, dN_c and the cotangents
lS_c, lM_c of the chunk-end states, every cotangent of the pass's chunk-local inputs is a product of saved
tensors (S_c, M_c: chunk-start states; N_c):

    dQb   = diag(a) dO S_c^T - diag(b) dO M_c^T          da = rowsum(Qb o dO S_c^T), db = -rowsum(Qb o dO M_c^T)
    dY    = -dN S_c^T,   dZ = dN M_c^T,   dKg = N lS^T,   dKr = -N lM^T,   dattn = dO N^T
    d(a_L, b_L, m_L) = (<lS, S_c>, -<lS, M_c>, <lM, M_c>)

`pass_cotangents` computes them in one Pallas kernel: one program per (K block, chunk, row x head) loops over
V and reads each saved tensor once (the K blocks of a chunk run side by side, so dO and N come from L2).
`pass_cotangents_xla` is the same in batched XLA products (the reference of the tests; `MDN_GRADS_KERNEL=0`
selects it for side-by-side timing).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.pallas import common, tuning
from mdn_jax.pallas.local_vjp import to_rows


def _grads_kernel(a_ref, b_ref, qb_ref, do_ref, dn_ref, n_ref, s_ref, m_ref, ls_ref, lm_ref,
                  dqb_ref, dy_ref, dz_ref, dkg_ref, dkr_ref, dattn_ref, da_ref, db_ref, ddecay_ref,
                  *, num_heads, block_k, block_v, precision):
    kb, c, bh = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    row, head = bh // num_heads, bh % num_heads
    C, V = n_ref.shape[-2:]
    ks = pl.ds(kb * block_k, block_k)
    acc = da_ref.dtype
    dot_t = functools.partial(common.dot_t, precision=precision, acc=acc)

    def body(j, carry):
        g_s, g_m, g_y, g_z, g_g, g_r, g_a, d_s, d_sm, d_m = carry
        vs = pl.ds(j * block_v, block_v)
        do = do_ref[row, pl.ds(c * C, C), head, vs]
        dn, n = dn_ref[bh, c, :, vs], n_ref[bh, c, :, vs]
        S, M = s_ref[bh, c, ks, vs], m_ref[bh, c, ks, vs]
        lS, lM = ls_ref[bh, c, ks, vs], lm_ref[bh, c, ks, vs]
        Sf, Mf, lSf = S.astype(acc), M.astype(acc), lS.astype(acc)
        return (g_s + dot_t(do, S), g_m + dot_t(do, M), g_y + dot_t(dn, S), g_z + dot_t(dn, M),
                g_g + dot_t(n, lS), g_r + dot_t(n, lM), g_a + dot_t(do, n), d_s + jnp.sum(lSf * Sf),
                d_sm + jnp.sum(lSf * Mf), d_m + jnp.sum(lM.astype(acc) * Mf))

    tile = jnp.zeros((C, block_k), acc)
    zero = jnp.zeros((), acc)
    g_s, g_m, g_y, g_z, g_g, g_r, g_a, d_s, d_sm, d_m = lax.fori_loop(
        0, V // block_v, body, (tile,) * 6 + (jnp.zeros((C, C), acc),) + (zero,) * 3)
    a, b = a_ref[bh, c][:, None], b_ref[bh, c][:, None]
    qb = qb_ref[row, pl.ds(c * C, C), head, ks].astype(acc)
    dqb_ref[bh, c, :, ks] = (a * g_s - b * g_m).astype(dqb_ref.dtype)
    dy_ref[bh, c, :, ks] = (-g_y).astype(dy_ref.dtype)
    dz_ref[bh, c, :, ks] = g_z.astype(dz_ref.dtype)
    dkg_ref[bh, c, :, ks] = g_g.astype(dkg_ref.dtype)
    dkr_ref[bh, c, :, ks] = (-g_r).astype(dkr_ref.dtype)
    da_ref[kb, bh, c] = jnp.sum(qb * g_s, axis=1)
    db_ref[kb, bh, c] = -jnp.sum(qb * g_m, axis=1)
    ddecay_ref[kb, bh, c] = common.scalars_vector(C, d_s, -d_sm, d_m)

    @pl.when(kb == 0)
    def _():
        dattn_ref[bh, c] = g_a.astype(dattn_ref.dtype)


def pass_cotangents(a, b, qb, do, dn, n, s_start, m_start, ls, lm, *, num_heads, interpret, block_k=64, block_v=64,
                    num_warps=8):
    """Cotangents of (a, b, qb, attn, y, z, kg, kr, decay[:3]) of the sequential pass, in one Pallas kernel.

    a, b: [BH, NC, C] float32; qb: [B, NC * C, HV, K] and do: [B, NC * C, HV, V] (the op's layout); dn, n:
    [BH, NC, C, V];
    s_start, m_start, ls, lm: [BH, NC, K, V] (operand dtype). Returns (da, db) [BH, NC, C] float32, (dqb, dy, dz,
    dkg, dkr) [BH, NC, C, K] and dattn [BH, NC, C, C] in the operand dtype, ddecay [BH, NC, 3] float32.
    """
    BH, NC, C, V = n.shape
    K = qb.shape[-1]
    block_k, block_v = min(block_k, K), min(block_v, V)
    nkb = K // block_k
    op_dtype = n.dtype
    acc = common.acc_dtype(op_dtype)
    kernel = functools.partial(_grads_kernel, num_heads=num_heads, block_k=block_k, block_v=block_v,
                               precision=common.dot_precision(op_dtype, interpret))
    ck = jax.ShapeDtypeStruct((BH, NC, C, K), op_dtype)
    part = jax.ShapeDtypeStruct((nkb, BH, NC, C), acc)
    out_shape = (ck,) * 5 + (jax.ShapeDtypeStruct((BH, NC, C, C), op_dtype), part, part, part)
    dqb, dy, dz, dkg, dkr, dattn, da, db, ddecay = common.call(
        kernel, (nkb, NC, BH), out_shape, interpret, num_warps, a, b, qb, do, dn, n, s_start, m_start, ls, lm,
        stages=tuning.num_stages("grads", K, op_dtype))
    return da.sum(0), db.sum(0), dqb, dy, dz, dkg, dkr, dattn, ddecay.sum(0)[..., :3]


def pass_cotangents_xla(a, b, qb, do, dn, n, s_start, m_start, ls, lm, *, num_heads):
    """`pass_cotangents` in batched XLA products (same arguments and results)."""
    BH, NC, C, V = n.shape
    acc = common.acc_dtype(n.dtype)
    do, qb = to_rows(do, C), to_rows(qb, C)
    mm = functools.partial(jnp.einsum, precision="highest", preferred_element_type=acc)
    g_s = mm("bncv,bnkv->bnck", do, s_start)
    g_m = mm("bncv,bnkv->bnck", do, m_start)
    qbf = qb.astype(acc)
    da = jnp.sum(qbf * g_s, axis=-1)
    db = -jnp.sum(qbf * g_m, axis=-1)
    dqb = (a[..., None] * g_s - b[..., None] * g_m).astype(n.dtype)
    dattn = mm("bniv,bnjv->bnij", do, n).astype(n.dtype)
    dy = -mm("bncv,bnkv->bnck", dn, s_start).astype(n.dtype)
    dz = mm("bncv,bnkv->bnck", dn, m_start).astype(n.dtype)
    dkg = mm("bncv,bnkv->bnck", n, ls).astype(n.dtype)
    dkr = -mm("bncv,bnkv->bnck", n, lm).astype(n.dtype)
    ddecay = jnp.stack([mm("bnkv,bnkv->bn", ls, s_start), -mm("bnkv,bnkv->bn", ls, m_start),
                        mm("bnkv,bnkv->bn", lm, m_start)], axis=-1)
    return da, db, dqb, dy, dz, dkg, dkr, dattn, ddecay
