"""MQAR generator correctness and the cpu-smoke run of experiments/mqar.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mdn_jax.data.mqar import MQARConfig, mqar_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("V, n, T", [(64, 4, 32), (8192, 16, 256), (20, 9, 40)])
def test_answers_are_bound_values(V, n, T):
    cfg = MQARConfig(vocab_size=V, num_kv_pairs=n, seq_len=T)
    b = mqar_batch(cfg, 50, seed=3)
    x, y, m = b["inputs"], b["targets"], b["mask"]
    assert x.shape == y.shape == m.shape == (50, T) and x.dtype == np.int32 and m.dtype == bool
    assert (m.sum(1) == n).all()
    assert (x >= 0).all() and (x < V).all()
    for r in range(50):
        keys, vals = x[r, 0:2 * n:2], x[r, 1:2 * n:2]
        assert len(set(keys)) == n and len(set(vals)) == n
        assert (keys >= 1).all() and (keys < V // 2).all() and (vals >= V // 2).all()
        bound = dict(zip(keys.tolist(), vals.tolist(), strict=True))
        pos = np.flatnonzero(m[r])
        assert (pos >= 2 * n).all() and ((pos - 2 * n) % 2 == 0).all()
        assert sorted(x[r, pos].tolist()) == sorted(keys.tolist())  # every key queried once
        for t in pos:
            assert y[r, t] == bound[int(x[r, t])]
        assert (y[r, ~m[r]] == 0).all()


def test_seeded_determinism():
    cfg = MQARConfig(vocab_size=128, num_kv_pairs=8, seq_len=64)
    a, b, c = mqar_batch(cfg, 16, seed=1), mqar_batch(cfg, 16, seed=1), mqar_batch(cfg, 16, seed=2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["inputs"], c["inputs"])


def test_no_noise_option():
    b = mqar_batch(MQARConfig(vocab_size=64, num_kv_pairs=4, seq_len=32, random_non_queries=False), 8, seed=0)
    rest = b["inputs"][:, 8:][~b["mask"][:, 8:]]
    assert (rest == 0).all()


@pytest.mark.parametrize("kw, msg", [
    (dict(vocab_size=8, num_kv_pairs=4, seq_len=64), "vocab_size"),
    (dict(vocab_size=64, num_kv_pairs=8, seq_len=30), "too short"),
    (dict(vocab_size=64, num_kv_pairs=0, seq_len=30), "positive"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        mqar_batch(MQARConfig(**kw), 2, seed=0)


def test_cpu_smoke_end_to_end(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "mqar.py"), "--preset", "cpu-smoke",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "mqar_cpu-smoke.json").read_text())
    assert {c["model"] for c in res["cells"]} == {"mdn", "gdn", "transformer"}
    for c in res["cells"]:
        assert 0.0 <= c["accuracy"] <= 1.0 and np.isfinite(c["final_loss"]) and c["skipped"] == 0
    assert (tmp_path / "mqar_cpu-smoke.md").read_text().startswith("# MQAR")
