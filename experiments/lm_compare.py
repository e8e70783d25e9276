"""Language modelling at small scale: MDN vs GDN (mu = 0) vs Transformer of matched parameter count.

    python experiments/lm_compare.py --preset cpu-smoke     # tiny models, a few steps, bytes, CPU
    python experiments/lm_compare.py --preset gpu           # ~25M non-embedding params each, GPT-2 BPE (GPU)
    python experiments/lm_compare.py --preset gpu --data /path/corpus.jsonl   # a larger local corpus

Every model is trained by `mdn_jax.train.loop.train` on the same data, seed, batch, sequence length and number
of steps (the same token budget); model shapes come from `experiments.common.model_dict` (mixer ~4 width^2 params
for all three kinds). Reports parameter counts, held-out loss / perplexity at the end (the loop's eval on the
run's held-out split) and training throughput (median tokens/s over logged steps after the first, i.e. without
compilation). Each run's directory (metrics.jsonl, params) is kept under --runs. Writes
experiments/results/lm_compare_<preset>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.common import model_dict, run_info, write_results  # noqa: E402
from mdn_jax.model import ModelConfig, count_params  # noqa: E402
from mdn_jax.train.config import TrainConfig  # noqa: E402
from mdn_jax.train.loop import train  # noqa: E402

PRESETS = {
    "cpu-smoke": dict(width=32, layers=2, head_dim=16, chunk_size=16, vocab=264, tie=False,
                      train=dict(tokenizer="byte", seq_len=32, batch_size=4, steps=4, warmup_steps=1, lr=3e-3,
                                 log_every=1, eval_every=4, eval_batches=1, ckpt_every=1000, sample_tokens=0)),
    "gpu": dict(width=512, layers=8, head_dim=64, chunk_size=64, vocab=50264, tie=True,
                train=dict(tokenizer="gpt2", seq_len=1024, batch_size=16, steps=1500, warmup_steps=150, lr=1e-3,
                           compute_dtype="bfloat16", log_every=25, eval_every=250, eval_batches=16,
                           ckpt_every=1500, sample_tokens=0)),
}


def compare(preset: str, models: list[str], data: str, runs_dir: str, seed: int = 0) -> list[dict]:
    p = PRESETS[preset]
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
        res = train(cfg, log=lambda m, k=kind: print(f"[{k}] {m}", flush=True))
        recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
        tps = [r["tokens_per_s"] for r in recs if r.get("split") == "train"][1:]
        evals = [r for r in recs if r.get("split") == "eval"]
        n = count_params(ModelConfig.from_dict(dict(md, vocab_size=p["vocab"])))
        rows.append({"model": kind, "params": n["total"], "non_embedding_params": n["non_embedding"],
                     "final_train_loss": res["losses"][-1][1] if res["losses"] else None,
                     "eval_loss": evals[-1]["loss"] if evals else None,
                     "eval_ppl": evals[-1]["ppl"] if evals else None,
                     "tokens_per_s": statistics.median(tps) if tps else None,
                     "tokens": cfg.steps * cfg.batch_size * cfg.seq_len, "run_dir": out})
        print(f"[{kind}] {rows[-1]}", flush=True)
    return rows


def markdown(preset, p, data, info, rows) -> str:
    t = p["train"]
    lines = [f"# LM comparison, preset `{preset}`", "",
             f"Device {info['device']}, {info['date']}, commit {info['commit']}. Data {data}, tokenizer "
             f"{t['tokenizer']}, {t['steps']} steps x {t['batch_size']} x {t['seq_len']} tokens, lr {t['lr']}, "
             f"width {p['width']}, {p['layers']} layers, one seed.", "",
             "| model | params | non-embedding | final train loss | held-out loss | held-out ppl | tokens/s |",
             "|---|---|---|---|---|---|---|"]
    f = lambda x, s: "-" if x is None else format(x, s)
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['non_embedding_params']:,} | "
                     f"{f(r['final_train_loss'], '.4f')} | {f(r['eval_loss'], '.4f')} | {f(r['eval_ppl'], '.2f')} | "
                     f"{f(r['tokens_per_s'], ',.0f')} |")
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
    args = ap.parse_args(argv)
    info = run_info()
    rows = compare(args.preset, args.models, args.data, args.runs, args.seed)
    p = PRESETS[args.preset]
    payload = {"experiment": "lm_compare", "preset": args.preset, "config": p, "data": args.data, **info,
               "seed": args.seed, "rows": rows}
    jp, mp = write_results(args.out, f"lm_compare_{args.preset}", payload, markdown(args.preset, p, args.data, info,
                                                                                     rows))
    print(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
