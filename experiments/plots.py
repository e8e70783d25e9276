"""Plots of the experiment results (PNG, matplotlib; `pip install 'mdn-jax[experiments]'`).

    python experiments/plots.py [--results experiments/results] [--runs runs/lm_compare] [--out DIR]

* mqar_<preset>.json       -> mqar_<preset>.png: accuracy vs model width, one panel per (seq_len, kv pairs), at the
                              best lr; with several seeds the mean, and a bar from the lowest to the highest seed
* lm_compare_<preset>.json -> lm_compare_<preset>.png: train and held-out loss vs step per model (the curves the
                              JSON carries; no run directories needed)
* <runs>/*/metrics.jsonl   -> loss_curves.png: train (and eval) loss vs step, one line per run
* bench_ops.json          -> kernel_time.png: forward and forward+backward time vs T per implementation
                             (rows with case, impl, T, fwd_ms, fwd_bwd_ms)
Inputs that are missing are skipped with a note; without matplotlib the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_mqar(path: str, out: str, plt) -> str:
    """Accuracy vs width per (seq_len, kv pairs), one line per model (best lr of each cell)."""
    res = json.load(open(path))
    best = res.get("best") or res["cells"]
    tasks = sorted({(c["seq_len"], c["kv_pairs"]) for c in best})
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3), squeeze=False, sharey=True)
    for ax, (T, kv) in zip(axes[0], tasks, strict=True):
        for kind in sorted({c["model"] for c in best}):
            pts = sorted((c["width"], c["accuracy"], c.get("accuracy_min", c["accuracy"]),
                          c.get("accuracy_max", c["accuracy"]), c.get("n_seeds", 1)) for c in best
                         if c["model"] == kind and c["seq_len"] == T and c["kv_pairs"] == kv)
            n = max(p[4] for p in pts)
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], marker="o", capsize=3,
                        yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                        label=kind + (f" ({n} seeds)" if n > 1 else ""))
        ax.set_xscale("log", base=2)
        widths = sorted({c["width"] for c in best})
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.minorticks_off()
        ax.set_title(f"T={T}, kv={kv}")
        ax.set_xlabel("model width")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("MQAR accuracy")
    axes[0][-1].legend(fontsize=8)
    steps = (res.get("config") or {}).get("steps")
    bars = ", bars: lowest to highest seed" if any(c.get("n_seeds", 1) > 1 for c in best) else ""
    fig.suptitle(f"MQAR ({res.get('preset')}, {steps} steps, best lr{bars}; {res.get('device')}, "
                 f"{res.get('commit')})", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_loss_curves(metrics_files: list[str], out: str, plt) -> str:
    """Train (solid) and eval (dashed, markers) loss vs step from metrics.jsonl files."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for path in metrics_files:
        name = os.path.basename(os.path.dirname(path))
        curves = defaultdict(list)
        for line in open(path):
            r = json.loads(line)
            if "loss" in r:
                curves[r.get("split", "train")].append((r["step"], r["loss"]))
        line = None
        if curves["train"]:
            (line,) = ax.plot(*zip(*curves["train"], strict=True), label=f"{name} train")
        if curves["eval"]:
            ax.plot(*zip(*curves["eval"], strict=True), ls="--", marker="o", ms=3,
                    color=line.get_color() if line else None, label=f"{name} eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_lm_compare(path: str, out: str, plt) -> str:
    """Train (solid) and held-out (dashed, markers) loss vs step per model of an lm_compare JSON."""
    res = json.load(open(path))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for row in res["rows"]:
        curves = row.get("curves") or {}
        line = None
        if curves.get("train"):
            (line,) = ax.plot(*zip(*curves["train"], strict=True), label=f"{row['model']} train")
        if curves.get("eval"):
            ax.plot(*zip(*curves["eval"], strict=True), ls="--", marker="o", ms=3,
                    color=line.get_color() if line else None, label=f"{row['model']} held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend(fontsize=7)
    steps = (res.get("config") or {}).get("train", {}).get("steps")
    ax.set_title(f"LM comparison ({res.get('preset')}, {steps} steps; {res.get('device')}, {res.get('commit')})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_kernel_time(path: str, out: str, plt) -> str:
    """fwd and fwd+bwd time per token (ns) vs T for the S400 head shape (cases S400*, whatever their batch),
    one line per implementation."""
    data = json.load(open(path))
    rows = data["rows"] if isinstance(data, dict) else data
    by_impl = defaultdict(list)
    for r in rows:
        if str(r.get("case", "")).startswith("S400") and r.get("fwd_ms") is not None:
            per_tok = 1e6 / (r["B"] * r["T"])  # ms -> ns per token
            bwd = r.get("fwd_bwd_ms")
            by_impl[r["impl"]].append((r["T"], r["fwd_ms"] * per_tok, None if bwd is None else bwd * per_tok))
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.4))
    for impl, pts in sorted(by_impl.items()):
        pts.sort()
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=impl)
        bw = [(p[0], p[2]) for p in pts if p[2] is not None]
        if bw:
            axes[1].plot(*zip(*bw, strict=True), marker="o", label=impl)
    for ax, t in zip(axes, ("forward", "forward + backward"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("ns per token")
        ax.set_title(f"{t}, H=6 K=128 V=256", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--runs", default="runs/lm_compare", help="directory whose */metrics.jsonl are plotted")
    ap.add_argument("--out", help="where PNGs go (default: --results)")
    args = ap.parse_args(argv)
    plt = _plt()
    if plt is None:
        print("matplotlib is not installed (pip install 'mdn-jax[experiments]'): no plots made")
        return 0
    out = args.out or args.results
    os.makedirs(out, exist_ok=True)
    made = []
    for path in sorted(glob.glob(os.path.join(args.results, "mqar_*.json"))):
        made.append(plot_mqar(path, os.path.join(out, os.path.basename(path)[:-5] + ".png"), plt))
    for path in sorted(glob.glob(os.path.join(args.results, "lm_compare_*.json"))):
        made.append(plot_lm_compare(path, os.path.join(out, os.path.basename(path)[:-5] + ".png"), plt))
    metrics = sorted(glob.glob(os.path.join(args.runs, "*", "metrics.jsonl")))
    if metrics:
        made.append(plot_loss_curves(metrics, os.path.join(out, "loss_curves.png"), plt))
    else:
        print(f"note: no {args.runs}/*/metrics.jsonl: no loss curves")
    bench = os.path.join(args.results, "bench_ops.json")
    if os.path.exists(bench):
        made.append(plot_kernel_time(bench, os.path.join(out, "kernel_time.png"), plt))
    else:
        print(f"note: no {bench}: no kernel-time plot")
    for m in made:
        print(f"wrote {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
