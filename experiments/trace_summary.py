"""Summarise a jax.profiler perfetto trace: device time per kernel and per category, busy vs idle.

Usage: python experiments/trace_summary.py RUN_DIR/profile [--out summary.json] [--top 25]

Reads the newest `perfetto_trace.json.gz` under the directory. Device events are the 'X' events on the
GPU's stream threads ("/device:GPU:N" processes, threads named "Stream ..."); without a GPU (CPU runs,
tests) the XLA threads of the host are used instead. Categories come from kernel names (regexes below):
they are a reading aid, and the top-kernel table is printed so a reader can check them.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

CATEGORIES = [
    ("mdn_pallas", r"_fwd_kernel|_bwd_kernel|_coeff_kernel|_solve_kernel|_step_kernel|_grads_kernel"
                   r"|_gate_vjp_kernel|_local_bwd_kernel|chunk_"
                   r"|anonymous_mosaic_gpu_kernel"),  # the op's Mosaic GPU passes: this project's only Mosaic kernels
    ("collective", r"nccl|all-reduce|all_reduce|all-gather|all_gather|reduce-scatter|reduce_scatter"),
    ("attention", r"cudnn|flash|fmha"),
    ("matmul", r"gemm|cutlass|xmma|sm90|sm80|cublas|nvjet|wgmma|dot|matmul"),
    ("copy", r"copy|transpose|memcpy|memset|dynamic[-_]update|dynamic[-_]slice"),
    ("fusion", r"fusion|loop_|input_|reduce|convert|broadcast|select|scatter|gather|triton"),
]


def find_trace(path: str) -> str:
    if os.path.isfile(path):
        return path
    found = sorted(glob.glob(os.path.join(path, "**", "perfetto_trace.json.gz"), recursive=True), key=os.path.getmtime)
    if not found:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {path}")
    return found[-1]


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE):
            return cat
    return "other"


def device_events(events: list[dict]) -> tuple[list[dict], str]:
    """The kernel events of the trace and which lines they came from."""
    procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    gpu = [e for e in spans if procs.get(e["pid"], "").startswith("/device:GPU")
           and "stream" in threads.get((e["pid"], e.get("tid")), "").lower()]
    if gpu:
        return gpu, "GPU streams"
    host = [e for e in spans if "xla" in threads.get((e["pid"], e.get("tid")), "").lower()]
    return host, "host XLA threads (no GPU events in the trace)"


def summarize(path: str, top: int = 25) -> dict:
    """{source, busy_us, span_us, categories {name: us}, top [(name, us, count)]} of one trace."""
    trace = find_trace(path)
    with gzip.open(trace) as f:
        data = json.load(f)
    events, source = device_events(data["traceEvents"] if isinstance(data, dict) else data)
    per_name, counts = collections.Counter(), collections.Counter()
    for e in events:
        per_name[e["name"]] += float(e["dur"])
        counts[e["name"]] += 1
    cats = collections.Counter()
    for name, us in per_name.items():
        cats[category(name)] += us
    busy = sum(per_name.values())
    span = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) if events else 0.0
    return {"trace": trace, "source": source, "busy_us": busy, "span_us": span,
            "categories": dict(cats.most_common()),
            "top": [(n, us, counts[n]) for n, us in per_name.most_common(top)]}


def markdown(s: dict) -> str:
    busy = max(s["busy_us"], 1e-9)
    lines = [f"Device time from {s['source']}: busy {s['busy_us'] / 1e3:.1f} ms over a span of "
             f"{s['span_us'] / 1e3:.1f} ms (streams overlap, so busy can exceed the span).", "",
             "| category | ms | share |", "| --- | --- | --- |"]
    lines += [f"| {c} | {us / 1e3:.2f} | {us / busy:.1%} |" for c, us in s["categories"].items()]
    lines += ["", "| kernel | ms | calls | category |", "| --- | --- | --- | --- |"]
    lines += [f"| `{n[:90]}` | {us / 1e3:.2f} | {k} | {category(n)} |" for n, us, k in s["top"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", help="a profile directory (searched recursively) or a perfetto_trace.json.gz")
    ap.add_argument("--out", default=None, help="write the summary JSON here (and .md beside it)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    s = summarize(a.path, a.top)
    md = markdown(s)
    print(md)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(s, f, indent=1)
        with open(os.path.splitext(a.out)[0] + ".md", "w") as f:
            f.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
