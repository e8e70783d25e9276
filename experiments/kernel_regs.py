"""Registers, spills and layout conversions of the op's Triton kernels, compiled for Hopper without a GPU.

Usage: python experiments/kernel_regs.py --case S400 [--backward] [--out DIR] [--cc 9.0]
Lowers the op (`implementation="pallas"`, forward or forward+backward) at a case's shapes for CUDA on a machine
without one (a fake compute capability stands in for the missing device), keeps each Triton module Pallas
emits, then compiles it with the `triton` package (pip install triton==3.6.0, the GPU machines' version; CPU
wheels carry ptxas) for sm_90a and runs `ptxas -v`. Prints and writes (DIR/kernel_regs.json) per kernel: warps,
stages, registers per thread, spill bytes, shared memory, `convert_layout` ops in the TTGIR. A register spill
shows a kernel's pressure before any GPU time is spent (7d9159d: the coefficient kernel spilled 84 bytes at
97a6ee8, none after; its forward fell 0.05 ms), but no spill is not by itself faster: settings that removed the
passes' and the chunk-local VJP's spills all lost on the H200 (results/h200_2026-12-04_e65a8f3, calls 5-6).
XLA compiles these modules with its own Triton, so the counts are those of the same IR under triton 3.6, not
necessarily of the binary that runs. Kernels written in Mosaic GPU (`mosaic_pass.py`, `mosaic_grads.py`) are not
Triton modules and are not listed: on a machine without a GPU the op takes its Triton paths, which are the ones
compiled here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import types
from unittest import mock

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.bench_ops import anchor_inputs  # noqa: E402
from experiments.shapes import SHAPES  # noqa: E402
from mdn_jax.ops import momentum_delta_rule  # noqa: E402

_ATTRS = re.compile(r'name = "(\w+)", num_stages = (\d+) : i32, num_warps = (\d+) : i32')


def capture(case: str, backward: bool, cc: str) -> list[dict]:
    """Each Triton module of the op at `case`: [{name, num_warps, num_stages, ttir}], in lowering order."""
    from jax._src.pallas.triton import lowering
    from jax._src.pallas.triton import pallas_call_registration as reg

    modules = []
    lower = lowering.lower_jaxpr_to_triton_module

    def keep(*args, **kwargs):
        out = lower(*args, **kwargs)
        modules.append(out.module.operation.get_asm(enable_debug_info=False))
        return out

    args = jax.eval_shape(lambda: anchor_inputs(**SHAPES[case]))[0]  # the benchmarks' inputs, as shapes only

    def fwd(*a):
        return momentum_delta_rule(*a, implementation="pallas")[0]

    fn = jax.grad(lambda *a: jnp.sum(fwd(*a).astype(jnp.float32)), argnums=tuple(range(7))) if backward else fwd
    gpu = types.SimpleNamespace(compute_capability=cc)
    # the op picks interpret mode by the default backend: tell it "gpu"
    with (mock.patch.object(reg.gpu_info_lib, "get_gpu_info", lambda: gpu),
          mock.patch.object(reg.lowering, "lower_jaxpr_to_triton_module", keep),
          mock.patch("jax.default_backend", return_value="gpu")):
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    attrs = _ATTRS.findall(text)
    if len(attrs) != len(modules):
        raise RuntimeError(f"{len(modules)} Triton modules but {len(attrs)} Triton calls in the lowered text")
    out = []
    for (name, stages, warps), ttir in zip(attrs, modules, strict=True):
        if f"@{name}" not in ttir:
            raise RuntimeError(f"Triton call {name} does not match its module (lowering order changed?)")
        out.append(dict(name=name, num_warps=int(warps), num_stages=int(stages), ttir=ttir))
    return out


def compile_stats(mod: dict, workdir: str, index: int) -> dict:
    """Compile one captured module for sm_90a (triton 3.6) and read ptxas' resource usage."""
    import triton
    import triton.backends.nvidia as nvidia
    from triton.backends.compiler import GPUTarget

    src = os.path.join(workdir, f"{index:02d}_{mod['name']}.ttir")
    with open(src, "w") as f:
        f.write(mod["ttir"])
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                            options=dict(num_warps=mod["num_warps"], num_stages=mod["num_stages"]))
    ptx = src[:-5] + ".ptx"
    with open(ptx, "w") as f:
        f.write(kernel.asm["ptx"])
    ptxas = os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas")
    log = subprocess.run([ptxas, "--gpu-name", "sm_90a", "-v", ptx, "-o", os.devnull], capture_output=True,
                         text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(index=index, name=mod["name"], num_warps=mod["num_warps"], num_stages=mod["num_stages"],
                registers=int(regs.group(1)) if regs else None,
                spill_store_bytes=int(spills.group(1)) if spills else None,
                spill_load_bytes=int(spills.group(2)) if spills else None,
                shared_bytes=kernel.metadata.shared, convert_layouts=kernel.asm["ttgir"].count("ttg.convert_layout"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", default="S400", choices=sorted(SHAPES))
    ap.add_argument("--backward", action="store_true", help="the forward+backward's kernels (default: forward)")
    ap.add_argument("--cc", default="9.0", help="the compute capability the lowering is told (default 9.0)")
    ap.add_argument("--out", default=None, help="folder for kernel_regs.json and the .ttir/.ptx files")
    a = ap.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        ap.error("needs the triton package (pip install triton==3.6.0; no GPU needed)")
    out = a.out or tempfile.mkdtemp(prefix="kernel_regs_")
    os.makedirs(out, exist_ok=True)
    rows = [compile_stats(m, out, i) for i, m in enumerate(capture(a.case, a.backward, a.cc))]
    print(f"{a.case} {'forward+backward' if a.backward else 'forward'}: {len(rows)} Triton kernels (sm_90a)")
    print("| # | kernel | warps | stages | registers | spill bytes (st/ld) | shared KiB | convert_layout |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['index']} | `{r['name']}` | {r['num_warps']} | {r['num_stages']} | {r['registers']} | "
              f"{r['spill_store_bytes']}/{r['spill_load_bytes']} | {r['shared_bytes'] / 1024:.0f} | "
              f"{r['convert_layouts']} |")
    with open(os.path.join(out, "kernel_regs.json"), "w") as f:
        json.dump(dict(case=a.case, backward=a.backward, triton=triton.__version__, kernels=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
