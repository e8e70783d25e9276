"""Pallas kernels (Triton lowering) for the sequential pass over chunks with the output fused in.

The pass is the only sequential part of the chunkwise algorithm (spec 3.4-3.5). Per chunk c, with
the chunk-local operands of `mdn_jax.ops.chunked.ChunkTensors`:

    N_c     = U_c - Y_c S_c + Z_c M_c
    O_c     = diag(a) Qb S_c - diag(b) Qb M_c + (Gamma o Qb Kt^T) N_c
    S_{c+1} = a_L S_c - b_L M_c + Kg_c^T N_c            (Kg = Kt diag(Gamma_L))
    M_{c+1} = m_L M_c - Kr_c^T N_c                      (Kr = Kt diag(rho))

Without differentiation `chunk_pass_infer` runs the same recurrence from T, P, V and Kt (U - Y S + Z M =
T (V - diag(d) P S + diag(e) P M), Kg^T N = Kt^T diag(Gamma_L) N, Kr^T N = Kt^T diag(rho) N): one more
[C, C] product per chunk, three [C, K] tiles read instead of five (P, Qb, Kt for Y, Z, Qb, Kg, Kr) and no WY
kernel before it.

One program owns one (row, value head, block of V columns): S and M ([K, BV], float32) stay in
registers for the whole sequence, O is written chunk by chunk. The reverse kernel runs the adjoint
recurrence of spec 4.2 (B1)-(B2) with the output's contributions formed in registers from dO:

    dN_c = (Gamma o Qb Kt^T)^T dO_c + Kg_c lS - Kr_c lM      (lS, lM: cotangents of S_{c+1}, M_{c+1})
    lS  <- a_L lS + Qb^T diag(a) dO_c - Y_c^T dN_c
    lM  <- -b_L lS + m_L lM - Qb^T diag(b) dO_c + Z_c^T dN_c

Residual policy: the differentiated forward saves the chunk-start states S_c, M_c and N_c (operand
dtype: bf16 in training); the backward is one reverse sweep, then every parameter cotangent is a
product of saved tensors, parallel over chunks (`mdn_jax.pallas.chunk_grads`). Without differentiation
nothing but O and the final states is written.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from mdn_jax.pallas import chunk_grads, common, tuning


def _load_start(idx, table_ref, head, vs, acc, carry):
    return lax.cond(idx >= 0, lambda: table_ref[idx, head, :, vs].astype(acc), lambda: carry)


def _store_final(f, fs_ref, fm_ref, head, vs, S, M, num_states):
    @pl.when(f < num_states)
    def _():
        fs_ref[f, head, :, vs] = S.astype(fs_ref.dtype)
        fm_ref[f, head, :, vs] = M.astype(fm_ref.dtype)


def _fwd_kernel(init_ref, final_ref, decay_ref, a_ref, b_ref, qb_ref, attn_ref, u_ref, y_ref, z_ref, kg_ref,
                kr_ref, s0_ref, m0_ref, o_ref, fs_ref, fm_ref, *res_refs, num_chunks, num_heads, block_v,
                num_states, precision):
    bh = pl.program_id(0)
    vs = pl.ds(pl.program_id(1) * block_v, block_v)
    row, head = bh // num_heads, bh % num_heads
    chunk, K = y_ref.shape[-2:]
    op_dtype, acc = y_ref.dtype, fs_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)

    def body(c, carry):
        idx = init_ref[row, c]
        S = _load_start(idx, s0_ref, head, vs, acc, carry[0])
        M = _load_start(idx, m0_ref, head, vs, acc, carry[1])
        Sd, Md = S.astype(op_dtype), M.astype(op_dtype)
        n = u_ref[bh, c, :, vs].astype(acc) - dot(y_ref[bh, c], Sd) + dot(z_ref[bh, c], Md)
        nd = n.astype(op_dtype)
        qb = qb_ref[bh, c]
        o = (a_ref[bh, c][:, None] * dot(qb, Sd) - b_ref[bh, c][:, None] * dot(qb, Md)
             + dot(attn_ref[bh, c], nd))
        o_ref[row, pl.ds(c * chunk, chunk), head, vs] = o.astype(o_ref.dtype)
        if res_refs:
            s_ref, m_ref, n_ref = res_refs
            s_ref[bh, c, :, vs] = Sd.astype(s_ref.dtype)
            m_ref[bh, c, :, vs] = Md.astype(m_ref.dtype)
            n_ref[bh, c, :, vs] = nd.astype(n_ref.dtype)
        a_l, b_l, m_l = decay_ref[bh, c, 0], decay_ref[bh, c, 1], decay_ref[bh, c, 2]
        S_next = a_l * S - b_l * M + dot(kg_ref[bh, c], nd, trans_a=True)
        M_next = m_l * M - dot(kr_ref[bh, c], nd, trans_a=True)
        _store_final(final_ref[row, c], fs_ref, fm_ref, head, vs, S_next, M_next, num_states)
        return S_next, M_next

    zeros = jnp.zeros((K, block_v), acc)
    lax.fori_loop(0, num_chunks, body, (zeros, zeros))


def _infer_kernel(init_ref, final_ref, decay_ref, vec_ref, t_ref, attn_ref, qb_ref, kt_ref, p_ref, v_ref, s0_ref,
                  m0_ref, o_ref, fs_ref, fm_ref, *, num_chunks, num_heads, block_v, num_states, precision):
    """The forward without differentiation: the WY products from T (N = T (V - diag(d) P S + diag(e) P M)) and
    Kg^T N, Kr^T N as Kt^T (diag(Gamma_L) N), Kt^T (diag(rho) N); every [C, K] operand read once per step."""
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
        a, b, d, e, g_last, rho = (vec_ref[bh, c, i][:, None] for i in range(6))
        p = p_ref[row, ts, head, :]
        r = v_ref[row, ts, head, vs].astype(acc) - d * dot(p, Sd) + e * dot(p, Md)
        n = dot(t_ref[bh, c], r.astype(op_dtype))
        qb = qb_ref[row, ts, head, :]
        o = a * dot(qb, Sd) - b * dot(qb, Md) + dot(attn_ref[bh, c], n.astype(op_dtype))
        o_ref[row, ts, head, vs] = o.astype(o_ref.dtype)
        kt = kt_ref[row, ts, head, :]
        a_l, b_l, m_l = decay_ref[bh, c, 0], decay_ref[bh, c, 1], decay_ref[bh, c, 2]
        S_next = a_l * S - b_l * M + dot(kt, (g_last * n).astype(op_dtype), trans_a=True)
        M_next = m_l * M - dot(kt, (rho * n).astype(op_dtype), trans_a=True)
        _store_final(final_ref[row, c], fs_ref, fm_ref, head, vs, S_next, M_next, num_states)
        return S_next, M_next

    zeros = jnp.zeros((K, block_v), acc)
    lax.fori_loop(0, num_chunks, body, (zeros, zeros))


def _bwd_kernel(init_ref, final_ref, decay_ref, a_ref, b_ref, qb_ref, attn_ref, y_ref, z_ref, kg_ref, kr_ref,
                do_ref, gfs_ref, gfm_ref, ls_ref, lm_ref, dn_ref, ds0_ref, dm0_ref,
                *, num_chunks, num_heads, block_v, num_states, precision):
    bh = pl.program_id(0)
    vs = pl.ds(pl.program_id(1) * block_v, block_v)
    row, head = bh // num_heads, bh % num_heads
    chunk, K = y_ref.shape[-2:]
    op_dtype, acc = y_ref.dtype, ds0_ref.dtype
    dot = functools.partial(common.dot, precision=precision, acc=acc)

    def body(i, carry):
        c = num_chunks - 1 - i
        f = final_ref[row, c]
        lS = lax.cond(f < num_states, lambda: carry[0] + gfs_ref[f, head, :, vs].astype(acc), lambda: carry[0])
        lM = lax.cond(f < num_states, lambda: carry[1] + gfm_ref[f, head, :, vs].astype(acc), lambda: carry[1])
        lSd, lMd = lS.astype(op_dtype), lM.astype(op_dtype)
        ls_ref[bh, c, :, vs] = lSd.astype(ls_ref.dtype)
        lm_ref[bh, c, :, vs] = lMd.astype(lm_ref.dtype)
        do = do_ref[row, pl.ds(c * chunk, chunk), head, vs].astype(acc)
        qb = qb_ref[bh, c]
        dn = dot(attn_ref[bh, c], do.astype(op_dtype), trans_a=True) + dot(kg_ref[bh, c], lSd) - dot(kr_ref[bh, c],
                                                                                                      lMd)
        dn_ref[bh, c, :, vs] = dn.astype(dn_ref.dtype)
        dnd = dn.astype(op_dtype)
        a_l, b_l, m_l = decay_ref[bh, c, 0], decay_ref[bh, c, 1], decay_ref[bh, c, 2]
        do_a = (a_ref[bh, c][:, None] * do).astype(op_dtype)
        do_b = (b_ref[bh, c][:, None] * do).astype(op_dtype)
        lS_prev = a_l * lS + dot(qb, do_a, trans_a=True) - dot(y_ref[bh, c], dnd, trans_a=True)
        lM_prev = -b_l * lS + m_l * lM - dot(qb, do_b, trans_a=True) + dot(z_ref[bh, c], dnd, trans_a=True)
        idx = init_ref[row, c]

        @pl.when(idx >= 0)
        def _():
            ds0_ref[idx, head, :, vs] = lS_prev.astype(ds0_ref.dtype)
            dm0_ref[idx, head, :, vs] = lM_prev.astype(dm0_ref.dtype)

        keep = (idx < 0).astype(acc)
        return lS_prev * keep, lM_prev * keep

    zeros = jnp.zeros((K, block_v), acc)
    lax.fori_loop(0, num_chunks, body, (zeros, zeros))


def _forward(save, a, b, qb, attn, u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final, block_v, interpret,
             num_warps):
    BH, NC, C, V = u.shape
    K = y.shape[-1]
    n_states, HV = s0.shape[:2]
    acc = s0.dtype  # float32 (float64 only in interpret mode)
    res_dtype = common.storage_dtype(y.dtype, acc)
    kernel = functools.partial(_fwd_kernel, num_chunks=NC, num_heads=HV, block_v=block_v, num_states=n_states,
                               precision=common.dot_precision(y.dtype, interpret))
    B = chunk_init.shape[0]
    out_shape = [jax.ShapeDtypeStruct((B, NC * C, HV, V), res_dtype), jax.ShapeDtypeStruct(s0.shape, acc),
                 jax.ShapeDtypeStruct(m0.shape, acc)]
    if save:
        out_shape += [jax.ShapeDtypeStruct((BH, NC, K, V), res_dtype), jax.ShapeDtypeStruct((BH, NC, K, V), res_dtype),
                      jax.ShapeDtypeStruct((BH, NC, C, V), res_dtype)]
    return common.call(kernel, (BH, V // block_v), tuple(out_shape), interpret, num_warps,
                       chunk_init, chunk_final, decay, a, b, qb, attn, u, y, z, kg, kr, s0, m0,
                       stages=tuning.num_stages("pass_save" if save else "pass", K, y.dtype, block_v))


def chunk_pass_infer(t, attn, vecs, decay, qb, kt, p, v, s0, m0, chunk_init, chunk_final, *, block_v, interpret,
                     num_warps):
    """The sequential pass of the forward without differentiation (not differentiable: `mdn_jax.pallas.core`
    differentiates through `chunk_pass`), from `chunk_local.chunk_local_infer`'s outputs.

    t, attn: [BH, NC, C, C]; vecs: [BH, NC, 6, C] float32 (a, b, d, e, Gamma_L, rho); decay: [BH, NC, >=3];
    qb, kt, p: [B, NC * C, HV, K] and v: [B, NC * C, HV, V] (operand dtype, the op's layout); s0, m0, chunk_init,
    chunk_final as `chunk_pass`. Returns O [B, NC * C, HV, V] and final (S, M) [N, HV, K, V].
    """
    BH, NC, C = t.shape[:3]
    K, V = kt.shape[-1], v.shape[-1]
    n_states, HV = s0.shape[:2]
    acc = s0.dtype
    kernel = functools.partial(_infer_kernel, num_chunks=NC, num_heads=HV, block_v=block_v, num_states=n_states,
                               precision=common.dot_precision(kt.dtype, interpret))
    out_shape = (jax.ShapeDtypeStruct(v.shape, common.storage_dtype(kt.dtype, acc)),
                 jax.ShapeDtypeStruct(s0.shape, acc), jax.ShapeDtypeStruct(m0.shape, acc))
    return common.call(kernel, (BH, V // block_v), out_shape, interpret, num_warps,
                       chunk_init, chunk_final, decay, vecs, t, attn, qb, kt, p, v, s0, m0,
                       stages=tuning.num_stages("pass", K, kt.dtype, block_v))


@functools.partial(jax.custom_vjp, nondiff_argnums=(14, 15, 16))
def chunk_pass(a, b, qb, attn, u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final, block_v, interpret,
               num_warps):
    """Sequential pass with fused output.

    block_v: V columns per program of (the forward without differentiation, the forward under differentiation,
      the reverse sweep).

    a, b: [BH, NC, C] float32; qb, y, z, kg, kr: [BH, NC, C, K]; attn: [BH, NC, C, C]; u: [BH, NC, C, V]
    (operand dtype); decay: [BH, NC, >=3] (a_L, b_L, m_L, ...); s0, m0: [N, HV, K, V]; chunk_init, chunk_final:
    [B, NC] int32 (see `mdn_jax.ops.layout`). Returns O [B, NC * C, HV, V] (the op's layout) and final
    (S, M) [N, HV, K, V].
    """
    o, fs, fm = _forward(False, a, b, qb, attn, u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final,
                         block_v[0], interpret, num_warps)
    return o, fs, fm


def _chunk_pass_fwd(a, b, qb, attn, u, y, z, kg, kr, decay, s0, m0, chunk_init, chunk_final, block_v, interpret,
                    num_warps):
    o, fs, fm, s_start, m_start, n = _forward(True, a, b, qb, attn, u, y, z, kg, kr, decay, s0, m0, chunk_init,
                                              chunk_final, block_v[1], interpret, num_warps)
    res = (a, b, qb, attn, y, z, kg, kr, decay, s_start, m_start, n, chunk_init, chunk_final, s0, m0)
    return (o, fs, fm), res


def _chunk_pass_bwd(block_v, interpret, num_warps, res, cot):
    a, b, qb, attn, y, z, kg, kr, decay, s_start, m_start, n, chunk_init, chunk_final, s0, m0 = res
    do, gfs, gfm = cot
    BH, NC, C, V = n.shape
    K = y.shape[-1]
    n_states, HV = s0.shape[:2]
    acc = s0.dtype
    lam_dtype = common.storage_dtype(y.dtype, acc)
    kernel = functools.partial(_bwd_kernel, num_chunks=NC, num_heads=HV, block_v=block_v[2], num_states=n_states,
                               precision=common.dot_precision(y.dtype, interpret))
    out_shape = (jax.ShapeDtypeStruct((BH, NC, K, V), lam_dtype), jax.ShapeDtypeStruct((BH, NC, K, V), lam_dtype),
                 jax.ShapeDtypeStruct((BH, NC, C, V), lam_dtype), jax.ShapeDtypeStruct(s0.shape, acc),
                 jax.ShapeDtypeStruct(m0.shape, acc))
    do_op = do.astype(y.dtype)  # [B, NC * C, HV, V]
    ls, lm, dn, ds0, dm0 = common.call(kernel, (BH, V // block_v[2]), out_shape, interpret, num_warps,
                                       chunk_init, chunk_final, decay, a, b, qb, attn, y, z, kg, kr, do_op, gfs, gfm,
                                       stages=tuning.num_stages("pass_bwd", K, y.dtype))
    # Parameter cotangents, parallel over chunks (ls, lm: cotangents of the chunk-END states).
    cfg = tuning.grads_config()
    args = (a, b, qb, do_op, dn, n, s_start, m_start, ls, lm)
    if cfg.use_kernel:
        da, db, dqb, dy, dz, dkg, dkr, dattn, ddecay = chunk_grads.pass_cotangents(
            *args, num_heads=HV, interpret=interpret, block_k=cfg.block_k, block_v=cfg.block_v,
            num_warps=cfg.num_warps)
    else:
        da, db, dqb, dy, dz, dkg, dkr, dattn, ddecay = chunk_grads.pass_cotangents_xla(*args, num_heads=HV)
    ddecay = jnp.pad(ddecay, [(0, 0), (0, 0), (0, decay.shape[-1] - 3)]).astype(decay.dtype)
    # A start state taken from the table was written into ds0/dm0 by the kernel; rows never used stay zero.
    used = jnp.zeros((n_states,), bool).at[chunk_init.reshape(-1)].set(True, mode="drop")
    ds0 = jnp.where(used[:, None, None, None], ds0, 0.0).astype(s0.dtype)
    dm0 = jnp.where(used[:, None, None, None], dm0, 0.0).astype(m0.dtype)
    cast = lambda x, like: x.astype(like.dtype)  # noqa: E731
    return (cast(da, a), cast(db, b), cast(dqb, qb), cast(dattn, attn), dn, cast(dy, y), cast(dz, z), cast(dkg, kg),
            cast(dkr, kr), ddecay, ds0, dm0, None, None)


chunk_pass.defvjp(_chunk_pass_fwd, _chunk_pass_bwd)
