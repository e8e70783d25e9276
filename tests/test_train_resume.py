"""Resume determinism, SIGKILL recovery, corrupted-checkpoint fallback and non-finite step skipping."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from train_cli import TESTS, TINY, run_cli

from mdn_jax.train.checkpoint import load_params


def _losses(out):
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in recs if r["split"] == "train"}


def _params(out):
    import jax

    return jax.tree.map(np.asarray, load_params(os.path.join(out, "params")))


def test_resume_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    run_cli(["train", "--out", a, *TINY, "steps=8", "ckpt_every=100"])
    run_cli(["train", "--out", b, *TINY, "steps=8", "stop_at_step=5", "ckpt_every=100"])
    assert sorted(_losses(b)) == [1, 2, 3, 4, 5]
    p = run_cli(["train", "--out", b, "--resume", *TINY, "steps=8", "ckpt_every=100"])
    assert "resumed from step 5" in p.stdout + p.stderr
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 9))
    for s in la:
        assert la[s] == lb[s], (s, la[s], lb[s])
    import jax

    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), _params(a), _params(b))


def test_sigkill_resumes_from_last_checkpoint(tmp_path):
    out = str(tmp_path / "k")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, "-m", "mdn_jax.cli", "train", "--out", out, *TINY, "steps=100000", "ckpt_every=5",
            "async_checkpoint=false"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = os.path.join(out, "metrics.jsonl")
    t0 = time.time()
    try:
        while time.time() - t0 < 120:
            if os.path.exists(metrics) and max(_losses(out) or [0]) >= 17:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    last_done = max(_losses(out))
    assert last_done >= 17
    steps = sorted(int(d) for d in os.listdir(os.path.join(out, "checkpoints")) if d.isdigit())
    assert steps and steps[-1] % 5 == 0
    assert last_done - steps[-1] <= 5, (last_done, steps)
    p = run_cli(["train", "--out", out, "--resume", *TINY, f"steps={steps[-1] + 3}", "ckpt_every=5"])
    assert f"resumed from step {steps[-1]}" in p.stdout + p.stderr


def test_corrupted_latest_checkpoint_falls_back(tmp_path):
    out = str(tmp_path / "c")
    run_cli(["train", "--out", out, *TINY, "steps=6", "ckpt_every=2"])
    state_dir = os.path.join(out, "checkpoints", "6", "state")
    n = 0
    for root, _, files in os.walk(state_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
            n += 1
    assert n > 0
    p = run_cli(["train", "--out", out, "--resume", *TINY, "steps=8", "ckpt_every=2"])
    text = p.stdout + p.stderr
    assert "checkpoint step 6" in text and "unreadable" in text and "falling back to step 4" in text, text[-2000:]
    assert "resumed from step 4" in text


def test_nan_gradients_are_skipped_and_counted(tmp_path):
    out = str(tmp_path / "n")
    p = run_cli(["train", "--out", out, *TINY, "steps=5", "ckpt_every=100", "debug_nan_step=2"])
    recs = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    train = {r["step"]: r for r in recs if r["split"] == "train"}
    assert train[3]["skipped"] == 1 and train[5]["skipped"] == 1 and train[2]["skipped"] == 0
    assert not np.isfinite(train[3]["grad_norm"])
    assert np.isfinite(train[5]["loss"]) and np.isfinite(train[4]["grad_norm"])
    import jax

    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(out)))
    assert "update skipped" in p.stdout + p.stderr
