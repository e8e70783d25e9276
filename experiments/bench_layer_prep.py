"""Time one MDN layer's forward+backward at the 400M training micro-batch with variants of its preprocessing.

The 400M step's four largest XLA fusions (results/h200_2026-12-02_0bbac19/fusions.md, ~12% of the step) are the
backward of the L2 norms of q and k fused with the short convolutions' SiLU backward, and the convolutions'
weight gradients. This script times `MomentumDeltaNet` (the 400M config's mixer: D=1024, H=6, K=128, V=256,
bf16 parameters and activations as the train step casts them, packed documents as segment ids) forward+backward
with each variant swapped in, side by side in one process:

- default: the model as it is,
- l2norm_vjp: the op's L2 norm with a hand-written VJP (dx = r (g - y sum(y g)), float32),
- conv_lax: the short convolution as one depthwise `lax.conv_general_dilated` (cuDNN) instead of shifted adds
  (no segment masking: with --docs 0 only, beside the default without segment ids),
- both: the two together;
and, to attribute the cost of packed documents (not the model's results: rel_diff is not ~0):
- seg_conv_only: the segment ids reach the short convolutions only, not the op,
- seg_op_only: they reach the op only, not the convolutions,
- no_seg: they reach neither (the layer as with --docs 0, in the same process).

--profile DIR also traces a few calls of each variant (jax.profiler) and writes the device time per kernel,
DIR/<variant>.md, to find what a variant adds. Variants measured and dropped (PERF_NOTES): the convolutions' masks
as products (conv_mask_mul, 4.31 vs 4.32 ms) and the convolution as one stacked product (conv_stacked, 4.31 vs 4.34),
code at 37d9760.

Every variant's gradients are compared with the first variant's (relative difference) before it is timed.
    python experiments/bench_layer_prep.py [--batch 4 --seq 4096] [--out DIR]
Prints one JSON row per variant.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.common import timeit_queued  # noqa: E402
from experiments.trace_summary import markdown, summarize  # noqa: E402
from mdn_jax.model import conv as conv_mod  # noqa: E402
from mdn_jax.model import delta_mixers  # noqa: E402
from mdn_jax.model.config import load_config  # noqa: E402
from mdn_jax.model.model import make_mixer  # noqa: E402
from mdn_jax.ops import api  # noqa: E402


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def l2norm_vjp(x, eps=api.L2_EPS):
    """x / sqrt(||x||^2 + eps) over the last axis, float32 inside, with a hand-written VJP."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.sum(x32 * x32, -1, keepdims=True) + eps)).astype(x.dtype)


def _l2_fwd(x, eps):
    x32 = x.astype(jnp.float32)
    r = jax.lax.rsqrt(jnp.sum(x32 * x32, -1, keepdims=True) + eps)
    return (x32 * r).astype(x.dtype), (x, r)


def _l2_bwd(eps, res, g):
    x, r = res
    y, g32 = x.astype(jnp.float32) * r, g.astype(jnp.float32)
    return ((r * (g32 - y * jnp.sum(y * g32, -1, keepdims=True))).astype(x.dtype),)


l2norm_vjp.defvjp(_l2_fwd, _l2_bwd)


def _extend(self, x, state):
    """(x_ext [B, T+W-1, C]: the state's W-1 steps then x, the state; zeros if None), as `ShortConv` forms them."""
    if state is None:
        state = jnp.zeros((x.shape[0], self.width - 1, x.shape[2]), x.dtype)
    return jnp.concatenate([state.astype(x.dtype), x], axis=1), state


def _finish(self, y, x_ext, state):
    """`ShortConv`'s outputs from the pre-activation y: (silu(y + bias), the new state [B, W-1, C])."""
    if self.bias is not None:
        y = y + self.bias[...].astype(y.dtype)
    return jax.nn.silu(y), x_ext[:, x_ext.shape[1] - (self.width - 1):].astype(state.dtype)


def conv_lax_call(self, x, *, state=None, segment_ids=None):
    """`ShortConv.__call__` as one depthwise convolution (same taps; no segment ids)."""
    C = x.shape[2]
    x_ext, state = _extend(self, x, state)
    w = self.weight[...].astype(x.dtype)
    if segment_ids is not None:
        raise NotImplementedError("conv_lax: the depthwise convolution has no segment masking (run with --docs 0)")
    y = jax.lax.conv_general_dilated(x_ext, w[:, None, :], (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"),
                                     feature_group_count=C)
    return _finish(self, y, x_ext, state)


def _without_segment_ids(fn):
    def call(*args, segment_ids=None, **kwargs):
        del segment_ids
        return fn(*args, **kwargs)
    return call


@contextlib.contextmanager
def variant(name):
    """Swap the variant's pieces in (module attributes read at trace time), restore them after."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    saved = api.l2norm, conv_mod.ShortConv.__call__, delta_mixers.momentum_delta_rule
    if name in ("l2norm_vjp", "both"):
        api.l2norm = l2norm_vjp
    if name in ("conv_lax", "both"):
        conv_mod.ShortConv.__call__ = conv_lax_call
    if name == "seg_conv_only":
        delta_mixers.momentum_delta_rule = _without_segment_ids(saved[2])
    if name in ("seg_op_only", "no_seg"):
        conv_mod.ShortConv.__call__ = _without_segment_ids(saved[1])
    if name == "no_seg":
        delta_mixers.momentum_delta_rule = _without_segment_ids(saved[2])
    try:
        yield
    finally:
        api.l2norm, conv_mod.ShortConv.__call__, delta_mixers.momentum_delta_rule = saved


VARIANTS = ("default", "l2norm_vjp", "conv_lax", "both", "seg_conv_only", "seg_op_only", "no_seg")


def make_case(batch, seq, docs, config="momentum_deltanet_400M", seed=0, **overrides):
    """The mixer (bf16 parameters) and its inputs: x [B, T, D] bf16, segment ids [B, T] of `docs` documents per row
    (None for docs = 0), a random cotangent of the output."""
    cfg = load_config(config, dtype="bfloat16", **overrides)
    mixer = make_mixer(cfg, 0, nnx.Rngs(seed))
    graphdef, params = nnx.split(mixer)
    params = jax.tree.map(lambda p: p.astype(jnp.bfloat16) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, seq, cfg.hidden_size)), jnp.bfloat16)
    seg = jnp.asarray(np.sort(rng.integers(1, docs + 1, (batch, seq)), axis=1), jnp.int32) if docs else None
    w = jnp.asarray(rng.standard_normal((batch, seq, cfg.hidden_size)), jnp.float32)
    return graphdef, params, x, seg, w


def grad_fn(graphdef):
    def loss(params, x, seg, w):
        y = nnx.merge(graphdef, params)(x, segment_ids=seg)
        return (y.astype(jnp.float32) * w).sum()
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _rel(a, b):
    a, b = (np.asarray(jnp.concatenate([t.astype(jnp.float32).ravel() for t in jax.tree.leaves(z)])) for z in (a, b))
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _profile(fn, args, out_dir, name, reps=3):
    """Trace reps calls of fn and write the device time per kernel to out_dir/<name>.md."""
    trace_dir = os.path.join(out_dir, "trace_" + name)
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        for _ in range(reps):
            jax.block_until_ready(fn(*args))
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(f"{name}: {reps} calls\n\n" + markdown(summarize(trace_dir, top=30)) + "\n")


def run(variants, batch, seq, docs, reps=20, profile_dir=None, **overrides):
    graphdef, params, x, seg, w = make_case(batch, seq, docs, **overrides)
    args = (params, x, seg, w)
    rows, ref = [], None
    for name in variants:
        with variant(name):
            fn = grad_fn(graphdef)
            g = fn(*args)
            ref = g if ref is None else ref
            rows.append(dict(variant=name, batch=batch, seq=seq, docs=docs, rel_diff=_rel(g, ref),
                             finite=bool(all(np.isfinite(np.asarray(t, np.float32)).all()
                                             for t in jax.tree.leaves(g))),
                             ms=timeit_queued(fn, args, reps)))
            if profile_dir:
                _profile(fn, args, profile_dir, name)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variants", default="default,l2norm_vjp,conv_lax,both")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--docs", type=int, default=8, help="documents per row (segment ids; 0: none)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=None)
    ap.add_argument("--profile", default=None, help="DIR: trace each variant, device time per kernel in DIR")
    a = ap.parse_args()
    if a.profile:
        os.makedirs(a.profile, exist_ok=True)
    rows = run(a.variants.split(","), a.batch, a.seq, a.docs, reps=a.reps, profile_dir=a.profile)
    for r in rows:
        print(json.dumps(r), flush=True)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"bench_layer_prep_docs{a.docs}.json"), "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
