"""`experiments/bench_ab.py`: rounds rotate the variants' order, differences are paired by round, and a tiny
end-to-end run (on CPU: the Pallas kernels in interpret mode) writes its JSON."""

import json

import jax.numpy as jnp
import pytest

from experiments import bench_ab


def test_interleaved_rotates_the_order_each_round(monkeypatch):
    calls = []
    monkeypatch.setattr(bench_ab, "ms_per_call", lambda fn, args, reps: calls.append(fn.name) or fn.ms)

    class Fake:
        def __init__(self, name, ms):
            self.name, self.ms = name, ms

        def __call__(self, *args):
            return jnp.zeros(())

    fns = [Fake("a", 1.0), Fake("b", 2.0), Fake("c", 4.0)]
    times = bench_ab.interleaved(fns, (), rounds=3, reps=1)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert times == [[1.0] * 3, [2.0] * 3, [4.0] * 3]


def test_summarize_pairs_differences_by_round():
    rows = bench_ab.summarize(["", "X=1"], [[1.0, 3.0, 2.0], [1.5, 3.1, 2.6]])
    assert rows[0] == dict(variant="default", median_ms=2.0, min_ms=1.0, median_diff_ms=0.0, rounds=3)
    assert rows[1]["variant"] == "X=1"
    assert rows[1]["median_diff_ms"] == pytest.approx(0.5)  # paired: 0.5, 0.1, 0.6
    assert rows[1]["median_ms"] == pytest.approx(2.6)


def test_tiny_run_writes_rows(tmp_path, capsys):
    assert bench_ab.main(["--case", "tiny", "--variants", "MDN_PREP_FWD_KERNEL=0", "--rounds", "2", "--reps", "1",
                          "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ab_tiny_fwd.json").read_text())
    assert [r["variant"] for r in data["rows"]] == ["default", "MDN_PREP_FWD_KERNEL=0"]
    assert all(r["median_ms"] > 0 and r["rounds"] == 2 for r in data["rows"])
    with pytest.raises(SystemExit):
        bench_ab.main(["--case", "tiny", "--variants", "X=1", "--rounds", "0"])
