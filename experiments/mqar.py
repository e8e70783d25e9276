"""MQAR (multi-query associative recall, Zoology) with 2-layer MDN, GDN (mu = 0) and Transformer models.

    python experiments/mqar.py --preset cpu-smoke      # a few steps, tiny, CPU (CI)
    python experiments/mqar.py --preset gpu            # the grid: widths x (seq_len, kv pairs) x lrs x models

For every (model, width, seq_len, lr) a fresh model is trained on freshly generated batches
(`mdn_jax.data.mqar`, seeded by step) with the training stack's optimizer, state and jitted step
(`make_setup` / `init_state` / `make_train_step` with a masked cross-entropy on the query answers), then scored on
a fixed held-out set: accuracy = fraction of query positions whose argmax is the bound value. Per (model, width,
seq_len) the best learning rate is reported (as Zoology does). Writes experiments/results/mqar_<preset>.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.common import model_dict, run_info, write_results  # noqa: E402
from mdn_jax.data.mqar import MQARConfig, mqar_batch  # noqa: E402
from mdn_jax.model import CausalLM, ModelConfig, count_params  # noqa: E402
from mdn_jax.train import sharding as shd  # noqa: E402
from mdn_jax.train.config import TrainConfig  # noqa: E402
from mdn_jax.train.state import init_state, make_setup  # noqa: E402
from mdn_jax.train.step import make_train_step  # noqa: E402

PRESETS = {
    # CI smoke: one tiny cell per model, a few steps (accuracy is meaningless, the plumbing is tested)
    "cpu-smoke": dict(models=["mdn", "gdn", "transformer"], widths=[16], tasks=[(32, 4)], lrs=[3e-3], vocab=64,
                      steps=3, batch=8, test_examples=32, layers=2, head_dim=16, chunk_size=16),
    # the grid for one GPU (Zoology-like: vocab 8192, kv pairs ~ T/16..T/8); not run in this session
    "gpu": dict(models=["mdn", "gdn", "transformer"], widths=[64, 128, 256], tasks=[(64, 4), (128, 8), (256, 16),
                (512, 32)], lrs=[1e-3, 3e-3], vocab=8192, steps=2000, batch=64, test_examples=1000, layers=2,
                head_dim=64, chunk_size=64),
}

BATCH_KEYS = ("inputs", "targets", "mask")


def masked_ce(model, batch):
    """(loss sum, count) of cross-entropy at the query positions. batch: inputs/targets [B, T] int32, mask bool."""
    logits = model(batch["inputs"]).astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, batch["targets"][..., None], axis=-1)[..., 0]
    m = batch["mask"]
    return jnp.sum(jnp.where(m, lse - tgt, 0.0)), jnp.sum(m).astype(jnp.float32)


def train_cell(kind: str, width: int, seq_len: int, kv: int, lr: float, p: dict, seed: int = 0) -> dict:
    """Train one model on MQAR(seq_len, kv) and return {accuracy, final_loss, params, seconds, ...}."""
    mcfg = ModelConfig.from_dict(model_dict(kind, width, p["layers"], p["vocab"], seq_len, p["head_dim"],
                                            p["chunk_size"]))
    tcfg = TrainConfig(model=kind, steps=p["steps"], lr=lr, warmup_steps=max(1, p["steps"] // 10),
                       batch_size=p["batch"], seq_len=seq_len, seed=seed, weight_decay=0.1)
    mesh = shd.make_mesh(-1, 1, 1)
    setup = make_setup(tcfg, mesh, lambda: CausalLM(mcfg, rngs=nnx.Rngs(seed)), mcfg)
    state = init_state(setup)
    step = make_train_step(setup, masked_ce, BATCH_KEYS)
    task = MQARConfig(vocab_size=p["vocab"], num_kv_pairs=kv, seq_len=seq_len)
    t0 = time.perf_counter()
    losses = []
    for i in range(p["steps"]):
        b = mqar_batch(task, p["batch"], seed=seed * 1_000_003 + i)
        state, m = step(state, {k: b[k] for k in BATCH_KEYS})
        if i == p["steps"] - 1 or i % max(1, p["steps"] // 20) == 0:
            losses.append((i + 1, float(m["loss"])))
    train_s = time.perf_counter() - t0
    predict = jax.jit(lambda prm, x: jnp.argmax(setup.merge(prm)(x), axis=-1))
    test = mqar_batch(task, p["test_examples"], seed=2**31 - 1 - seed)
    correct, total = 0, 0
    for a in range(0, p["test_examples"], p["batch"]):
        x = test["inputs"][a:a + p["batch"]]
        pred = np.asarray(predict(state["params"], np.pad(x, ((0, p["batch"] - len(x)), (0, 0))))[:len(x)])
        msk = test["mask"][a:a + p["batch"]]
        correct += int((pred[msk] == test["targets"][a:a + p["batch"]][msk]).sum())
        total += int(msk.sum())
    return {"model": kind, "width": width, "seq_len": seq_len, "kv_pairs": kv, "lr": lr, "seed": seed,
            "accuracy": correct / total, "final_loss": losses[-1][1], "loss_curve": losses,
            "params": count_params(mcfg)["total"], "train_seconds": train_s, "steps": p["steps"],
            "batch": p["batch"], "skipped": int(state["skipped"])}


def best_by_lr(cells: list[dict]) -> list[dict]:
    """Per (model, width, seq_len): the cell of highest accuracy over learning rates (and seeds)."""
    best: dict[tuple, dict] = {}
    for c in cells:
        k = (c["model"], c["width"], c["seq_len"])
        if k not in best or c["accuracy"] > best[k]["accuracy"]:
            best[k] = c
    return list(best.values())


def markdown(preset: str, p: dict, info: dict, best: list[dict]) -> str:
    tasks = sorted({(c["seq_len"], c["kv_pairs"]) for c in best})
    lines = [f"# MQAR, preset `{preset}`", "",
             f"Device {info['device']}, {info['date']}, commit {info['commit']}. vocab {p['vocab']}, "
             f"{p['layers']} layers, {p['steps']} steps x batch {p['batch']}, lrs {p['lrs']} (best shown), "
             f"{p['test_examples']} test examples.", "",
             "| model | width | params | " + " | ".join(f"T={t}, kv={k}" for t, k in tasks) + " |",
             "|---|---|---|" + "---|" * len(tasks)]
    for kind in p["models"]:
        for w in p["widths"]:
            row = {(c["seq_len"], c["kv_pairs"]): c for c in best if c["model"] == kind and c["width"] == w}
            if not row:
                continue
            params = next(iter(row.values()))["params"]
            accs = [f"{row[t]['accuracy']:.3f}" if t in row else "-" for t in tasks]
            lines.append(f"| {kind} | {w} | {params:,} | " + " | ".join(accs) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--models", nargs="+", choices=["mdn", "gdn", "transformer"])
    ap.add_argument("--widths", nargs="+", type=int)
    ap.add_argument("--tasks", nargs="+", help="seq_len:kv_pairs, e.g. 128:8")
    ap.add_argument("--lrs", nargs="+", type=float)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = ap.parse_args(argv)
    p = dict(PRESETS[args.preset])
    for k in ("models", "widths", "lrs", "steps"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    if args.tasks:
        p["tasks"] = [tuple(int(x) for x in t.split(":")) for t in args.tasks]
    info = run_info()
    cells = []
    for seq_len, kv in p["tasks"]:
        for w in p["widths"]:
            for kind in p["models"]:
                for lr in p["lrs"]:
                    for seed in args.seeds:
                        c = train_cell(kind, w, seq_len, kv, lr, p, seed)
                        print(f"{kind:>11} width {w:4d} T {seq_len:4d} kv {kv:3d} lr {lr:.0e} seed {seed}: "
                              f"acc {c['accuracy']:.3f} loss {c['final_loss']:.3f} ({c['train_seconds']:.1f}s)",
                              flush=True)
                        cells.append(c)
    best = best_by_lr(cells)
    payload = {"experiment": "mqar", "preset": args.preset, "config": {k: v for k, v in p.items()}, **info,
               "seeds": args.seeds, "cells": cells, "best": best}
    jp, mp = write_results(args.out, f"mqar_{args.preset}", payload, markdown(args.preset, p, info, best))
    print(f"wrote {jp} and {mp}")
    return 0


if __name__ == "__main__":
    assert dataclasses  # (kept for type-checkers reading MQARConfig fields)
    sys.exit(main())
