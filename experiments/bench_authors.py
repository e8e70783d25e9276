"""The authors' Triton kernels (HuuYuLong/MomentumDeltaNet, `chunk_mode_rule`) timed as ANCHORS.md times them.

For a side-by-side comparison with `bench_ops.py` on the same machine in one device call. Their package is
imported from a local checkout (nothing of it is part of this project):

    python experiments/bench_authors.py --fla-root PATH/flash-linear-attention [--cases S400,1.3B] [--out DIR]

PATH/flash-linear-attention holds their `fla/` folder. Only `fla.ops.momentum_delta_rule` (and, for the
Gated DeltaNet reference, `fla.ops.gated_delta_rule`) is loaded: the package `__init__`s, which pull in model
code, are bypassed. Inputs as ANCHORS.md: bf16 q/k/v ~ N(0, 1), fp32 gates (log_alpha = logsigmoid(N(0,1))/8,
log_mu the same clamped at -2, beta = sigmoid(U(0,1)), eta = U(0,2)), p = k with p * alpha and the L2 norms
inside their kernel, chunk 64, dO ~ N(0, 1). Timing: `triton.testing.do_bench`, median. Memory:
`torch.cuda.max_memory_allocated` over one forward+backward (inputs included). Prints each time as it is taken
(their kernels autotune on first call), then one JSON row per case, and writes DIR/bench_authors.json.
On an H200 (2026-12-02, triton 3.6) the S400 case finished within 420 s on a fresh machine (their autotuning
compiles; 330 s had not sufficed on 2026-12-01): give it a long timeout.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.shapes import SHAPES  # noqa: E402


def load_ops(fla_root: str):
    """(chunk_mode_rule, chunk_gated_delta_rule or None) from the checkout, bypassing the package __init__s."""
    pkg_dir = os.path.join(fla_root, "fla")
    if not os.path.isdir(os.path.join(pkg_dir, "ops", "momentum_delta_rule")):
        raise SystemExit(f"error: {pkg_dir}/ops/momentum_delta_rule not found (give --fla-root the folder "
                         "that holds the authors' fla/ package)")
    # Their fla/utils.py reads a name FLA_CACHE_RESULTS that it never defines once triton.autotune takes
    # cache_results (triton >= 3.4); provide it (False: no on-disk autotune cache) so the module imports.
    builtins.FLA_CACHE_RESULTS = False
    for name in ("fla", "fla.ops", "fla.modules"):  # namespace stand-ins: their submodules import normally
        mod = types.ModuleType(name)
        mod.__path__ = [os.path.join(pkg_dir, *name.split(".")[1:])]
        sys.modules[name] = mod
    from fla.ops.momentum_delta_rule import chunk_mode_rule

    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001 - the GDN reference is optional
        print(f"gated delta rule not loaded: {type(e).__name__}: {e}", file=sys.stderr)
        chunk_gated_delta_rule = None
    return chunk_mode_rule, chunk_gated_delta_rule


def inputs(B, T, H, K, V, seed=0):
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    n = lambda *s, dt=torch.bfloat16: torch.randn(*s, generator=g, device="cuda", dtype=torch.float32).to(dt)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, device="cuda")  # noqa: E731
    q, k, v = n(B, T, H, K), n(B, T, H, K), n(B, T, H, V)
    la = torch.nn.functional.logsigmoid(n(B, T, H, dt=torch.float32)) / 8
    lm = (torch.nn.functional.logsigmoid(n(B, T, H, dt=torch.float32)) / 8).clamp_min(-2.0)
    beta, eta = torch.sigmoid(u(B, T, H)), 2.0 * u(B, T, H)
    do = n(B, T, H, V)
    return (q, k, v, la, lm, beta, eta), do


def _timed(row, key, fn, **kw):
    """row[key] = median ms of fn by triton.testing.do_bench; printed at once (their first calls autotune)."""
    import triton

    row[key] = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median", **kw)
    print(json.dumps({"case": row["case"], "impl": row["impl"], key: row[key]}), flush=True)


def bench_case(name, shape, mdn, gdn):
    import torch

    (q, k, v, la, lm, beta, eta), do = inputs(**shape)
    leaves = [x.requires_grad_() for x in (q, k, v, la, lm, beta, eta)]
    fwd = lambda: mdn(q, k, v, la, lm, p=k, beta=beta, eta=eta, use_qk_l2norm_in_kernel=True,  # noqa: E731
                      use_p_times_alpha=True)[0]

    def fwd_bwd():
        fwd().backward(do)

    row = dict(case=name, impl="authors chunk_mode_rule", **shape)
    with torch.no_grad():
        _timed(row, "fwd_ms", fwd)
    _timed(row, "fwd_bwd_ms", fwd_bwd, grad_to_none=leaves)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd()
    torch.cuda.synchronize()
    row["fwd_bwd_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    rows = [row]
    if gdn is not None:
        g = dict(case=name, impl="authors' fla chunk_gated_delta_rule (GDN)", **shape)
        gdn_fwd = lambda: gdn(q, k, v, la, beta, use_qk_l2norm_in_kernel=True)[0]  # noqa: E731

        def gdn_fwd_bwd():
            gdn_fwd().backward(do)

        try:
            with torch.no_grad():
                _timed(g, "fwd_ms", gdn_fwd)
            _timed(g, "fwd_bwd_ms", gdn_fwd_bwd, grad_to_none=leaves)
        except Exception as e:  # noqa: BLE001 - reported, the MDN rows stand
            g["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(g)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fla-root", required=True)
    ap.add_argument("--cases", default="S400")
    ap.add_argument("--no-gdn", action="store_true", help="skip the Gated DeltaNet reference")
    ap.add_argument("--out", default="/tmp/bench_authors")
    a = ap.parse_args(argv)
    unknown = [c for c in a.cases.split(",") if c not in SHAPES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {sorted(SHAPES)}")
    import torch

    mdn, gdn = load_ops(a.fla_root)
    rows = []
    for case in a.cases.split(","):
        try:
            case_rows = bench_case(case, SHAPES[case], mdn, None if a.no_gdn else gdn)
        except Exception as e:  # noqa: BLE001 - a case their kernels refuse is reported, the others still run
            case_rows = [dict(case=case, impl="authors chunk_mode_rule", error=f"{type(e).__name__}: {str(e)[:300]}")]
        for row in case_rows:
            print(json.dumps(row), flush=True)
            rows.append(row)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "bench_authors.json"), "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(0), torch=torch.__version__, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
