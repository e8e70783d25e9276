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


def _mqar(*args, timeout=400):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "mqar.py"), "--preset", "cpu-smoke",
                           *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_cpu_smoke_end_to_end(tmp_path):
    """The smoke preset with two seeds for MDN and one for GDN and the Transformer (3 compilations, 4 runs), then
    the plot of its JSON. One layer per model instead of the preset's 2 (nothing asserted here depends on the depth;
    it halves the MDN and GDN compilations), which the results must record as a cut."""
    p = _mqar("--out", str(tmp_path), "--seeds", "0", "1", "--model-seeds", "gdn=0", "transformer=0", "--layers", "1")
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "mqar_cpu-smoke.json").read_text())
    assert res["status"] == "complete" and res["not_run"] == []
    assert sorted((c["model"], c["seed"]) for c in res["cells"]) == [
        ("gdn", 0), ("mdn", 0), ("mdn", 1), ("transformer", 0)]
    for c in res["cells"]:
        assert 0.0 <= c["accuracy"] <= 1.0 and np.isfinite(c["final_loss"]) and c["skipped"] == 0
    best = {b["model"]: b for b in res["best"]}
    assert best["mdn"]["seeds"] == [0, 1] and len(best["mdn"]["accuracies"]) == 2
    assert best["transformer"]["n_seeds"] == 1 and best["transformer"]["accuracy_std"] == 0.0
    assert res["cut"]["seeds"]["run"] == {"mdn": [0, 1], "gdn": [0], "transformer": [0]}
    assert res["cut"]["layers"] == {"preset": 2, "run": 1} and res["config"]["layers"] == 1
    md = (tmp_path / "mqar_cpu-smoke.md").read_text()
    assert md.startswith("# MQAR") and "## All runs" in md and "MDN - GDN" in md and "Status: complete" in md
    assert "1 layers" in md and "layers 2 -> 1" in md
    pytest.importorskip("matplotlib")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "experiments", "plots.py"), "--results", str(tmp_path),
                        "--runs", str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "mqar_cpu-smoke.png").stat().st_size > 0


def test_time_budget_writes_partial_results(tmp_path):
    """A budget that is spent at once: nothing runs, the files say so and list every run that was not started."""
    p = _mqar("--out", str(tmp_path), "--time-budget", "1e-9", timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "mqar_cpu-smoke.json").read_text())
    assert res["status"].startswith("partial: time budget") and res["cells"] == [] and len(res["not_run"]) == 3
    assert "Not run: 3 runs" in (tmp_path / "mqar_cpu-smoke.md").read_text()


def test_vocab_override_is_recorded_and_checked(tmp_path):
    p = _mqar("--out", str(tmp_path), "--vocab", "128", "--time-budget", "1e-9", timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "mqar_cpu-smoke.json").read_text())
    assert res["cut"]["vocab"] == {"preset": 64, "run": 128}
    assert "vocab 64 -> 128" in (tmp_path / "mqar_cpu-smoke.md").read_text()
    bad = _mqar("--out", str(tmp_path), "--vocab", "8", timeout=120)
    assert bad.returncode == 2 and "needs vocab_size >= 10" in bad.stderr and "Traceback" not in bad.stderr


def _cell(model, lr, seed, acc):
    return {"model": model, "width": 64, "seq_len": 128, "kv_pairs": 8, "lr": lr, "seed": seed, "accuracy": acc,
            "final_loss": 1.0 - acc, "params": 10}


def test_summarize_best_lr_by_mean_over_common_seeds():
    sys.path.insert(0, ROOT)
    from experiments.mqar import summarize

    cells = [_cell("mdn", 1e-3, 0, 0.9), _cell("mdn", 1e-3, 1, 0.5),   # mean 0.7, best single seed 0.9
             _cell("mdn", 3e-3, 0, 0.8), _cell("mdn", 3e-3, 1, 0.8),   # mean 0.8: chosen
             _cell("gdn", 1e-3, 0, 0.6), _cell("gdn", 3e-3, 0, 0.5), _cell("gdn", 3e-3, 1, 1.0)]  # seed 1 only at 3e-3
    best = {b["model"]: b for b in summarize(cells)}
    m = best["mdn"]
    assert m["lr"] == 3e-3 and m["seeds"] == [0, 1] and m["accuracies"] == [0.8, 0.8] and m["accuracy"] == 0.8
    assert m["accuracy_std"] == 0.0 and m["mean_accuracy_by_lr"] == {"0.001": 0.7, "0.003": 0.8}
    g = best["gdn"]  # lrs compared on the common seed 0 only: 1e-3 wins; seed 1 of 3e-3 is not mixed in
    assert g["lr"] == 1e-3 and g["seeds"] == [0] and g["accuracies"] == [0.6] and g["n_seeds"] == 1


def test_runner_matches_plain_training_step():
    """The compiled-once Runner (lr in the optimizer state, task padded from T=32 to 64, LM head at the queries)
    trains exactly like the training stack's own step with the lr baked in, full logits and a [B, T] mask."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    sys.path.insert(0, ROOT)
    from experiments.common import model_dict
    from experiments.mqar import PRESETS, Runner
    from mdn_jax.model import CausalLM, ModelConfig
    from mdn_jax.train import sharding as shd
    from mdn_jax.train.config import TrainConfig
    from mdn_jax.train.state import init_state, make_setup
    from mdn_jax.train.step import make_train_step

    p = dict(PRESETS["cpu-smoke"], steps=3, layers=1)  # one layer: the equivalence does not depend on the depth
    lr, seed, task = 3e-3, 1, MQARConfig(vocab_size=64, num_kv_pairs=4, seq_len=32)
    runner = Runner("transformer", 16, 64, 8, p)
    state, losses = runner.train(task, lr, seed)

    mcfg = ModelConfig.from_dict(model_dict("transformer", 16, 1, 64, 32, 16, 16))
    tcfg = TrainConfig(model="transformer", steps=3, lr=lr, warmup_steps=1, batch_size=8, seq_len=32, seed=seed,
                       weight_decay=0.1)
    setup = make_setup(tcfg, shd.make_mesh(-1, 1, 1), lambda: CausalLM(mcfg, rngs=nnx.Rngs(seed)), mcfg)

    def masked_ce(model, b):
        logits = model(b["inputs"]).astype(jnp.float32)
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, b["targets"][..., None], -1)[..., 0]
        return jnp.sum(jnp.where(b["mask"], ce, 0.0)), jnp.sum(b["mask"]).astype(jnp.float32)

    keys = ("inputs", "targets", "mask")
    step, ref = make_train_step(setup, masked_ce, keys), init_state(setup)
    ref_losses = []
    for i in range(3):
        b = mqar_batch(task, 8, seed * 1_000_003 + i)
        ref, m = step(ref, {k: b[k] for k in keys})
        ref_losses.append(float(m["loss"]))
    np.testing.assert_allclose([x for _, x in losses], ref_losses, rtol=1e-5)
    for a, r in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ref["params"]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-6)
