"""The pass-cotangent kernel in Mosaic GPU (`mdn_jax.pallas.mosaic_grads`) beside the Triton one
(`chunk_grads.pass_cotangents`) and the XLA products, on the same random saved tensors: CPU interpret-mode checks
and GPU timings per configuration (stages : programs, programs 0 = one per SM).

    python experiments/mosaic_grads.py --check                              # CPU, interpret mode, against XLA
    python experiments/mosaic_grads.py --cases S400,1.3B --configs 3:0,2:0 --out DIR     # GPU: timed
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
from mdn_jax.pallas import chunk_grads, tuning  # noqa: E402
from mdn_jax.pallas.mosaic_grads import pass_cotangents_mosaic  # noqa: E402


def inputs(B, T, H, K, V, seed=0, dtype=jnp.bfloat16):
    """Random (a, b, qb, do, dn, n, S_c, M_c, lS, lM) in `pass_cotangents`' layouts (C = 64), unit-scale."""
    C = 64
    NC = T // C
    keys = iter(jax.random.split(jax.random.PRNGKey(seed), 10))
    n = lambda *shape: jax.random.normal(next(keys), shape).astype(dtype)  # noqa: E731
    a, b = (jax.random.uniform(next(keys), (B * H, NC, C)) for _ in range(2))
    return (a, b, n(B, T, H, K), n(B, T, H, V), n(B * H, NC, C, V), n(B * H, NC, C, V),
            *(n(B * H, NC, K, V) for _ in range(4)))


def check(B=1, T=192, H=2, K=128, V=128, programs=5, stages=2, dtype=jnp.float32):
    """Interpret mode on the CPU: relative errors of the nine results against `pass_cotangents_xla`."""
    args = inputs(B, T, H, K, V, dtype=dtype)
    ours = pass_cotangents_mosaic(*args, num_heads=H, programs=programs, stages=stages, interpret=True)
    ref = chunk_grads.pass_cotangents_xla(*args, num_heads=H)
    return rel_errs(ours, ref)


def bench(case, configs):
    """GPU: the Triton kernel (its tuned blocks), XLA's products and the Mosaic kernel per (stages, programs):
    times and relative differences from XLA's float32-accumulated products."""
    shape = SHAPES[case]
    H = shape["H"]
    args = inputs(**shape)
    cfg = tuning.grads_config()
    base = dict(case=case, **shape)
    xla = jax.jit(functools.partial(chunk_grads.pass_cotangents_xla, num_heads=H))
    ref = xla(*args)
    triton = jax.jit(functools.partial(chunk_grads.pass_cotangents, num_heads=H, interpret=False,
                                       block_k=cfg.block_k, block_v=cfg.block_v, num_warps=cfg.num_warps))
    rows = [dict(base, impl="xla", ms=timeit_queued(xla, args, 20)),
            probe(dict(base, impl="triton"), triton, args, ref)]
    for stages, programs in configs:
        row = dict(base, impl="mosaic", stages=stages, programs=programs)
        fn = jax.jit(functools.partial(pass_cotangents_mosaic, num_heads=H, stages=stages, programs=programs or None))
        probe(row, fn, args, ref)
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="interpret mode on the CPU against XLA's products")
    ap.add_argument("--cases", default="S400")
    ap.add_argument("--configs", default="3:0,2:0", help="comma-separated stages:programs (0: one per SM)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.check:
        print(json.dumps(dict(check="interpret", rel_err=check())))
        return
    configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",")]
    emit_rows((r for case in a.cases.split(",") for r in bench(case, configs)), a.out, "mosaic_grads")


if __name__ == "__main__":
    main()
