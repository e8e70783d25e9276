"""experiments/kernel_regs.py: the op's Triton modules captured from a CUDA lowering on a machine without a GPU."""

import pytest

from experiments.kernel_regs import capture, compile_stats


@pytest.fixture(scope="module")
def forward_backward():
    return capture("tiny", backward=True, cc="9.0")


def test_capture_lists_every_triton_kernel_of_the_op_in_order(forward_backward):
    names = [m["name"] for m in forward_backward]
    # forward: preprocessing, coefficients, solve, saving pass; backward: reverse sweep, cotangents, chunk-local
    # VJP, gate VJP, preprocessing VJP
    assert names[:3] == ["_fwd_kernel", "_coeff_kernel", "_solve_kernel"]
    assert {"_bwd_kernel", "_grads_kernel", "_local_bwd_kernel", "_gate_vjp_kernel"} <= set(names)
    for m in forward_backward:
        assert f"tt.func public @{m['name']}" in m["ttir"]
        assert m["num_warps"] >= 1 and m["num_stages"] >= 1


def test_forward_only_has_no_backward_kernels():
    names = [m["name"] for m in capture("tiny", backward=False, cc="9.0")]
    assert "_coeff_kernel" in names and "_gate_vjp_kernel" not in names and "_grads_kernel" not in names


def test_compile_stats_reads_ptxas(forward_backward, tmp_path):
    pytest.importorskip("triton")
    coeff = next(m for m in forward_backward if m["name"] == "_coeff_kernel")
    row = compile_stats(coeff, str(tmp_path), 1)
    assert 0 < row["registers"] <= 255 and row["spill_store_bytes"] >= 0 and row["shared_bytes"] > 0
