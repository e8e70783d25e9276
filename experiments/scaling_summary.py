"""Summarise a multi-device scaling measurement of `mdn-jax train` (experiments/gpu_scale.sh) into JSON + Markdown.

Usage:
    python experiments/scaling_summary.py --run 1gpu:1:metrics_1gpu.jsonl[:train_1gpu.log] \
        --run 2gpu_fsdp:2:metrics_2gpu.jsonl[:train_2gpu.log] [--run ...] --out OUT/scaling [--note TEXT]

Each `--run NAME:DEVICES:METRICS[:LOG]`; the first run is the baseline. Per run, from the train records of the
run's metrics.jsonl (the loop logs one record at step 1 and every `log_every` steps; each record's tokens_per_s and
step_time cover the steps since the previous record, without eval/checkpoint time):
  tokens_per_s, step_time  median over the windows after the first (the first window is step 1: the compile)
  peak_mem_gib             the largest value logged (the first local device's peak bytes in use: under SPMD every
                           device runs the same program on equal shards)
  first_step_s             step 1's time: compile + one step
  scaling_efficiency       tokens_per_s / ((DEVICES / baseline DEVICES) x baseline tokens_per_s)
From the LOG (optional): mesh, global batch and parameter count (the loop's first line) and the wall-time phases
from the `== scale run NAME: ... start T` / `== scale run NAME: rc R, end T` lines that gpu_scale.sh writes
(start -> step 1 logged, step 1 -> last record, last record -> exit: final checkpoint, params export).
A missing or empty metrics file gives a run with status 'missing' or 'no windows' and null numbers; the summary
is still written (exit 0), so a partial measurement is reported as such.
Writes OUT.json and OUT.md and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys


def read_train_records(path: str) -> list[dict]:
    """The split == 'train' records of a metrics.jsonl, by step (the last record of a step wins); [] if absent."""
    if not os.path.isfile(path):
        return []
    by_step = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut off by a killed run
                continue
            if rec.get("split") == "train" and "step" in rec:
                by_step[int(rec["step"])] = rec
    return [by_step[s] for s in sorted(by_step)]


_MESH = re.compile(r"\| mesh (\{[^}]*\}) \| batch (\d+)x(\d+) \(accum (\d+)\)")
_PARAMS = re.compile(r"^model (\S+): ([\d,]+) params", re.M)


def read_log(path: str | None, name: str) -> dict:
    """Mesh, batch, params and the script's start/end/rc markers from a train log ({} when there is none)."""
    if not path or not os.path.isfile(path):
        return {}
    with open(path, errors="replace") as f:
        text = f.read()
    tag = re.escape(name)
    start = re.search(rf"^== scale run {tag}:.*\bstart ([0-9.]+)", text, re.M)
    end = re.search(rf"^== scale run {tag}: rc (\d+), end ([0-9.]+)", text, re.M)
    out = {}
    if start:  # this run's part of a log that several runs share
        out["t_start"] = float(start.group(1))
        text = text[start.end():end.start() if end and end.start() > start.end() else len(text)]
    if end:
        out["rc"], out["t_end"] = int(end.group(1)), float(end.group(2))
    m = _MESH.search(text)
    if m:
        try:
            out["mesh"] = json.loads(m.group(1).replace("'", '"'))
        except json.JSONDecodeError:
            out["mesh"] = m.group(1)
        out["global_batch"], out["seq_len"], out["grad_accum"] = int(m.group(2)), int(m.group(3)), int(m.group(4))
    m = _PARAMS.search(text)
    if m:
        out["model"], out["params"] = m.group(1), int(m.group(2).replace(",", ""))
    return out


def summarise_run(name: str, devices: int, metrics: str, log: str | None = None) -> dict:
    recs = read_train_records(metrics)
    info = read_log(log, name)
    windows = recs[1:]
    tps = [float(r["tokens_per_s"]) for r in windows if "tokens_per_s" in r]
    st = [float(r["step_time"]) for r in windows if "step_time" in r]
    mfu = [float(r["mfu"]) for r in windows if "mfu" in r]
    mem = [float(r["peak_mem_gib"]) for r in recs if "peak_mem_gib" in r]
    run = {"name": name, "devices": devices, "metrics": os.path.basename(metrics),
           "status": "missing" if not recs else "no windows" if not tps else "ok",
           "last_step": int(recs[-1]["step"]) if recs else None, "windows": len(tps),
           "tokens_per_s": statistics.median(tps) if tps else None,
           "tokens_per_s_min": min(tps) if tps else None, "tokens_per_s_max": max(tps) if tps else None,
           "tokens_per_s_per_device": statistics.median(tps) / devices if tps else None,
           "step_time_s": statistics.median(st) if st else None,
           "mfu": statistics.median(mfu) if mfu else None,
           "peak_mem_gib": max(mem) if mem else None,
           "first_step_s": float(recs[0]["step_time"]) if recs and "step_time" in recs[0] else None,
           "final_loss": float(recs[-1]["loss"]) if recs and "loss" in recs[-1] else None,
           "skipped": int(recs[-1]["skipped"]) if recs and "skipped" in recs[-1] else None}
    for k in ("model", "params", "mesh", "global_batch", "seq_len", "grad_accum", "rc"):
        if k in info:
            run[k] = info[k]
    if "global_batch" in info:
        run["per_device_batch"] = info["global_batch"] / devices
        run["per_device_micro_batch"] = info["global_batch"] / info["grad_accum"] / devices
    t0, t1 = info.get("t_start"), info.get("t_end")
    if recs and "time" in recs[0]:
        first, last = float(recs[0]["time"]), float(recs[-1]["time"])
        phases = {} if t0 is None else {"start_to_step1_s": first - t0}
        phases["steps_after_first_s"] = last - first
        if t1 is not None:
            phases["last_record_to_exit_s"] = t1 - last
        run["phases"] = phases
    if t0 is not None and t1 is not None:
        run["wall_s"] = t1 - t0
    return run


def summarise(runs: list[tuple[str, int, str, str | None]], note: str = "") -> dict:
    out = [summarise_run(*r) for r in runs]
    base = out[0] if out else None
    for r in out:
        ok = base and base["tokens_per_s"] and r["tokens_per_s"]
        r["scaling_efficiency"] = (r["tokens_per_s"] / (r["devices"] / base["devices"] * base["tokens_per_s"])
                                   if ok else None)
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"] if ok else None
    return {"baseline": base["name"] if base else None, "note": note, "runs": out}


def _f(x, spec, unit=""):
    return "-" if x is None else format(x, spec) + unit


def to_markdown(s: dict) -> str:
    lines = [f"# Scaling of `mdn-jax train` (baseline: {s['baseline']})", ""]
    if s.get("note"):
        lines += [s["note"], ""]
    lines += ["| run | devices | mesh | global batch (micro / device) | tokens/s (min-max) | tokens/s per device | "
              "step time | MFU | peak mem / device | speedup | scaling efficiency | step 1 (compile) | status |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in s["runs"]:
        mesh = r.get("mesh")
        mesh = " ".join(f"{k}={v}" for k, v in mesh.items()) if isinstance(mesh, dict) else (mesh or "-")
        batch = "-" if "global_batch" not in r else \
            f"{r['global_batch']}x{r['seq_len']} ({_f(r['per_device_micro_batch'], 'g')})"
        rng = "" if r["tokens_per_s"] is None else \
            f" ({_f(r['tokens_per_s_min'], ',.0f')}-{_f(r['tokens_per_s_max'], ',.0f')})"
        status = r["status"] + (f", rc {r['rc']}" if r.get("rc") not in (None, 0) else "")
        lines.append(f"| {r['name']} | {r['devices']} | {mesh} | {batch} | {_f(r['tokens_per_s'], ',.0f')}{rng} | "
                     f"{_f(r['tokens_per_s_per_device'], ',.0f')} | {_f(r['step_time_s'], '.3f', ' s')} | "
                     f"{_f(r['mfu'], '.1%')} | {_f(r['peak_mem_gib'], '.1f', ' GiB')} | "
                     f"{_f(r['speedup'], '.2f', 'x')} | "
                     f"{_f(r['scaling_efficiency'], '.1%')} | {_f(r['first_step_s'], '.0f', ' s')} | {status} |")
    lines += ["", "Medians over the logged windows after the first (step 1 holds the compile); scaling efficiency = "
              "tokens/s / (devices / baseline devices x baseline tokens/s). Peak memory: the first local device's "
              "peak bytes in use.", ""]
    for r in s["runs"]:
        ph = r.get("phases")
        if ph:
            parts = [f"{k[:-2].replace('_', ' ')} {v:.0f} s" for k, v in ph.items()]
            wall = f", wall {r['wall_s']:.0f} s" if "wall_s" in r else ""
            win = f"{r['windows']} window" + ("" if r["windows"] == 1 else "s")
            lines.append(f"- {r['name']}: {', '.join(parts)}{wall}; {win} to step "
                         f"{r['last_step']}, final loss {_f(r['final_loss'], '.3f')}, skipped {r['skipped']}")
    return "\n".join(lines) + "\n"


def parse_run(text: str) -> tuple[str, int, str, str | None]:
    parts = text.split(":", 3)
    if len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME:DEVICES:METRICS[:LOG], got {text!r}")
    return parts[0], int(parts[1]), parts[2], parts[3] if len(parts) == 4 else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", type=parse_run, required=True,
                    help="NAME:DEVICES:METRICS_JSONL[:TRAIN_LOG]; the first is the baseline")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.json and OUT.md")
    ap.add_argument("--note", default="", help="a line for the Markdown (what was run)")
    args = ap.parse_args(argv)
    s = summarise(args.run, args.note)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(s, f, indent=1)
    md = to_markdown(s)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
