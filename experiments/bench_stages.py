"""Time each stage of implementation='pallas' alone at one shape (default S400), forward and backward.

Usage: python experiments/bench_stages.py [--case S400]
Stages: the chunk-local stage (coefficients, WY inverse, U/Y/Z with bf16 operands) in XLA and as the Pallas
kernels, the whole pallas core (chunk-local kernels + sequential pass with the fused output), and the VJP of
each (the VJP of the chunk-local stage is XLA's); the pass kernel's share is the difference.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from experiments.bench_ops import SHAPES, anchor_inputs, timeit
from mdn_jax.ops import layout as lay
from mdn_jax.ops.api import l2norm
from mdn_jax.ops.chunked import prepare_chunks
from mdn_jax.ops.core import CoreInputs
from mdn_jax.pallas.chunk_local import chunk_local
from mdn_jax.pallas.core import pallas_core


def core_inputs(B, T, H, K, V):
    (q, k, v, la, lm, beta, eta), do = anchor_inputs(B, T, H, K, V)
    f32 = jnp.float32
    qb = l2norm(q.astype(f32)) * K ** -0.5
    kh = l2norm(k.astype(f32))
    layout = lay.dense_layout(B, T, 64)
    zeros = jnp.zeros((B, H, K, V), f32)
    return CoreInputs(qb, eta[..., None] * kh, jnp.exp(la)[..., None] * kh, v.astype(f32), la, lm, beta, zeros,
                      zeros, layout.chunk_init, layout.chunk_final), do


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", default="S400")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    x, do = core_inputs(**SHAPES[a.case])
    res = {}
    prep = jax.jit(lambda x: prepare_chunks(x, 64, operand_dtype=jnp.bfloat16))
    res["prepare_fwd_ms"] = timeit(prep, (x,), a.reps)
    local = jax.jit(lambda x: chunk_local(x.qb, x.kt, x.p, x.log_alpha, x.log_mu, x.beta, chunk=64,
                                          op_dtype=jnp.bfloat16, interpret=False))
    res["local_kernels_fwd_ms"] = timeit(local, (x,), a.reps)
    core = jax.jit(lambda x: pallas_core(x, 64, operand_dtype=jnp.bfloat16, dense_rows=True))
    res["pallas_core_fwd_ms"] = timeit(core, (x,), a.reps)

    def core_loss(x):
        o, _ = pallas_core(x, 64, operand_dtype=jnp.bfloat16, dense_rows=True)
        return jnp.sum(o * do.astype(jnp.float32).reshape(o.shape))

    res["pallas_core_fwd_bwd_ms"] = timeit(jax.jit(jax.grad(core_loss, allow_int=True)), (x,), a.reps)
    prep_loss = jax.jit(jax.grad(lambda x: sum(jnp.sum(a) for a in prepare_chunks(x, 64, operand_dtype=jnp.bfloat16)),
                                 allow_int=True))
    res["prepare_fwd_bwd_ms"] = timeit(prep_loss, (x,), a.reps)
    res["pass_kernel_fwd_ms_est"] = res["pallas_core_fwd_ms"] - res["local_kernels_fwd_ms"]
    print(json.dumps(dict(case=a.case, **{k: round(v, 3) for k, v in res.items()})), flush=True)


if __name__ == "__main__":
    main()
