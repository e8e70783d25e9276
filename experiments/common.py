"""Shared helpers of the experiment scripts: run metadata, device timing, model configs of matched size, result
files."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp


def run_info() -> dict:
    """Device, JAX version, date (UTC) and git commit of this run."""
    commit = os.environ.get("MDN_COMMIT")  # the GPU machine's copy of the tree has no .git
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        commit = None
    dev = jax.devices()[0]
    return {"device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}", "n_devices": jax.device_count(),
            "jax": jax.__version__, "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": commit}


def rel_errs(xs, ys) -> list[float]:
    """Relative Frobenius errors |x - y| / |y| (float32) of paired arrays."""
    errs = []
    for x, y in zip(xs, ys, strict=True):
        x, y = x.astype(jnp.float32), y.astype(jnp.float32)
        errs.append(float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y)))
    return errs


def probe(row: dict, fn, args, ref, flatten=tuple, reps=20) -> dict:
    """row with fn's rel_err against ref (flatten(fn(*args)) beside ref) and its queued ms; a lowering or compile
    failure is recorded in row['error'] (it is a result of the probe too)."""
    try:
        row["rel_err"] = rel_errs(flatten(fn(*args)), ref)
        row["ms"] = timeit_queued(fn, args, reps)
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
    return row


def emit_rows(rows, out_dir: str | None, name: str) -> list[dict]:
    """Print each row as a JSON line as it comes, then (with out_dir) write them all to out_dir/name.json."""
    done = []
    for r in rows:
        print(json.dumps(r), flush=True)
        done.append(r)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
            json.dump(done, f, indent=1)
    return done


def timeit_queued(fn, args, reps, groups=5):
    """Median over `groups` of the mean ms per call of `reps` calls queued back to back, waited for at the end.

    The host stays ahead of the device, so this is the device's time per call, as event timing of
    back-to-back launches (triton.testing.do_bench, used for ANCHORS.md) measures it.
    """
    jax.block_until_ready(fn(*args))
    means = []
    for _ in range(groups):
        t0 = time.perf_counter()
        outs = [fn(*args) for _ in range(reps)]
        jax.block_until_ready(outs)
        means.append((time.perf_counter() - t0) / reps)
        del outs
    return statistics.median(means) * 1e3


def model_dict(kind: str, width: int, layers: int, vocab: int, max_len: int, head_dim: int = 64,
               chunk_size: int = 64, tie: bool = False) -> dict:
    """A ModelConfig dict for kind 'mdn' | 'gdn' | 'transformer' of hidden size `width`.

    MDN/GDN: num_heads = max(1, width // (2 head_dim)) key heads of head_dim (key_dim ~ width/2), expand_v 2, so
    the mixer has ~4 width^2 parameters like attention's q, k, v, o; GDN is the same layer with mu = 0.
    Transformer: max(1, width // head_dim) heads. All: SwiGLU of intermediate size 8/3 width (rounded to 8).
    """
    hd = min(head_dim, width)
    common = dict(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, tie_word_embeddings=tie,
                  intermediate_size=max(8, int(round(width * 8 / 3 / 8)) * 8), max_position_embeddings=max_len,
                  chunk_size=chunk_size, initializer_range=0.02)
    if kind == "transformer":
        return dict(common, model_type="transformer", num_heads=max(1, width // hd), head_dim=hd)
    nh = max(1, width // (2 * hd))
    kd = min(hd, max(8, width // (2 * nh)))
    mt = {"mdn": "momentum_deltanet", "gdn": "gated_deltanet"}[kind]
    return dict(common, model_type=mt, num_heads=nh, head_dim=kd, expand_v=2.0)


def write_results(out_dir: str, name: str, payload: dict, markdown: str) -> tuple[str, str]:
    """Write `<name>.json` and `<name>.md` under out_dir (each to a temporary file, then renamed: a run stopped
    while writing leaves the previous version whole); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    jp, mp = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.md")
    for path, text in ((jp, json.dumps(payload, indent=1)), (mp, markdown)):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return jp, mp
