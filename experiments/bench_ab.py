"""Interleaved timing of tuning variants of the op at one shape, for differences of a few percent.

Usage: python experiments/bench_ab.py --case S400 --variants "MDN_PREP_FWD_KERNEL=0;MDN_LOCAL_WARPS=8" \
           [--backward] [--rounds 15] [--reps 20] [--out DIR]
(--variants: ';'-separated sets of space-separated env assignments of `mdn_jax.pallas.tuning`; the default
configuration is always the first.) Each variant is compiled once; then every round times each variant once (mean
ms per call of `reps` calls queued back to back), the order rotated from round to round, so drifts of the GPU's
clocks hit every variant alike. bench_ops.py times its variants one after the other, and the S400 forward moved by
3% between variants that do not change it (H200, 77b21d5): too coarse for the few-percent levers left. Prints and
writes (DIR/ab_<case>_<fwd|fwd_bwd>.json) per variant the median ms over rounds and the median of its per-round
difference to the default.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.bench_ops import anchor_inputs, env_vars  # noqa: E402
from experiments.shapes import SHAPES  # noqa: E402
from mdn_jax.ops import momentum_delta_rule  # noqa: E402


def compiled(variant: str, args, do, backward: bool):
    """The op (or its gradient) jitted and compiled under the variant's env (tuning is read while tracing)."""
    def fwd(*a):
        return momentum_delta_rule(*a, implementation="pallas")[0]

    def loss(*a):
        return jnp.sum(fwd(*a).astype(jnp.float32) * do.astype(jnp.float32))

    fn = jax.grad(loss, argnums=tuple(range(7))) if backward else fwd
    with env_vars(variant):
        return jax.jit(fn).lower(*args).compile()


def ms_per_call(fn, args, reps: int) -> float:
    t0 = time.perf_counter()
    outs = [fn(*args) for _ in range(reps)]
    jax.block_until_ready(outs)
    return (time.perf_counter() - t0) / reps * 1e3


def interleaved(fns, args, rounds: int, reps: int) -> list[list[float]]:
    """times[v][r]: ms per call of variant v in round r; round r starts at variant r mod len(fns)."""
    for fn in fns:
        jax.block_until_ready(fn(*args))
    times = [[0.0] * rounds for _ in fns]
    for r in range(rounds):
        for i in range(len(fns)):
            v = (r + i) % len(fns)
            times[v][r] = ms_per_call(fns[v], args, reps)
    return times


def summarize(variants, times) -> list[dict]:
    base = times[0]
    return [dict(variant=v or "default", median_ms=statistics.median(t), min_ms=min(t),
                 median_diff_ms=statistics.median(x - b for x, b in zip(t, base, strict=True)),
                 rounds=len(t)) for v, t in zip(variants, times, strict=True)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="S400", choices=sorted(SHAPES))
    ap.add_argument("--variants", required=True, help="';'-separated env assignments, timed beside the default")
    ap.add_argument("--backward", action="store_true", help="time forward+backward instead of the forward")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="/tmp/bench_ab")
    a = ap.parse_args(argv)
    if a.rounds < 1 or a.reps < 1:
        ap.error("--rounds and --reps must be >= 1")
    variants = [""] + [v.strip() for v in a.variants.split(";") if v.strip()]
    args, do = anchor_inputs(**SHAPES[a.case])
    fns = [compiled(v, args, do, a.backward) for v in variants]
    rows = summarize(variants, interleaved(fns, args, a.rounds, a.reps))
    mode = "fwd_bwd" if a.backward else "fwd"
    meta = dict(case=a.case, mode=mode, device=jax.devices()[0].device_kind, commit=os.environ.get("MDN_COMMIT", ""),
                rounds=a.rounds, reps=a.reps)
    for row in rows:
        print(json.dumps(dict(case=a.case, mode=mode, **row)), flush=True)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"ab_{a.case}_{mode}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
