"""experiments/hlo_fusions.py: kernel names of a profile mapped to the fused ops and source lines of an XLA dump."""

import json
import os
import subprocess
import sys
import textwrap

from experiments.hlo_fusions import _INSTR, find, kernel_name, parse_module, to_markdown, top_fusions

_PROGRAM = textwrap.dedent("""
    import jax, jax.numpy as jnp

    def loss(w, x):
        y = jnp.sin(x) * w  # the fused elementwise work
        return (y ** 2).sum()

    x, w = jnp.ones((256, 128)), jnp.ones((128,))
    jax.jit(jax.grad(loss))(w, x).block_until_ready()
""")


def _dump(tmp_path):
    src = tmp_path / "prog.py"
    src.write_text(_PROGRAM)
    env = dict(os.environ, XLA_FLAGS=f"--xla_dump_to={tmp_path / 'dump'} --xla_dump_hlo_as_text",
               JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, str(src)], check=True, env=env, timeout=120)
    return str(tmp_path / "dump"), str(src)


def test_a_fusion_is_traced_to_its_source_line(tmp_path):
    dump, src = _dump(tmp_path)
    path = max((os.path.join(dump, f) for f in os.listdir(dump) if f.endswith("after_optimizations.txt")),
               key=os.path.getsize)
    with open(path) as f:
        module = parse_module(f.read())
    fusions = [_INSTR.match(x)["name"] for c in module["computations"].values() for x in c
               if " fusion(" in x]
    assert fusions, "the dump holds no fusion"
    (row,) = find(dump, [kernel_name(fusions[0])])
    assert not row.get("missing")
    assert any("prog.py:" in s for s in row["sources"]), row
    assert any("sin" in n or "mul" in n for n in row["op_names"]), row
    assert f"`{row['kernel']}`" in to_markdown([row])


def test_missing_kernels_are_reported(tmp_path):
    dump, _ = _dump(tmp_path)
    (row,) = find(dump, ["no_such_fusion_7"])
    assert row == dict(kernel="no_such_fusion_7", missing=True)


def test_top_fusions_skip_pallas_and_matmul_kernels(tmp_path):
    summary = tmp_path / "s.json"
    summary.write_text(json.dumps(dict(top=[["_fwd_kernel", 9.0, 2], ["nvjet_sm90_tst", 8.0, 2],
                                            ["input_add_reduce_fusion_142", 5.0, 2], ["loop_add_fusion_2", 1.0, 2]])))
    assert top_fusions(str(summary), 5) == [("input_add_reduce_fusion_142", 5.0, 2), ("loop_add_fusion_2", 1.0, 2)]
