"""A tiny trained MDN run directory, trained once per pytest session through the CLI (shared by the eval, stability
and generate tests).

Under pytest-xdist the run is trained once for all the workers: in a directory beside the workers' base temporary
directories (their common parent is the session's), behind a file lock; the first worker to ask trains it, the
others wait for it and read the same directory. The tests only read it.
"""

import fcntl
import os
import shutil
import zlib

from train_cli import run_cli

_CACHE: dict[str, str] = {}

# log_every=1 and warmup_steps=1: every step logged, and steps 2-3 at the full lr (with the default warm-up of 20
# steps the 3 steps would barely move the weights, and the generate test's "the step-3 checkpoint holds the exported
# weights" would hardly tell them from the initial ones)
TRAIN_ARGS = ["model=tiny_mdn", "steps=3", "seq_len=32", "batch_size=4", "log_every=1", "eval_every=0",
              "sample_tokens=0", "progress=false", "tensorboard=false", "warmup_steps=1"]


def tiny_run(tmp_path_factory, name: str = "tiny_mdn", extra=()) -> str:
    key = name + " ".join(extra)
    if key not in _CACHE:
        root = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            root = root.parent  # the session's directory, shared by the workers
        base = root / f"shared_{name}_{zlib.crc32(key.encode()):08x}"
        out, done = base / "run", base / "done"
        with open(str(base) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                shutil.rmtree(base, ignore_errors=True)  # what a failed attempt left
                base.mkdir()
                run_cli(["train", "--out", str(out), *TRAIN_ARGS, *extra])
                assert os.path.isdir(os.path.join(out, "params"))
                done.touch()
        _CACHE[key] = str(out)
    return _CACHE[key]
