"""Command line: `mdn-jax <command>`. Commands: `train` (here); `generate` and `eval` are added by their issues.

    mdn-jax train [--config NAME|FILE.json] [--data PATH] [--tokenizer byte|gpt2|tokenizer.json] [--out DIR]
                  [--resume] [key=value ...]

User errors (bad config, missing data, sizes that do not divide) print one line `mdn-jax: error: ...` and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from mdn_jax.cli_eval import add_eval, add_stability
from mdn_jax.errors import UserError


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a language model (default: a tiny MDN on Shakespeare, CPU, minutes)",
                       description="Train with Optax on a device mesh. Overrides: key=value for any TrainConfig "
                                   "field, model.<key>=value for the model config.")
    p.add_argument("--config", default="tiny", help="preset name (tiny, tiny_transformer, 400M) or JSON file")
    p.add_argument("--data", help="'shakespeare', a directory of .txt files, a .txt or a .jsonl file")
    p.add_argument("--tokenizer", help="'byte', 'gpt2' or a path to an HF tokenizer.json")
    p.add_argument("--out", help="output directory (checkpoints, metrics, params export)")
    p.add_argument("--resume", action="store_true", help="continue from the newest readable checkpoint in --out")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from mdn_jax.train.config import load_train_config, parse_overrides

    ov = parse_overrides(args.overrides)
    for k in ("data", "tokenizer", "out"):
        if getattr(args, k) is not None:
            ov[k] = getattr(args, k)
    if args.resume:
        ov["resume"] = True
    cfg = load_train_config(args.config, ov)
    from mdn_jax.train.loop import train

    train(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdn-jax", description="Momentum DeltaNet in JAX")
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_train(sub)
    add_eval(sub)
    add_stability(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["train"]
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(getattr(args, "overrides", [])) + extra
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"mdn-jax: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mdn-jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
