"""A tiny trained MDN run directory, trained once per pytest session through the CLI (shared by eval/stability)."""

import os

from train_cli import run_cli

_CACHE: dict[str, str] = {}

TRAIN_ARGS = ["model=tiny_mdn", "steps=3", "seq_len=32", "batch_size=4", "eval_every=0", "sample_tokens=0",
              "progress=false", "tensorboard=false"]


def tiny_run(tmp_path_factory, name: str = "tiny_mdn", extra=()) -> str:
    key = name + " ".join(extra)
    if key not in _CACHE:
        out = str(tmp_path_factory.mktemp(name) / "run")
        run_cli(["train", "--out", out, *TRAIN_ARGS, *extra])
        assert os.path.isdir(os.path.join(out, "params"))
        _CACHE[key] = out
    return _CACHE[key]
