"""A profiled run writes a trace; experiments/trace_summary.py reads it; metrics carry step and compile times."""

import json
import os
import sys

from train_cli import TINY, run_cli

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.trace_summary import category, markdown, summarize  # noqa: E402


def test_profile_steps_trace_is_summarised(tmp_path):
    out = tmp_path / "run"
    run_cli(["train", "--out", str(out), *TINY, "steps=4", "profile_steps=2:4"])
    s = summarize(str(out / "profile"))
    assert s["busy_us"] > 0 and s["top"], s
    assert abs(sum(s["categories"].values()) - s["busy_us"]) < 1e-6 * s["busy_us"] + 1e-6
    assert "| category | ms | share |" in markdown(s)
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    train = [r for r in records if r.get("split") == "train"]
    assert train and all("step_time" in r for r in train)
    # the train step is compiled before the first step, and that time is the first record's, not in its step_time
    assert train[0]["compile_s"] > 0 and all("compile_s" not in r for r in train[1:])
    assert train[0]["step_time"] < train[0]["compile_s"]


def test_kernel_categories():
    assert category("anonymous_mosaic_gpu_kernel") == "mdn_pallas"  # the op's Mosaic passes
    assert category("_local_bwd_kernel") == "mdn_pallas"
    assert category("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT") == "matmul"
    assert category("memcpy128") == "copy"
    assert category("input_add_reduce_fusion_124") == "fusion"
