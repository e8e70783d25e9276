"""Device time per kernel of the op at one shape: a jax.profiler trace of a few calls, summarised.

Usage: python experiments/profile_op.py [--case S400] [--impl pallas] [--backward] [--reps 5] [--out DIR]
Prints the device time per kernel (and calls) so each stage's share is visible; writes DIR/profile_op.json
(and the raw trace under DIR/trace).
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp

from experiments.bench_ops import SHAPES, anchor_inputs
from experiments.trace_summary import markdown, summarize
from mdn_jax.ops import momentum_delta_rule


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--case", default="S400", choices=sorted(SHAPES))
    ap.add_argument("--impl", default="pallas")
    ap.add_argument("--backward", action="store_true", help="profile forward+backward instead of the forward")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="/tmp/profile_op")
    a = ap.parse_args(argv)
    args, do = anchor_inputs(**SHAPES[a.case])
    op = lambda *x: momentum_delta_rule(*x, implementation=a.impl)[0]  # noqa: E731
    if a.backward:
        fn = jax.jit(jax.grad(lambda *x: jnp.sum(op(*x).astype(jnp.float32) * do.astype(jnp.float32)),
                              argnums=tuple(range(7))))
    else:
        fn = jax.jit(op)
    jax.block_until_ready(fn(*args))
    trace_dir = os.path.join(a.out, "trace")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(a.reps):
            jax.block_until_ready(fn(*args))
    s = summarize(trace_dir, top=20)
    s.update(case=a.case, impl=a.impl, backward=a.backward, reps=a.reps)
    with open(os.path.join(a.out, "profile_op.json"), "w") as f:
        json.dump(s, f, indent=1)
    print(f"{a.case} {a.impl} {'forward+backward' if a.backward else 'forward'}, {a.reps} calls")
    print(markdown(s))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
