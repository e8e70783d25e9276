"""The Mosaic GPU sequential passes (`mdn_jax.pallas.mosaic_pass`) beside the Triton-lowered kernels of
`mdn_jax.pallas.chunk_pass` on the same inputs: CPU interpret-mode checks and GPU timings per configuration
(block_v : stages : consumers) of the three modes (forward pass, forward pass writing the residuals, reverse
sweep). On the GPU machine, configurations over shared memory report their error and are skipped.

    python experiments/mosaic_pass.py --check                    # CPU, interpret mode: equal to the Triton kernels
    python experiments/mosaic_pass.py --cases S400 --configs 64:2:1,64:1:2 --out DIR   # GPU: each mode timed
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.common import emit_rows, probe, rel_errs, timeit_queued  # noqa: E402
from experiments.shapes import SHAPES  # noqa: E402
from mdn_jax.ops.layout import dense_layout  # noqa: E402
from mdn_jax.pallas import chunk_pass, common, tuning  # noqa: E402
from mdn_jax.pallas.chunk_local import chunk_local  # noqa: E402
from mdn_jax.pallas.chunk_pass import pass_forward  # noqa: E402
from mdn_jax.pallas.mosaic_pass import pass_forward_mosaic, sweep_mosaic  # noqa: E402
from mdn_jax.pallas.tuning import block_config  # noqa: E402


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


def check(B=1, T=128, H=2, K=64, V=128, block_v=64, stages=2, consumers=1, save=False, dtype=jnp.float32):
    """Interpret mode on the CPU: relative errors of (O, S_T, M_T[, S_c, M_c, N_c]) against the Triton pass (also
    interpreted)."""
    args = _inputs(B, T, H, K, V, dtype=dtype, interpret=True)
    ours = pass_forward_mosaic(*args, block_v=block_v, stages=stages, consumers=consumers, save=save,
                               interpret=True)
    ref = _triton_pass(*args, block_v=block_v, interpret=True, save=save)
    return rel_errs(_flat(ours), _flat(ref))


def check_sweep(B=1, T=128, H=2, K=64, V=128, block_v=64, stages=2, consumers=1, dtype=jnp.float32):
    """Interpret mode on the CPU: relative errors of (lS, lM, dN, dS0, dM0) of the Mosaic reverse sweep against the
    Triton sweep kernel (also interpreted)."""
    local, qb, kt, p, *_ = _inputs(B, T, H, K, V, dtype=dtype, interpret=True)
    cot = _cotangents(B, T, H, K, V, dtype=dtype)
    ours = sweep_mosaic(local, qb, kt, p, *cot, block_v=block_v, stages=stages, consumers=consumers, interpret=True)
    ref = _triton_sweep(local, qb, kt, p, *cot, block_v=block_v, interpret=True)
    return rel_errs(ours, ref)


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
    rows = [dict(base, impl="triton", block_v=triton_block, ms=timeit_queued(triton, args, 20))]
    for block_v, stages, consumers in configs:
        row = dict(base, impl="mosaic", block_v=block_v, stages=stages, consumers=consumers)
        fn = jax.jit(functools.partial(mosaic_fn, block_v=block_v, stages=stages, consumers=consumers, **extra))
        probe(row, fn, args, ref, flatten=_flat)
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
    cases = ((c, m) for c in a.cases.split(",") for m in a.modes.split(","))
    emit_rows((r for case, mode in cases for r in bench(case, configs, mode)), a.out, "mosaic_pass")


if __name__ == "__main__":
    main()
