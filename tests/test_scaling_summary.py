"""experiments/scaling_summary.py on synthetic metrics (one file written by the loop's own MetricsLogger) and logs."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from experiments.scaling_summary import main, read_train_records, summarise  # noqa: E402
from mdn_jax.train.metrics import MetricsLogger  # noqa: E402


def _write_1gpu(d):
    """Through MetricsLogger (the format the loop writes): step 1 = compile, then windows of 1000, 1100, 900 tok/s."""
    log = MetricsLogger(str(d / "run1"), total_steps=15, progress=False, tensorboard=False)
    for step, tps, st in [(1, 200.0, 90.0), (5, 1000.0, 0.8), (10, 1100.0, 0.75), (15, 900.0, 0.9)]:
        log.log(step, "train", {"loss": 5.0, "skipped": 0, "tokens_per_s": tps, "step_time": st, "mfu": 0.2,
                                "peak_mem_gib": 40.0 + step / 100})
    log.log(15, "eval", {"loss": 4.0, "ppl": 55.0})
    log.close()
    return str(d / "run1" / "metrics.jsonl")


def _write_2gpu(path, t0):
    recs = [(1, 300.0, 120.0, t0 + 150), (5, 1900.0, 0.85, t0 + 154), (10, 2000.0, 0.8, t0 + 158),
            (15, 1700.0, 0.95, t0 + 162)]
    with open(path, "w") as f:
        for step, tps, st, t in recs:
            f.write(json.dumps({"step": step, "split": "train", "time": t, "loss": 5.1, "skipped": 0,
                                "tokens_per_s": tps, "step_time": st, "peak_mem_gib": 25.5}) + "\n")
        f.write('{"step": 20, "split": "tra')  # cut off by a killed run


def _log(path, name, mesh, batch, t0, t1, rc=0):
    with open(path, "a") as f:
        f.write(f"== scale run {name}: devices 2 (CUDA_VISIBLE_DEVICES=0,1), start {t0}\n"
                f"model momentum_deltanet_400M: 417,551,348 params, 2351.31 MFLOP/token | mesh {mesh} | "
                f"batch {batch}x4096 (accum 4) | tokenizer gpt2 | data shakespeare: 40 train / 2 eval docs\n"
                "train step      1 | loss 11.0\n"
                f"== scale run {name}: rc {rc}, end {t1}\n")


def test_medians_efficiency_and_log_sections(tmp_path):
    m1 = _write_1gpu(tmp_path)
    m2, log2 = str(tmp_path / "metrics_2gpu.jsonl"), str(tmp_path / "train_2gpu.log")
    _write_2gpu(m2, 1000.0)
    _log(log2, "2gpu_fsdp", "{'data': 1, 'fsdp': 2, 'tensor': 1}", 32, 1000.0, 1180.0)
    _log(log2, "2gpu_dp", "{'data': 2, 'fsdp': 1, 'tensor': 1}", 32, 2000.0, 2100.0, rc=124)
    assert [r["step"] for r in read_train_records(m2)] == [1, 5, 10, 15]
    s = summarise([("1gpu", 1, m1, None), ("2gpu_fsdp", 2, m2, log2), ("2gpu_dp", 2, m2, log2)])
    one, two, dp = s["runs"]
    assert s["baseline"] == "1gpu" and one["status"] == "ok" and one["windows"] == 3
    assert one["tokens_per_s"] == 1000.0 and one["step_time_s"] == 0.8 and one["mfu"] == pytest.approx(0.2)
    assert one["peak_mem_gib"] == pytest.approx(40.15) and one["first_step_s"] == 90.0
    assert one["scaling_efficiency"] == 1.0 and "mesh" not in one and "phases" in one
    assert two["tokens_per_s"] == 1900.0 and two["tokens_per_s_per_device"] == 950.0
    assert two["scaling_efficiency"] == pytest.approx(0.95) and two["speedup"] == pytest.approx(1.9)
    assert two["step_time_s"] == 0.85 and two["peak_mem_gib"] == 25.5 and two["mfu"] is None
    assert two["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1} and two["global_batch"] == 32
    assert two["per_device_batch"] == 16 and two["per_device_micro_batch"] == 4 and two["params"] == 417551348
    assert two["rc"] == 0 and two["wall_s"] == pytest.approx(180.0)
    assert two["phases"] == pytest.approx({"start_to_step1_s": 150.0, "steps_after_first_s": 12.0,
                                           "last_record_to_exit_s": 18.0})
    assert dp["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1} and dp["rc"] == 124  # its own section of the log


def test_cli_writes_json_and_markdown_with_a_missing_run(tmp_path, capsys):
    m1 = _write_1gpu(tmp_path)
    out = tmp_path / "res" / "scaling"
    rc = main(["--run", f"1gpu:1:{m1}", "--run", f"2gpu_fsdp:2:{tmp_path / 'absent.jsonl'}:{tmp_path / 'no.log'}",
               "--out", str(out), "--note", "synthetic"])
    assert rc == 0
    s = json.loads((tmp_path / "res" / "scaling.json").read_text())
    two = s["runs"][1]
    assert two["status"] == "missing" and two["tokens_per_s"] is None and two["scaling_efficiency"] is None
    md = (tmp_path / "res" / "scaling.md").read_text()
    assert "synthetic" in md and "| 1gpu | 1 |" in md and "| 2gpu_fsdp | 2 |" in md and "missing" in md
    assert "1,000 (900-1,100)" in md and capsys.readouterr().out.endswith(md)
    with pytest.raises(SystemExit):
        main(["--run", "1gpu:zero:x.jsonl", "--out", str(out)])


def test_gpu_scale_script_parses():
    p = subprocess.run(["bash", "-n", os.path.join(ROOT, "experiments", "gpu_scale.sh")], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
