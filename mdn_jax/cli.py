"""Command line: `mdn-jax <command>`. Commands: `train`, `generate`; `eval` is added by its issue.

    mdn-jax train [--config NAME|FILE.json] [--data PATH] [--tokenizer byte|gpt2|tokenizer.json] [--out DIR]
                  [--resume] [key=value ...]
    mdn-jax generate (--checkpoint DIR | --safetensors FILE --config NAME) --prompt TEXT [--prompt TEXT ...]
                     [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P] [--seed S] [--max-len N]
                     [--tokenizer ...] [--step N] [--no-stream]

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


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a trained checkpoint (streams tokens as they come)",
                       description="Continue a prompt with a trained model: prefill with the chunked operator, then "
                                   "decode with the recurrent state cache. One --prompt streams its tokens; several "
                                   "run as one batch (fully jitted loop) and print when done.")
    p.add_argument("--checkpoint", help="training --out dir (default runs/default), a checkpoints/<step> dir or "
                                        "an exported params dir")
    p.add_argument("--safetensors", help="the authors' PyTorch weights (.safetensors); needs --config")
    p.add_argument("--config", help="model config name or JSON (for --safetensors, or a params dir without "
                                    "config.json)")
    p.add_argument("--tokenizer", help="'byte', 'gpt2' or a tokenizer.json (default: the training run's)")
    p.add_argument("--step", type=int, help="load checkpoints/<step> of a run dir (default: the newest weights)")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-len", type=int, help="prompt + new tokens capacity (default: rounded up to a power of 2)")
    p.add_argument("--no-stream", action="store_true", help="one prompt: use the fully jitted loop, print at the end")
    p.set_defaults(func=_run_generate)


def _run_generate(args) -> int:
    if getattr(args, "overrides", None):
        raise UserError(f"generate takes no key=value overrides, got {' '.join(args.overrides)}")
    for i, p in enumerate(args.prompt):
        if not p:
            raise UserError(f"prompt {i} is empty: give some text to continue")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError("need --temperature >= 0, 0 < --top-p <= 1 and --top-k >= 0")
    if args.checkpoint is None and args.safetensors is None:
        args.checkpoint = "runs/default"
    from mdn_jax.inference import generate, load_model, stream_generate

    model, tok = load_model(args.checkpoint, safetensors=args.safetensors, config=args.config,
                            tokenizer=args.tokenizer, step=args.step)
    opts = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed, max_len=args.max_len)
    if len(args.prompt) == 1 and not args.no_stream:
        pieces = stream_generate(model, tok, args.prompt[0], **opts)  # checks the prompt before printing
        print(args.prompt[0], end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print(flush=True)
        return 0
    for i, (prompt, text) in enumerate(zip(args.prompt, generate(model, tok, args.prompt, **opts), strict=True)):
        if len(args.prompt) > 1:
            print(f"--- {i}")
        print(prompt + text, flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdn-jax", description="Momentum DeltaNet in JAX")
    sub = parser.add_subparsers(dest="command", metavar="command")
    _add_train(sub)
    _add_generate(sub)
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
