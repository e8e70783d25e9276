"""Language modelling at small scale: MDN vs GDN (mu = 0) vs Transformer of matched parameter count.

    python experiments/lm_compare.py --preset cpu-smoke     # tiny models, a few steps, bytes, CPU
    python experiments/lm_compare.py --preset cpu --seed 1  # width 64, 4 layers, 600 steps, bytes (CPU, minutes)
    python experiments/lm_compare.py --preset gpu           # ~25M non-embedding params each, GPT-2 BPE (GPU)
    python experiments/lm_compare.py --preset gpu --data /path/corpus.jsonl   # a larger local corpus
    python experiments/lm_compare.py --preset gpu --steps 600 --eval-every 200  # trimmed (said in the output)

Every model is trained by `mdn_jax.train.loop.train` on the same data, seed, batch, sequence length and number
of steps (the same token budget); model shapes come from `experiments.common.model_dict` (mixer ~4 width^2 params
for all three kinds). Reports parameter counts, held-out loss / perplexity at the end (the loop's eval on the
run's held-out split) and training throughput (median tokens/s over logged steps after the first, i.e. without
compilation). Each run's directory (metrics.jsonl, params) is kept under --runs; the train and eval loss curves
are copied into the JSON (for `experiments/plots.py`). `--steps` trims the run (warm-up scaled with it; the output
states the trim and the token budget). The results are rewritten after every model; a model stopped by SIGTERM
(the loop checkpoints and returns) is reported as stopped and the models after it are not started. Writes
<out>/lm_compare_<preset>.{json,md} (default out: experiments/results).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.common import model_dict, run_info, write_results  # noqa: E402
from mdn_jax.model import ModelConfig, count_params  # noqa: E402
from mdn_jax.train.config import TrainConfig  # noqa: E402
from mdn_jax.train.loop import train  # noqa: E402

PRESETS = {
    "cpu-smoke": dict(width=32, layers=2, head_dim=16, chunk_size=16, vocab=264, tie=False,
                      train=dict(tokenizer="byte", seq_len=32, batch_size=4, steps=4, warmup_steps=1, lr=3e-3,
                                 log_every=1, eval_every=4, eval_batches=1, ckpt_every=1000, sample_tokens=0)),
    "cpu": dict(width=64, layers=4, head_dim=16, chunk_size=32, vocab=264, tie=False,
                train=dict(tokenizer="byte", seq_len=128, batch_size=16, steps=600, warmup_steps=60, lr=3e-3,
                           log_every=50, eval_every=200, eval_batches=8, ckpt_every=1000, sample_tokens=0)),
    "gpu": dict(width=512, layers=8, head_dim=64, chunk_size=64, vocab=50264, tie=True,
                train=dict(tokenizer="gpt2", seq_len=1024, batch_size=16, steps=1500, warmup_steps=150, lr=1e-3,
                           compute_dtype="bfloat16", log_every=25, eval_every=250, eval_batches=16,
                           ckpt_every=1500, sample_tokens=0)),
}


def trimmed(preset: str, steps: int | None = None, eval_every: int | None = None) -> tuple[dict, dict]:
    """(the preset with --steps / --eval-every applied, {key: {"preset": old, "run": new}} of what changed).
    The warm-up keeps its fraction of the steps."""
    p = PRESETS[preset]
    t = dict(p["train"])
    if steps is not None and steps != t["steps"]:
        t["warmup_steps"] = max(1, round(t["warmup_steps"] * steps / t["steps"]))
        t["steps"] = steps
    if eval_every is not None:
        t["eval_every"] = eval_every
    changed = {k: {"preset": p["train"][k], "run": t[k]} for k in t if t[k] != p["train"][k]}
    return dict(p, train=t), changed


def _curves(recs: list[dict]) -> dict:
    return {split: [[r["step"], r["loss"]] for r in recs if r.get("split") == split and "loss" in r]
            for split in ("train", "eval")}


def compare(preset: str, models: list[str], data: str, runs_dir: str, seed: int = 0, p: dict | None = None,
            on_row=None) -> list[dict]:
    """Train each model of `models` with preset `p` (default PRESETS[preset]); `on_row(rows)` after each one."""
    p = p or PRESETS[preset]
    rows = []
    for kind in models:
        out = os.path.join(runs_dir, f"{preset}_{kind}")
        os.makedirs(out, exist_ok=True)
        mpath = os.path.join(out, "model.json")
        md = model_dict(kind, p["width"], p["layers"], p["vocab"], p["train"]["seq_len"], p["head_dim"],
                        p["chunk_size"], p["tie"])
        with open(mpath, "w") as f:
            json.dump(md, f, indent=1)
        cfg = TrainConfig(**{**p["train"], "model": mpath, "data": data, "out": out, "seed": seed, "progress": False,
                             "tensorboard": False})
        if os.path.isdir(os.path.join(out, "checkpoints")):
            cfg.resume = True
        t0 = time.perf_counter()
        res = train(cfg, log=lambda m, k=kind: print(f"[{k}] {m}", flush=True))
        wall = time.perf_counter() - t0
        recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        trains = [r for r in recs if r.get("split") == "train"]
        tps = [r["tokens_per_s"] for r in trains][1:]
        evals = [r for r in recs if r.get("split") == "eval"]
        mfus = [r["mfu"] for r in trains[1:] if "mfu" in r]
        n = count_params(ModelConfig.from_dict(dict(md, vocab_size=p["vocab"])))
        rows.append({"model": kind, "params": n["total"], "non_embedding_params": n["non_embedding"],
                     "steps_done": res["step"], "stopped": res["step"] < cfg.steps,
                     "final_train_loss": res["losses"][-1][1] if res["losses"] else None,
                     "eval_loss": evals[-1]["loss"] if evals else None,
                     "eval_ppl": evals[-1]["ppl"] if evals else None,
                     "tokens_per_s": statistics.median(tps) if tps else None,
                     "mfu": statistics.median(mfus) if mfus else None,
                     "peak_mem_gib": max((r["peak_mem_gib"] for r in trains if "peak_mem_gib" in r), default=None),
                     "first_step_seconds": (trains[0]["step_time"] + trains[0].get("compile_s", 0.0)) if trains
                     else None,  # compile + one step
                     "wall_seconds": wall, "skipped": res["skipped"],
                     "tokens": res["step"] * cfg.batch_size * cfg.seq_len, "run_dir": out, "curves": _curves(recs)})
        print(f"[{kind}] " + json.dumps({k: v for k, v in rows[-1].items() if k != "curves"}), flush=True)
        if on_row:
            on_row(rows)
        if rows[-1]["stopped"]:
            print(f"[{kind}] stopped at step {res['step']} of {cfg.steps} (signal): the remaining models are not run",
                  flush=True)
            break
    return rows


def markdown(preset, p, data, info, rows, changed=None, status="complete", models=None) -> str:
    t = p["train"]
    tokens = t["steps"] * t["batch_size"] * t["seq_len"]
    lines = [f"# LM comparison, preset `{preset}`", "",
             f"Device {info['device']}, {info['date']}, commit {info['commit']}. Data {data}, tokenizer "
             f"{t['tokenizer']}, {t['steps']} steps x {t['batch_size']} x {t['seq_len']} tokens "
             f"({tokens:,} tokens per model), lr {t['lr']} (warm-up {t['warmup_steps']}, cosine), "
             f"eval every {t['eval_every']} steps on {t['eval_batches']} held-out batches, width {p['width']}, "
             f"{p['layers']} layers, one seed.", ""]
    if changed:
        full = PRESETS[preset]["train"]
        what = "Trimmed from" if t["steps"] < full["steps"] else "Changed from"
        budget = full["steps"] * full["batch_size"] * full["seq_len"]
        lines += [f"**{what} the preset**: " + "; ".join(f"{k} {v['preset']} -> {v['run']}" for k, v in changed.items())
                  + f" (token budget {budget:,} -> {tokens:,} per model).", ""]
    missing = [m for m in (models or []) if m not in {r["model"] for r in rows}]
    lines += [f"Status: {status}" + (f"; not run: {', '.join(missing)}" if missing else "") + ".", "",
              "| model | params | non-embedding | steps | final train loss | held-out loss | held-out ppl | tokens/s "
              "| MFU | first step s (compile) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda x, s: "-" if x is None else format(x, s)  # noqa: E731
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['non_embedding_params']:,} | "
                     f"{r.get('steps_done', t['steps'])}{' (stopped)' if r.get('stopped') else ''} | "
                     f"{f(r['final_train_loss'], '.4f')} | {f(r['eval_loss'], '.4f')} | {f(r['eval_ppl'], '.2f')} | "
                     f"{f(r['tokens_per_s'], ',.0f')} | {f(r.get('mfu'), '.1%')} | "
                     f"{f(r.get('first_step_seconds'), '.1f')} |")
    evals = {r["model"]: dict(map(tuple, r.get("curves", {}).get("eval", []))) for r in rows}
    steps = sorted({s for e in evals.values() for s in e})
    if steps:
        lines += ["", "Held-out loss by step:", "", "| step | " + " | ".join(evals) + " |",
                  "|---|" + "---|" * len(evals)]
        lines += [f"| {s} | " + " | ".join(f(e.get(s), ".4f") for e in evals.values()) + " |" for s in steps]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    ap.add_argument("--data", default="shakespeare")
    ap.add_argument("--models", nargs="+", default=["mdn", "gdn", "transformer"],
                    choices=["mdn", "gdn", "transformer"])
    ap.add_argument("--runs", default="runs/lm_compare", help="directory of the training runs")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, help="trim (or extend) the preset's steps; warm-up keeps its fraction")
    ap.add_argument("--eval-every", type=int, help="held-out eval interval (steps) instead of the preset's")
    args = ap.parse_args(argv)
    info = run_info()
    p, changed = trimmed(args.preset, args.steps, args.eval_every)

    def write(rows, status):
        payload = {"experiment": "lm_compare", "preset": args.preset, "config": p, "trimmed": changed,
                   "data": args.data, **info, "seed": args.seed, "status": status, "models": args.models,
                   "rows": rows}
        return write_results(args.out, f"lm_compare_{args.preset}", payload,
                             markdown(args.preset, p, args.data, info, rows, changed, status, args.models))

    rows = compare(args.preset, args.models, args.data, args.runs, args.seed, p,
                   on_row=lambda rows: write(rows, "running"))
    done = len(rows) == len(args.models) and not any(r["stopped"] for r in rows)
    jp, mp = write(rows, "complete" if done else "partial (stopped by a signal)")
    print(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
