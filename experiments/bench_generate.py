"""Generation benchmark: decode throughput, time to first token, and cache memory (issue 6's GPU figures).

Usage (GPU): python experiments/bench_generate.py [--config momentum_deltanet_400M]
CPU smoke:   python experiments/bench_generate.py --config tiny_mdn --batches 1,2 --prompt-len 32 \
                 --new-tokens 8 --ttft 64 --out /tmp/bg
Random weights (speed does not depend on them). Decode tokens/s = B (N - 1) / (t(N new) - t(1 new)) with the
fully jitted loop (one compile per batch: max_new_tokens is a runtime value). TTFT = jitted prefill of one
prompt. Cache memory = bytes of `init_cache(1, max_len)` against a Transformer KV cache of the same depth and
width in bf16 (2 x layers x max_len x hidden x 2 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.common import run_info
from mdn_jax.inference.generate import generate_tokens
from mdn_jax.model import build_model


def _median_s(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cache_bytes(model, max_len: int) -> int:
    shapes = jax.eval_shape(lambda: model.init_cache(1, max_len))
    return int(sum(np.prod(s.shape) * s.dtype.itemsize for s in jax.tree.leaves(shapes)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="momentum_deltanet_400M")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype of the model")
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--prompt-len", type=int, default=2048)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--ttft", default="8192,32768", help="prompt lengths for time to first token")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="experiments/results")
    a = ap.parse_args()
    model = build_model(a.config, dtype=a.dtype)
    cfg = model.config
    rng = np.random.default_rng(0)
    rows = []
    max_len = a.prompt_len + a.new_tokens
    for B in (int(b) for b in a.batches.split(",")):
        prompts = rng.integers(0, cfg.vocab_size, (B, a.prompt_len)).tolist()

        def gen(n, prompts=prompts):
            return generate_tokens(model, prompts, max_new_tokens=n, max_len=max_len, prefill_chunk=a.prompt_len)

        t_one, t_all = _median_s(lambda: gen(1), a.reps), _median_s(lambda: gen(a.new_tokens), a.reps)
        dt = t_all - t_one  # None below: the decode steps took less than the timing noise
        row = dict(kind="decode", batch=B, prompt_len=a.prompt_len, new_tokens=a.new_tokens,
                   decode_tokens_per_s=B * (a.new_tokens - 1) / dt if dt > 0 else None,
                   ms_per_step=dt / (a.new_tokens - 1) * 1e3 if dt > 0 else None, prefill_and_first_s=t_one)
        print(json.dumps(row), flush=True)
        rows.append(row)
    graphdef, state = nnx.split(model)
    for L in (int(n) for n in a.ttft.split(",")):
        @jax.jit
        def prefill(state, tokens, L=L):
            m = nnx.merge(graphdef, state)
            logits, _ = m.prefill(tokens, m.init_cache(1, L))
            return logits[:, -1]

        tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (1, L)), jnp.int32)
        ttft = _median_s(lambda tokens=tokens: jax.block_until_ready(prefill(state, tokens)), a.reps)
        row = dict(kind="ttft", prompt_len=L, ttft_s=ttft, cache_mib=cache_bytes(model, L) / 2**20,
                   transformer_kv_cache_mib=2 * cfg.num_hidden_layers * L * cfg.hidden_size * 2 / 2**20)
        print(json.dumps(row), flush=True)
        rows.append(row)
    meta = run_info()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_generate.json"), "w") as f:
        json.dump(dict(meta=meta, config=a.config, dtype=a.dtype, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
