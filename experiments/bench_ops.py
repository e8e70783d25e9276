"""Benchmark of the momentum delta rule op: forward and forward+backward per implementation.

Usage: python experiments/bench_ops.py [--cases S400] [--impls pallas,xla] [--out experiments/results]
       python experiments/bench_ops.py --cases S400 --impls pallas --variants "MDN_GATE_VJP_KERNEL=0;MDN_BLOCK_V=16"
(--variants: ';'-separated sets of space-separated env assignments of `mdn_jax.pallas.tuning`, each timed in
this process after the default configuration; the relative error column is against the first row of a case.)
Timing: jit, warm-up, block_until_ready, median of repeated runs. Memory: XLA's compiled memory
analysis of each jitted function (arguments + outputs + temporaries). Inputs follow ANCHORS.md (S400).
Writes JSON and a markdown table with device, date and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from mdn_jax.ops import momentum_delta_rule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.common import timeit_queued  # noqa: E402
from experiments.shapes import SHAPES  # noqa: E402


def anchor_inputs(B, T, H, K, V, dtype=jnp.bfloat16, seed=0):
    """Inputs as in ANCHORS.md: bf16 q/k/v, fp32 gates, dO ~ N(0, 1)."""
    keys = jax.random.split(jax.random.PRNGKey(seed), 8)
    n = jax.random.normal
    q, k = n(keys[0], (B, T, H, K), dtype), n(keys[1], (B, T, H, K), dtype)
    v = n(keys[2], (B, T, H, V), dtype)
    la = jax.nn.log_sigmoid(n(keys[3], (B, T, H))) / 8
    lm = jnp.maximum(jax.nn.log_sigmoid(n(keys[4], (B, T, H))) / 8, -2.0)
    beta = jax.nn.sigmoid(jax.random.uniform(keys[5], (B, T, H)))
    eta = jax.random.uniform(keys[6], (B, T, H), minval=0.0, maxval=2.0)
    do = n(keys[7], (B, T, H, V), dtype)
    return (q, k, v, la, lm, beta, eta), do


def op_flops(B, T, H, K, V, C=64):
    """Counted matmul FLOPs of the chunkwise forward (2 per multiply-add)."""
    per_chunk = (2 * C * C * K  # P Kt^T, Qb Kt^T
                 + C * C * C  # Gamma
                 + C * C * (V + 2 * K)  # triangular solve for U, Y, Z
                 + 4 * C * K * V  # Y S, Z M, Kg^T N, Kr^T N
                 + 2 * C * K * V + C * C * V)  # Qb S, Qb M, attn N
    return 2 * per_chunk * B * H * (T // C)


def timeit(fn, args, reps):
    """Median ms of `reps` calls, each waited for (block_until_ready): includes the host's dispatch latency."""
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def memory_gib(fn, args):
    m = fn.lower(*args).compile().memory_analysis()
    if m is None:
        return None
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return total / 2**30


@contextlib.contextmanager
def env_vars(assignments: str):
    """Sets space-separated NAME=VALUE assignments in os.environ for the duration of the block."""
    pairs = [a.split("=", 1) for a in assignments.split()]
    saved = {k: os.environ.get(k) for k, _ in pairs}
    os.environ.update(dict(pairs))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def bench_case(name, shape, impls, reps, backward=True, variants=("",), chunk_sizes=(64,)):
    """One row per (chunk size, variant, impl): times, memory, FLOP rate, relative error against the case's first
    output (a chunk size other than 64 is labelled `[C=..]`)."""
    args, do = anchor_inputs(**shape)
    rows = []
    ref = None
    for C, variant, impl in ((c, v, i) for c in chunk_sizes for v in variants for i in impls):
        with env_vars(variant):  # tuning variables are read while tracing, so trace inside
            op = functools.partial(momentum_delta_rule, implementation=impl, chunk_size=C)
            fwd = jax.jit(lambda *a, op=op: op(*a)[0])

            def loss(*a, op=op):
                return jnp.sum(op(*a)[0].astype(jnp.float32) * do.astype(jnp.float32))

            fwd_bwd = jax.jit(jax.grad(loss, argnums=tuple(range(7))))
            label = (f"[C={C}]" if C != 64 else "") + (f"[{variant}]" if variant else "")
            row = dict(case=name, impl=impl + label, **shape)
            try:
                o = fwd(*args)
                if ref is None:
                    ref = o.astype(jnp.float32)
                err = float(jnp.linalg.norm(o.astype(jnp.float32) - ref) / jnp.linalg.norm(ref))
                row.update(fwd_ms=timeit(fwd, args, reps), fwd_ms_queued=timeit_queued(fwd, args, reps),
                           fwd_mem_gib=memory_gib(fwd, args), rel_err_vs_first=err)
                row["fwd_tflops"] = op_flops(**shape, C=C) / (row["fwd_ms"] * 1e-3) / 1e12
                if backward:
                    row.update(fwd_bwd_ms=timeit(fwd_bwd, args, reps),
                               fwd_bwd_ms_queued=timeit_queued(fwd_bwd, args, reps),
                               fwd_bwd_mem_gib=memory_gib(fwd_bwd, args))
            except Exception as e:  # noqa: BLE001 - a failing variant is reported, the others still run
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def bench_decode(batches, H=6, K=128, V=256, reps=50, impls=("jnp", "pallas")):
    """Latency of one recurrent decode step (jit, state donated) at the S400 head shape, per implementation."""
    from mdn_jax.ops import momentum_delta_rule_step

    rows = []
    for B, impl in ((B, impl) for B in batches for impl in impls):
        keys = jax.random.split(jax.random.PRNGKey(B), 6)
        n = jax.random.normal
        q, k, v = n(keys[0], (B, H, K), jnp.bfloat16), n(keys[1], (B, H, K), jnp.bfloat16), n(keys[2], (B, H, V),
                                                                                              jnp.bfloat16)
        la = jax.nn.log_sigmoid(n(keys[3], (B, H))) / 8
        lm = jnp.maximum(jax.nn.log_sigmoid(n(keys[4], (B, H))) / 8, -2.0)
        beta, eta = jax.nn.sigmoid(n(keys[5], (B, H))), jnp.ones((B, H))
        state = (n(keys[0], (B, H, K, V)), n(keys[1], (B, H, K, V)))
        step = jax.jit(functools.partial(momentum_delta_rule_step, implementation=impl), donate_argnums=(7,))
        args = (q, k, v, la, lm, beta, eta)
        _, state = step(*args, state)
        jax.block_until_ready(state)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            _, state = step(*args, state)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - t0)
        row = dict(case="decode_step", impl=impl, B=B, H=H, K=K, V=V, step_us=statistics.median(times) * 1e6)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def markdown(rows, meta):
    """Times as 'queued / blocked' ms: queued = device time per call (as ANCHORS.md measures), blocked = each
    call waited for (adds the host's dispatch latency)."""
    lines = [f"Device: {meta['device']}; date {meta['date']}; commit {meta['commit']}; jax {meta['jax']}", "",
             "Times in ms as queued / blocked: queued = mean per call of calls queued back to back (device time, as",
             "ANCHORS.md's event timing measures), blocked = median of calls each waited for (adds host latency).", "",
             "| case | impl | fwd ms | fwd+bwd ms | fwd mem GiB | fwd+bwd mem GiB | fwd TFLOP/s | rel err |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    ms = lambda r, k: f"{r[k + '_queued']:.3f} / {r[k]:.3f}" if k + "_queued" in r else f"{r[k]:.3f}"  # noqa: E731
    for r in rows:
        if r["case"] == "decode_step":
            lines.append(f"| decode step B={r['B']} | {r['impl']} | {r['step_us']:.1f} us | | | | | |")
            continue
        if "error" in r:
            lines.append(f"| {r['case']} | {r['impl']} | error: {r['error'][:80]} | | | | | |")
            continue
        bwd = (ms(r, "fwd_bwd_ms"), f"{r['fwd_bwd_mem_gib']:.2f}") if "fwd_bwd_ms" in r else ("", "")
        lines.append(f"| {r['case']} | {r['impl']} | {ms(r, 'fwd_ms')} | {bwd[0]} | {r['fwd_mem_gib']:.2f} | "
                     f"{bwd[1]} | {r['fwd_tflops']:.1f} | {r['rel_err_vs_first']:.1e} |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cases", default="S400,S400-T2048,S400-T8192,S400-T32768,1.3B")
    ap.add_argument("--impls", default="pallas,xla")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default="experiments/results")
    ap.add_argument("--tag", default="bench_ops")
    ap.add_argument("--decode", default="1,16,256", help="decode-step batch sizes ('' to skip)")
    ap.add_argument("--no-backward", action="store_true", help="time the forward only")
    ap.add_argument("--variants", default="", help="';'-separated env assignments, timed after the default")
    ap.add_argument("--chunk-sizes", default="64", help="comma-separated chunk sizes of the op (16, 32, 64)")
    a = ap.parse_args()
    commit = os.environ.get("MDN_COMMIT") or subprocess.run(  # the GPU machine's copy may carry a stale .git
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = dict(device=str(jax.devices()[0].device_kind), date=datetime.date.today().isoformat(),
                commit=commit or "unknown", jax=jax.__version__)
    rows = []
    for case in a.cases.split(","):
        variants = [""] + [v.strip() for v in a.variants.split(";") if v.strip()]
        rows += bench_case(case, SHAPES[case], a.impls.split(","), a.reps, not a.no_backward, variants,
                           tuple(int(c) for c in a.chunk_sizes.split(",")))
    if a.decode:
        rows += bench_decode([int(b) for b in a.decode.split(",")])
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"{a.tag}.json"), "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    table = markdown(rows, meta)
    with open(os.path.join(a.out, f"{a.tag}.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
