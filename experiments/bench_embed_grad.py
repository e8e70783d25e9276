"""Time ways to form the embedding-table gradient of one 400M micro-batch (4 x 4096 tokens, D=1024, vocab 50257).

The 400M training profile on an H200 (results/h200_2026-12-02_405c347_train) spends ~14 ms per micro-batch in
one `input_scatter_fusion`, the float32 scatter-add of the gathered rows' cotangents into the [vocab, D] table.
This script times, side by side on the same ids and cotangents:

- scatter: the VJP of `jnp.take(table, ids).astype(bf16)` (what the model does),
- sorted: the same scatter-add after sorting the ids (`indices_are_sorted=True`),
- split4: the scatter-add into four partial tables (token t into copy t % 4), then their sum,
- onehot: one_hot(ids)^T @ dh as a bf16 matmul with float32 accumulation (no scatter; 1.7 TFLOP),
- scan4: four such scatters summed in the carry of a lax.scan, as the training step's gradient accumulation
  (its time is for four micro-batches; ids rolled per micro-batch, so the result is not the scatter's).

ids are drawn uniform or Zipf-like (a=1.1, as text: a few tokens repeat thousands of times). Run it once per
XLA_FLAGS setting to see what an XLA pass does to the scatter, e.g.
    XLA_FLAGS=--xla_gpu_enable_scatter_determinism_expander=false python experiments/bench_embed_grad.py
Prints one JSON row per (method, ids).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_ms(fn, *args, reps=20):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def methods(vocab):
    def scatter(table, ids, dh):
        _, vjp = jax.vjp(lambda t: jnp.take(t, ids, axis=0).astype(jnp.bfloat16), table)
        return vjp(dh)[0]

    def sorted_(table, ids, dh):
        flat, rows = ids.reshape(-1), dh.reshape(-1, dh.shape[-1])
        order = jnp.argsort(flat)
        return jnp.zeros_like(table).at[flat[order]].add(rows[order].astype(table.dtype), indices_are_sorted=True)

    def onehot(table, ids, dh):
        oh = jax.nn.one_hot(ids.reshape(-1), vocab, dtype=jnp.bfloat16)
        return jax.lax.dot_general(oh, dh.reshape(-1, dh.shape[-1]), (((0,), (0,)), ((), ())),
                                   preferred_element_type=table.dtype)

    def split4(table, ids, dh):  # four partial tables (token t into copy t % 4): a quarter of the repeats each
        flat, rows = ids.reshape(-1), dh.reshape(-1, dh.shape[-1]).astype(table.dtype)
        part = jnp.arange(flat.shape[0]) % 4
        partial = jnp.zeros((4 * vocab, table.shape[1]), table.dtype).at[part * vocab + flat].add(rows)
        return partial.reshape(4, vocab, -1).sum(0)

    def scan4(table, ids, dh):  # as the training step: four micro-batches in a lax.scan, float32 sum in the carry
        def micro(acc, x):
            return acc + scatter(table, *x), None

        xs = (jnp.stack([jnp.roll(ids, i, axis=1) for i in range(4)]), jnp.stack([dh] * 4))
        return jax.lax.scan(micro, jnp.zeros_like(table), xs)[0] / 4

    return {"scatter": scatter, "sorted": sorted_, "split4": split4, "onehot": onehot, "scan4": scan4}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--reps", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    shape = (a.batch, a.seq)
    ids_by = {"uniform": rng.integers(0, a.vocab, shape),
              "zipf": np.minimum(rng.zipf(1.1, shape) - 1, a.vocab - 1)}
    table = jnp.asarray(rng.standard_normal((a.vocab, a.hidden)), jnp.float32)
    dh = jnp.asarray(rng.standard_normal(shape + (a.hidden,)), jnp.bfloat16)
    flags = os.environ.get("XLA_FLAGS", "")
    for ids_name, ids_np in ids_by.items():
        ids = jnp.asarray(ids_np, jnp.int32)
        ref = None
        for name, fn in methods(a.vocab).items():
            f = jax.jit(fn)
            out = f(table, ids, dh)
            ref = out if ref is None else ref
            err = float(jnp.max(jnp.abs(out - ref)) / (jnp.max(jnp.abs(ref)) + 1e-30)) if name != "scan4" else None
            top = int(np.bincount(ids_np.reshape(-1)).max())
            print(json.dumps({"method": name, "ids": ids_name, "max_repeats": top, "ms": _median_ms(f, table, ids, dh,
                              reps=a.reps), "rel_err_vs_scatter": err, "xla_flags": flags}), flush=True)


if __name__ == "__main__":
    main()
