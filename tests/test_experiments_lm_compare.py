"""experiments/lm_compare.py: the cpu-smoke run trimmed by --steps (one model, to stay fast), its files, the plot."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_trimmed():
    sys.path.insert(0, ROOT)
    from experiments.lm_compare import trimmed

    p, changed = trimmed("gpu", steps=600, eval_every=200)
    assert p["train"]["steps"] == 600 and p["train"]["warmup_steps"] == 60 and p["train"]["eval_every"] == 200
    assert changed == {"steps": {"preset": 1500, "run": 600}, "warmup_steps": {"preset": 150, "run": 60},
                       "eval_every": {"preset": 250, "run": 200}}
    assert trimmed("gpu") == (trimmed("gpu")[0], {}) and trimmed("gpu")[0]["train"]["steps"] == 1500


def test_cpu_smoke_trimmed_end_to_end(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out, runs = tmp_path / "out", tmp_path / "runs"
    p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "lm_compare.py"), "--preset", "cpu-smoke",
                        "--models", "transformer", "--steps", "3", "--eval-every", "2", "--runs", str(runs),
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "lm_compare_cpu-smoke.json").read_text())
    assert res["status"] == "complete" and res["trimmed"]["steps"] == {"preset": 4, "run": 3}
    (row,) = res["rows"]
    assert row["model"] == "transformer" and row["steps_done"] == 3 and not row["stopped"]
    assert row["tokens"] == 3 * 4 * 32
    assert [s for s, _ in row["curves"]["train"]] == [1, 2, 3] and [s for s, _ in row["curves"]["eval"]] == [2, 3]
    md = (out / "lm_compare_cpu-smoke.md").read_text()
    assert "**Trimmed from the preset**: steps 4 -> 3" in md and "Held-out loss by step" in md
    pytest.importorskip("matplotlib")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "plots.py"), "--results", str(out),
                        "--runs", str(runs)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "lm_compare_cpu-smoke.png").stat().st_size > 0 and (out / "loss_curves.png").stat().st_size > 0
