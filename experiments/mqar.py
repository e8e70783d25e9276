"""MQAR (multi-query associative recall, Zoology) with 2-layer MDN, GDN (mu = 0) and Transformer models.

    python experiments/mqar.py --preset cpu-smoke      # a few steps, tiny, CPU (CI)
    python experiments/mqar.py --preset cpu --seeds 0 1 2 --model-seeds transformer=0   # a small real grid, CPU
    python experiments/mqar.py --preset gpu            # the grid: widths x (seq_len, kv pairs) x lrs x models
    python experiments/mqar.py --preset gpu --widths 64 128 --tasks 256:16 512:32 --steps 800 \\
        --seeds 0 1 --model-seeds transformer=0 --time-budget 215      # a cut of it (say what was cut)

For every (model, width, task, lr, seed) a fresh model is trained on freshly generated batches
(`mdn_jax.data.mqar`, seeded by seed and step) with the training stack's optimizer, state and jitted step
(`make_setup` / `make_train_step` with a cross-entropy on the query answers), then scored on a fixed held-out set:
accuracy = fraction of query positions whose argmax is the bound value.

Compiled once per (model, width): the train step, the initialisation and the prediction are compiled ahead of
time at the longest task's seq_len with as many query slots as the most kv pairs; shorter tasks are padded at the
end (a causal model does not see what follows, so this is the same computation on the real positions), the
learning rate is a runtime value in the optimizer state (AdamW with peak lr 1 followed by a multiplication by the
lr: the update, weight decay included, is linear in the lr) and so is the seed. `--no-pad` compiles per seq_len.
The LM head is applied at the query positions only (the loss is only there).

Per (model, width, task) the learning rate of the highest mean accuracy over seeds is reported (as Zoology takes
the best lr) with the accuracy of every seed at that lr and their mean, min, max and standard deviation; the lrs
are compared on the seeds that all of them ran. Every run is listed too. The results are rewritten after every
run, so a run that is stopped leaves what it finished; `--time-budget` stops before a run that would not end in
time. Order: the whole grid with the first seed of each model, then the second seed, ... Writes
<out>/mqar_<preset>.{json,md} (default out: experiments/results).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.common import model_dict, run_info, write_results  # noqa: E402
from mdn_jax.data.mqar import MQARConfig, mqar_batch  # noqa: E402
from mdn_jax.model import CausalLM, ModelConfig, count_params  # noqa: E402
from mdn_jax.train import sharding as shd  # noqa: E402
from mdn_jax.train.config import TrainConfig  # noqa: E402
from mdn_jax.train.state import make_setup  # noqa: E402
from mdn_jax.train.step import make_train_step  # noqa: E402

PRESETS = {
    # CI smoke: one tiny cell per model, a few steps (accuracy is meaningless, the plumbing is tested)
    "cpu-smoke": dict(models=["mdn", "gdn", "transformer"], widths=[16], tasks=[(32, 4)], lrs=[3e-3], vocab=64,
                      steps=3, batch=8, test_examples=32, layers=2, head_dim=16, chunk_size=16),
    # a small real grid for a 2-core CPU (~15 min with 3 seeds of MDN/GDN): a small state (one head of key dim 16)
    # against 8 and 16 kv pairs, vocab 256 so that 1500 steps leave the loss plateau (at vocab 8192, 800 steps did
    # not, on a GPU)
    "cpu": dict(models=["mdn", "gdn", "transformer"], widths=[32], tasks=[(64, 8), (64, 16)], lrs=[1e-3, 3e-3],
                vocab=256, steps=1500, batch=64, test_examples=500, layers=2, head_dim=16, chunk_size=32),
    # the grid for one GPU (Zoology-like: vocab 8192, kv pairs ~ T/16); 72 runs, more than one session's GPU time
    "gpu": dict(models=["mdn", "gdn", "transformer"], widths=[64, 128, 256], tasks=[(64, 4), (128, 8), (256, 16),
                (512, 32)], lrs=[1e-3, 3e-3], vocab=8192, steps=2000, batch=64, test_examples=1000, layers=2,
                head_dim=64, chunk_size=64),
}
MODELS = ("mdn", "gdn", "transformer")
BATCH_KEYS = ("inputs", "qpos", "answer", "qmask")


def hidden(model: CausalLM, tokens: jax.Array) -> jax.Array:
    """The final normed hidden states [B, T, D] of `CausalLM.__call__` (no cache, no remat) without the LM head."""
    x = model.embeddings(tokens).astype(jnp.dtype(model.config.dtype))
    for block in model.layers:
        x = block(x)
    return model.norm(x)


def query_logits(model: CausalLM, inputs: jax.Array, qpos: jax.Array) -> jax.Array:
    """Logits [B, n, vocab] (float32) at the positions qpos [B, n] of inputs [B, T]."""
    h = jnp.take_along_axis(hidden(model, inputs), qpos[..., None], axis=1)
    return model.logits(h).astype(jnp.float32)


def query_ce(model, batch):
    """(loss sum, count) of cross-entropy at the query slots. batch: inputs [B, T]; qpos, answer [B, n] int32;
    qmask [B, n] bool (False on padding slots)."""
    logits = query_logits(model, batch["inputs"], batch["qpos"])
    lse = jax.nn.logsumexp(logits, axis=-1)
    tgt = jnp.take_along_axis(logits, batch["answer"][..., None], axis=-1)[..., 0]
    m = batch["qmask"]
    return jnp.sum(jnp.where(m, lse - tgt, 0.0)), jnp.sum(m).astype(jnp.float32)


def query_batch(task: MQARConfig, num: int, seed: int, seq_len: int, n_slots: int) -> dict[str, np.ndarray]:
    """An MQAR batch in the layout of `query_ce`: inputs padded at the end to seq_len, the kv query positions (in
    order) and their answers in the first slots of n_slots, qmask True there."""
    b = mqar_batch(task, num, seed)
    kv = task.num_kv_pairs
    pos = np.nonzero(b["mask"])[1].reshape(num, kv).astype(np.int32)  # each row has exactly kv queries
    out = {"inputs": np.zeros((num, seq_len), np.int32), "qpos": np.zeros((num, n_slots), np.int32),
           "answer": np.zeros((num, n_slots), np.int32), "qmask": np.zeros((num, n_slots), bool)}
    out["inputs"][:, :task.seq_len] = b["inputs"]
    out["qpos"][:, :kv] = pos
    out["answer"][:, :kv] = np.take_along_axis(b["targets"], pos, axis=1)
    out["qmask"][:, :kv] = True
    return out


def scale_by_lr_state() -> optax.GradientTransformation:
    """updates * lr, where lr is this transform's state (a float32 scalar, set at initialisation): after an
    optimizer of peak lr 1 this is that optimizer at peak lr `lr`, with the lr a runtime value."""
    return optax.GradientTransformation(
        lambda params: jnp.ones((), jnp.float32),
        lambda updates, lr, params=None: (jax.tree.map(lambda u: u * lr.astype(u.dtype), updates), lr))


class Runner:
    """Train step, initialisation and prediction for one (model, width), compiled once, reused for every task
    (up to seq_len tokens and n_slots queries), learning rate and seed."""

    def __init__(self, kind: str, width: int, seq_len: int, n_slots: int, p: dict):
        self.kind, self.width, self.seq_len, self.n_slots, self.p = kind, width, seq_len, n_slots, p
        self.mcfg = ModelConfig.from_dict(model_dict(kind, width, p["layers"], p["vocab"], seq_len, p["head_dim"],
                                                     p["chunk_size"]))
        # lr 1: the schedule's shape (warm-up, cosine to lr_min_ratio); the lr itself multiplies the update
        tcfg = TrainConfig(model=kind, steps=p["steps"], lr=1.0, warmup_steps=max(1, p["steps"] // 10),
                           batch_size=p["batch"], seq_len=seq_len, weight_decay=0.1)
        mesh = shd.make_mesh(-1, 1, 1)
        base = make_setup(tcfg, mesh, lambda: CausalLM(self.mcfg, rngs=nnx.Rngs(0)), self.mcfg)
        rep = shd.replicated(mesh)
        self.setup = dataclasses.replace(
            base, tx=optax.chain(base.tx, scale_by_lr_state()),
            state_shardings={**base.state_shardings, "opt_state": (base.state_shardings["opt_state"], rep)})
        self.mesh = mesh
        t0 = time.perf_counter()
        scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=rep)  # noqa: E731
        init = jax.jit(self._init, in_shardings=(rep, rep), out_shardings=self.setup.state_shardings)
        with self._mesh_ctx():  # as init_state: the model's initialisers under the mesh
            self.init = init.lower(scalar(jnp.int32), scalar(jnp.float32)).compile()
            abstract = jax.eval_shape(self._init, jnp.int32(0), jnp.float32(0))
        abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                self.setup.state_shardings)
        bsh = shd.batch_sharding(mesh)
        B = p["batch"]
        batch = {"inputs": jax.ShapeDtypeStruct((B, seq_len), jnp.int32, sharding=bsh),
                 "qpos": jax.ShapeDtypeStruct((B, n_slots), jnp.int32, sharding=bsh),
                 "answer": jax.ShapeDtypeStruct((B, n_slots), jnp.int32, sharding=bsh),
                 "qmask": jax.ShapeDtypeStruct((B, n_slots), jnp.bool_, sharding=bsh)}
        self.step = make_train_step(self.setup, query_ce, BATCH_KEYS).lower(abstract, batch).compile()
        predict = jax.jit(lambda prm, x, q: jnp.argmax(query_logits(self.setup.merge(prm), x, q), axis=-1),
                          in_shardings=(self.setup.state_shardings["params"], bsh, bsh), out_shardings=bsh)
        self.predict = predict.lower(abstract["params"], batch["inputs"], batch["qpos"]).compile()
        self.compile_seconds = time.perf_counter() - t0
        self.params = count_params(self.mcfg)["total"]
        self.last_run_seconds = 0.0

    def _mesh_ctx(self):
        return jax.sharding.use_mesh(self.mesh) if hasattr(jax.sharding, "use_mesh") else contextlib.nullcontext()

    def _init(self, seed, lr):
        """The state of `init_state` for model seed `seed` (a traced int32) and learning rate `lr`."""
        model = CausalLM(self.mcfg, rngs=nnx.Rngs(jax.random.key(seed)))
        params = nnx.split(model, nnx.Param, ...)[1].to_pure_dict()
        params = jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
        inner, _ = self.setup.tx.init(params)
        return {"params": params, "opt_state": (inner, lr.astype(jnp.float32)), "step": jnp.zeros((), jnp.int32),
                "skipped": jnp.zeros((), jnp.int32), "rng": jax.random.key_data(jax.random.key(seed + 1))}

    def train(self, task: MQARConfig, lr: float, seed: int) -> tuple[dict, list]:
        """(final state, [(step, loss)...]) of training on `task` at learning rate lr from seed; batch i of the
        run is `mqar_batch(task, batch, seed * 1_000_003 + i)`."""
        p, B = self.p, self.p["batch"]
        state = self.init(np.int32(seed), np.float32(lr))
        losses = []
        for i in range(p["steps"]):
            b = query_batch(task, B, seed * 1_000_003 + i, self.seq_len, self.n_slots)
            state, m = self.step(state, b)
            if i == p["steps"] - 1 or i % max(1, p["steps"] // 20) == 0:
                losses.append((i + 1, float(m["loss"])))
        return state, losses

    def run(self, seq_len: int, kv: int, lr: float, seed: int) -> dict:
        """Train on MQAR(seq_len, kv) at learning rate lr from seed, score; returns the run's record."""
        p, B = self.p, self.p["batch"]
        task = MQARConfig(vocab_size=p["vocab"], num_kv_pairs=kv, seq_len=seq_len)
        t0 = time.perf_counter()
        state, losses = self.train(task, lr, seed)
        train_s = time.perf_counter() - t0
        test = query_batch(task, p["test_examples"], 2**31 - 1 - seed, self.seq_len, self.n_slots)
        correct, total = 0, 0
        for a in range(0, p["test_examples"], B):
            sl = {k: v[a:a + B] for k, v in test.items()}
            n = len(sl["inputs"])
            x, q = (np.pad(sl[k], ((0, B - n), (0, 0))) for k in ("inputs", "qpos"))
            pred = np.asarray(self.predict(state["params"], x, q))[:n]
            correct += int((pred == sl["answer"])[sl["qmask"]].sum())
            total += int(sl["qmask"].sum())
        self.last_run_seconds = time.perf_counter() - t0
        return {"model": self.kind, "width": self.width, "seq_len": seq_len, "kv_pairs": kv, "lr": lr, "seed": seed,
                "accuracy": correct / total, "final_loss": losses[-1][1], "loss_curve": losses,
                "params": self.params, "train_seconds": train_s, "run_seconds": self.last_run_seconds,
                "steps": p["steps"], "batch": B, "compiled_seq_len": self.seq_len, "skipped": int(state["skipped"])}


def summarize(cells: list[dict]) -> list[dict]:
    """Per (model, width, seq_len, kv_pairs): the lr of the highest mean accuracy over the seeds that every lr of
    the group ran, with that lr's per-seed accuracies, mean, min, max, std (sample std; 0 for one seed)."""
    groups: dict[tuple, dict[float, dict[int, dict]]] = {}
    for c in cells:
        k = (c["model"], c["width"], c["seq_len"], c["kv_pairs"])
        groups.setdefault(k, {}).setdefault(c["lr"], {})[c["seed"]] = c
    out = []
    for (model, width, T, kv), by_lr in groups.items():
        common = sorted(set.intersection(*(set(s) for s in by_lr.values())))
        if not common:  # no seed ran at every lr: compare on what each ran
            common = None
        means = {}
        for lr, by_seed in by_lr.items():
            seeds = common or sorted(by_seed)
            means[lr] = statistics.fmean(by_seed[s]["accuracy"] for s in seeds)
        lr = max(sorted(means), key=lambda x: means[x])
        seeds = common or sorted(by_lr[lr])
        accs = [by_lr[lr][s]["accuracy"] for s in seeds]
        ref = by_lr[lr][seeds[0]]
        out.append({"model": model, "width": width, "seq_len": T, "kv_pairs": kv, "lr": lr, "seeds": seeds,
                    "accuracies": accs, "accuracy": statistics.fmean(accs), "accuracy_min": min(accs),
                    "accuracy_max": max(accs), "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    "n_seeds": len(accs), "mean_accuracy_by_lr": {str(k): v for k, v in sorted(means.items())},
                    "final_loss": statistics.fmean(by_lr[lr][s]["final_loss"] for s in seeds),
                    "params": ref["params"]})
    return out


def _fmt(v) -> str:
    """Lists of tasks as T:kv, dicts as k: v, the rest as str."""
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list | tuple) and v and isinstance(v[0], list | tuple):
        return "[" + " ".join(f"{a}:{b}" for a, b in v) + "]"
    return str(v).replace(" ", "")


def _acc_cell(b: dict) -> str:
    if b["n_seeds"] == 1:
        return f"{b['accuracy']:.3f} (lr {b['lr']:.0e})"
    per = ", ".join(f"{a:.3f}" for a in b["accuracies"])
    return f"{b['accuracy']:.3f} [{per}] (lr {b['lr']:.0e})"


def markdown(preset: str, p: dict, info: dict, cells: list[dict], best: list[dict], extra: dict) -> str:
    tasks = sorted({(c["seq_len"], c["kv_pairs"]) for c in best})
    seeds = extra["seeds_per_model"]
    lines = [f"# MQAR, preset `{preset}`", "",
             f"Device {info['device']}, {info['date']}, commit {info['commit']}. vocab {p['vocab']}, "
             f"{p['layers']} layers, {p['steps']} steps x batch {p['batch']}, lrs {p['lrs']}, "
             f"{p['test_examples']} test examples, seeds " + ", ".join(f"{m} {s}" for m, s in seeds.items()) + ".",
             ""]
    if extra["cut"]:
        lines += ["Differs from the preset: " + "; ".join(f"{k} {_fmt(v['preset'])} -> {_fmt(v['run'])}"
                                                          for k, v in extra["cut"].items()) + ".", ""]
    if extra["padded_to_seq_len"] and len(tasks) > 1:
        lines += [f"Every task ran in models compiled at T={extra['padded_to_seq_len']} (shorter sequences padded "
                  "at the end; the models are causal, so the real positions compute the same).", ""]
    lines += [f"Status: {extra['status']} ({len(cells)} runs, {extra['wall_seconds']:.0f} s).", "",
              "Accuracy at the best lr of each (model, width, task): the lr with the highest mean accuracy over "
              "seeds (lrs compared on the seeds all of them ran); shown the mean, then [the accuracy of each seed] "
              "when there are several (their range is the seed spread).", "",
              "| model | width | params | " + " | ".join(f"T={t}, kv={k}" for t, k in tasks) + " |",
              "|---|---|---|" + "---|" * len(tasks)]
    for kind in p["models"]:
        for w in p["widths"]:
            row = {(c["seq_len"], c["kv_pairs"]): c for c in best if c["model"] == kind and c["width"] == w}
            if not row:
                continue
            params = next(iter(row.values()))["params"]
            lines.append(f"| {kind} | {w} | {params:,} | " + " | ".join(_acc_cell(row[t]) if t in row else "-"
                                                                        for t in tasks) + " |")
    idx = {(b["model"], b["width"], b["seq_len"], b["kv_pairs"]): b for b in best}
    diffs = []
    for w in p["widths"]:
        for t, k in tasks:
            a, g = idx.get(("mdn", w, t, k)), idx.get(("gdn", w, t, k))
            if a and g:
                spread = max(a["accuracy_max"] - a["accuracy_min"], g["accuracy_max"] - g["accuracy_min"])
                diffs.append(f"| {w} | T={t}, kv={k} | {a['accuracy'] - g['accuracy']:+.3f} | "
                             f"{a['n_seeds']} / {g['n_seeds']} | {spread:.3f} |")
    if diffs:
        lines += ["", "MDN - GDN (mean accuracy at each one's best lr) against the seed spread (the larger of the two "
                  "models' max - min over seeds; 0 with one seed, i.e. unknown):", "",
                  "| width | task | MDN - GDN | seeds (MDN / GDN) | seed spread |", "|---|---|---|---|---|"] + diffs
    lines += ["", "## All runs", "", "| model | width | T | kv | lr | seed | accuracy | final loss | train s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['model']} | {c['width']} | {c['seq_len']} | {c['kv_pairs']} | {c['lr']:.0e} | "
                     f"{c['seed']} | {c['accuracy']:.3f} | {c['final_loss']:.3f} | {c['train_seconds']:.1f} |")
    if extra["compile_seconds"]:
        lines += ["", "Compile (train step + init + predict, once per model and width): " + ", ".join(
            f"{k} {v:.1f} s" for k, v in extra["compile_seconds"].items()) + "."]
    if extra["not_run"]:
        lines += ["", f"Not run: {len(extra['not_run'])} runs: " + "; ".join(
            f"{m} w{w} T{t} kv{k} lr {lr:.0e} seed {s}" for m, w, t, k, lr, s in extra["not_run"]) + "."]
    return "\n".join(lines) + "\n"


def parse_model_seeds(specs: list[str] | None, models: list[str], seeds: list[int]) -> dict[str, list[int]]:
    """{model: seeds}: --seeds for every model, `MODEL=S1,S2` entries override one model's."""
    out = {m: list(seeds) for m in models}
    for spec in specs or []:
        name, _, val = spec.partition("=")
        if name not in MODELS or not val:
            raise SystemExit(f"--model-seeds: expected MODEL=S[,S...] with MODEL in {MODELS}, got {spec!r}")
        if name in out:
            out[name] = [int(s) for s in val.split(",")]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-smoke")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--models", nargs="+", choices=list(MODELS))
    ap.add_argument("--widths", nargs="+", type=int)
    ap.add_argument("--tasks", nargs="+", help="seq_len:kv_pairs, e.g. 128:8")
    ap.add_argument("--lrs", nargs="+", type=float)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--layers", type=int, help="layers of every model (default: the preset's)")
    ap.add_argument("--vocab", type=int, help="vocabulary size (keys from the lower half, values from the upper)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--model-seeds", nargs="+", metavar="MODEL=S[,S]",
                    help="seeds of one model instead of --seeds, e.g. transformer=0")
    ap.add_argument("--time-budget", type=float, default=0.0,
                    help="seconds: start no run (or compilation) that the times so far say would end later; 0: none")
    ap.add_argument("--no-pad", action="store_true", help="compile per seq_len instead of padding to the longest")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    p = dict(PRESETS[args.preset])
    for k in ("models", "widths", "lrs", "steps", "layers", "vocab"):
        if getattr(args, k) is not None:
            p[k] = getattr(args, k)
    if args.tasks:
        p["tasks"] = [tuple(int(x) for x in t.split(":")) for t in args.tasks]
    for T, kv in p["tasks"]:
        try:
            MQARConfig(vocab_size=p["vocab"], num_kv_pairs=kv, seq_len=T).validate()
        except ValueError as e:
            ap.error(f"task {T}:{kv} with vocab {p['vocab']}: {e}")
    seeds = parse_model_seeds(args.model_seeds, p["models"], args.seeds)
    preset = PRESETS[args.preset]
    cut = {k: {"preset": preset[k], "run": p[k]}
           for k in ("models", "widths", "tasks", "lrs", "steps", "layers", "vocab") if p[k] != preset[k]}
    if any(s != [0] for s in seeds.values()):
        cut["seeds"] = {"preset": [0], "run": seeds}
    info = run_info()

    # the order: the first seed of every model over the whole grid, then the second seed, ...
    plan = [(kind, w, T, kv, lr, seeds[kind][si])
            for si in range(max(len(s) for s in seeds.values())) for w in p["widths"] for kind in p["models"]
            if si < len(seeds[kind]) for T, kv in p["tasks"] for lr in p["lrs"]]
    T_max, kv_max = max(T for T, _ in p["tasks"]), max(kv for _, kv in p["tasks"])
    group_T = (lambda T: T) if args.no_pad else (lambda T: T_max)
    runners: dict[tuple, Runner] = {}
    cells: list[dict] = []
    extra = {"seeds_per_model": seeds, "cut": cut, "status": "running", "compile_seconds": {}, "not_run": [],
             "wall_seconds": 0.0, "padded_to_seq_len": None if args.no_pad else T_max}

    def write(status: str):
        extra["status"], extra["wall_seconds"] = status, time.perf_counter() - t_start
        best = summarize(cells)
        payload = {"experiment": "mqar", "preset": args.preset, "config": dict(p), **info, **extra,
                   "seeds": args.seeds, "cells": cells, "best": best}
        return write_results(args.out, f"mqar_{args.preset}", payload,
                             markdown(args.preset, p, info, cells, best, extra))

    class Stopped(Exception):
        pass

    def on_term(signum, frame):
        raise Stopped()

    signal.signal(signal.SIGTERM, on_term)  # `timeout`: write what was finished, say it was stopped
    try:
        status = _run_plan(plan, runners, cells, extra, p, args, group_T, kv_max, t_start, write)
    except Stopped:
        extra["not_run"] = plan[len(cells):]
        status = f"partial: stopped by SIGTERM during run {len(cells) + 1} of {len(plan)}"
        print(status, flush=True)
    jp, mp = write(status)
    print(f"wrote {jp} and {mp}")
    return 0


def _run_plan(plan, runners, cells, extra, p, args, group_T, kv_max, t_start, write) -> str:
    """Run the plan in order (appending to cells, writing after each run); returns the status."""
    for i, (kind, w, T, kv, lr, seed) in enumerate(plan):
        key = (kind, w, group_T(T))
        r = runners.get(key)
        if args.time_budget > 0:
            same = [x for x in runners.values() if x.kind == kind] or list(runners.values())
            est = r.last_run_seconds if r else max((x.compile_seconds + x.last_run_seconds for x in same), default=0)
            if time.perf_counter() - t_start + est > args.time_budget:
                extra["not_run"] = plan[i:]
                status = (f"partial: time budget {args.time_budget:.0f} s reached, {len(plan) - i} of {len(plan)} "
                          "runs not started")
                print(status, flush=True)
                return status
        if r is None:
            n_slots = max(k for t, k in p["tasks"] if group_T(t) == key[2]) if args.no_pad else kv_max
            r = runners[key] = Runner(kind, w, key[2], n_slots, p)
            extra["compile_seconds"][f"{kind} w{w} T{key[2]}"] = r.compile_seconds
            print(f"{kind:>11} width {w:4d}: compiled at T {key[2]} ({r.compile_seconds:.1f}s)", flush=True)
        c = r.run(T, kv, lr, seed)
        print(f"{kind:>11} width {w:4d} T {T:4d} kv {kv:3d} lr {lr:.0e} seed {seed}: acc {c['accuracy']:.3f} "
              f"loss {c['final_loss']:.3f} ({c['train_seconds']:.1f}s) [{i + 1}/{len(plan)}, "
              f"{time.perf_counter() - t_start:.0f}s]", flush=True)
        cells.append(c)
        write("running")
    return "complete"


if __name__ == "__main__":
    sys.exit(main())
