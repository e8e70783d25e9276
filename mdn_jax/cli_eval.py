"""Argument parsers of `mdn-jax eval` and `mdn-jax stability` (kept out of cli.py; heavy imports are lazy).

    mdn-jax eval --checkpoint DIR [--data PATH] [--tokenizer T] [--seq-len N] [--window W] [--batch-size B]
                 [--max-batches N] [--max-len N] [--max-tokens N] [--json FILE]
    mdn-jax stability --checkpoint DIR [--data PATH] [--seq-len N] [--batch-size B] [--batches N]
                      [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import json


def _write_json(obj, path):
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=1)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="held-out loss / perplexity / bits per byte of a trained run",
                       description="Evaluate a run directory (the --out of `mdn-jax train`). Without --data the "
                                   "run's own held-out split is used. --window W streams the recurrent state "
                                   "across windows of W tokens (long-context evaluation).")
    p.add_argument("--checkpoint", required=True, help="run directory (config.json + params/ or checkpoints/)")
    p.add_argument("--data", help="'shakespeare', a directory of .txt files, a .txt or a .jsonl file")
    p.add_argument("--tokenizer", help="override the run's tokenizer ('byte', 'gpt2', tokenizer.json)")
    p.add_argument("--seq-len", type=int, help="packed row length (default: the run's seq_len)")
    p.add_argument("--window", type=int, help="stream each document in windows of W tokens, state carried")
    p.add_argument("--batch-size", type=int, default=8, help="rows per batch (packed mode)")
    p.add_argument("--max-batches", type=int, help="stop after N batches (packed mode)")
    p.add_argument("--max-len", type=int, help="longest document for models with attention layers (streamed)")
    p.add_argument("--max-tokens", type=int, help="stop after about N scored tokens (streamed)")
    p.add_argument("--json", help="also write the result to this file")
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from mdn_jax.evaluation.lm_eval import run_eval

    out = run_eval(args.checkpoint, args.data, args.tokenizer, args.seq_len, args.window, args.batch_size,
                   args.max_batches, args.max_len, args.max_tokens)
    print(json.dumps(out))
    _write_json(out, args.json)
    return 0


def add_stability(sub) -> None:
    p = sub.add_parser("stability", help="eigenvalues of the learned (S, M) recurrence per layer and head",
                       description="Per layer and head, the 2x2 per-step matrix [[alpha - beta h, -beta mu], "
                                   "[h, mu]] of the learned gates on real inputs: max |eigenvalue|, the margin "
                                   "(1+alpha)(1+mu) - beta h and the Jury condition (spec section 6).")
    p.add_argument("--checkpoint", required=True, help="run directory (config.json + params/ or checkpoints/)")
    p.add_argument("--data", help="input text (default: the run's held-out split)")
    p.add_argument("--seq-len", type=int, help="row length (default: the run's seq_len)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=1, help="batches of real input to collect gates from")
    p.add_argument("--json", help="also write the full report to this file")
    p.add_argument("--plot", help="histogram PNG of the per-token spectral radius (needs matplotlib)")
    p.set_defaults(func=_run_stability)


def _run_stability(args) -> int:
    from mdn_jax.analysis.stability import format_report, run_stability

    rep = run_stability(args.checkpoint, args.data, args.seq_len, args.batch_size, args.batches, args.plot)
    print(format_report(rep))
    _write_json(rep, args.json)
    return 0
