"""compile_cache=DIR: the first run writes its compiled programs there, a second run of the same model and shapes
reads them (JAX's persistent compilation cache) and trains to the same losses."""

import json
import os

from train_cli import TINY, run_cli


def _losses(out):
    return [r["loss"] for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if r["split"] == "train"]


def test_second_run_reads_the_compiled_step_from_the_cache(tmp_path):
    cache = tmp_path / "cache"
    run_cli(["train", "--out", str(tmp_path / "a"), *TINY, "steps=2", f"compile_cache={cache}"])
    entries = set(os.listdir(cache))
    assert any(e.startswith("jit_step") for e in entries), entries  # the train step (compiled in > 1 s)
    p = run_cli(["train", "--out", str(tmp_path / "b"), *TINY, "steps=2", f"compile_cache={cache}"],
                env_extra={"JAX_DEBUG_LOG_MODULES": "jax._src.compiler"})  # JAX logs its cache hits and misses
    assert "cache hit for 'jit_step'" in p.stderr, p.stderr[-2000:]
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and len(_losses(tmp_path / "a")) == 2
