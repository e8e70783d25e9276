"""`mdn-jax eval`: packed and streamed held-out evaluation of a tiny run trained through the CLI."""

import json
import math

import pytest
from tiny_run import tiny_run

from mdn_jax.cli import main

TEXT = "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def _eval(capsys, *args):
    rc = main(["eval", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def _result(capsys, *args):
    rc, out, err = _eval(capsys, *args)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_packed_and_streamed(run_dir, tmp_path, capsys):
    from mdn_jax.evaluation.lm_eval import eval_source, evaluate_packed, evaluate_streaming
    from mdn_jax.evaluation.restore import load_run

    text = tmp_path / "short.txt"
    text.write_text(TEXT)
    n = len(TEXT.encode()) + 1  # bytes + eos
    one = _result(capsys, "--checkpoint", run_dir, "--data", str(text), "--seq-len", "128")  # the CLI, once
    assert one["tokens"] == n - 1 and one["tokenizer"] == "byte"
    assert math.isfinite(one["loss"]) and one["bits_per_byte"] == pytest.approx(one["loss"] / math.log(2))
    assert one["ppl"] == pytest.approx(math.exp(one["loss"]))
    run = load_run(run_dir)
    src = eval_source(run, str(text))
    # a text shorter than one window: streamed == one-shot
    big = evaluate_streaming(run, src, window=128)
    assert big["tokens"] == one["tokens"] and big["windows"] == 1
    assert big["loss"] == pytest.approx(one["loss"], rel=1e-5)
    # several windows with the state carried: still the same per-token predictions
    small = evaluate_streaming(run, src, window=16)
    assert small["windows"] == -(-n // 16) and small["tokens"] == one["tokens"]
    assert small["loss"] == pytest.approx(one["loss"], rel=1e-4)
    # packed rows shorter than the text: the state resets at row boundaries, finite, fewer targets
    cut = evaluate_packed(run, src, seq_len=16, batch_size=8)
    assert math.isfinite(cut["loss"]) and cut["tokens"] < one["tokens"]
    # the run's own held-out split (long documents), streamed and cut after ~300 tokens
    held = evaluate_streaming(run, eval_source(run, None), window=16, max_tokens=300)
    assert held["tokens"] >= 300 and math.isfinite(held["loss"])


@pytest.mark.parametrize("args, msg", [
    (["--checkpoint", "/nonexistent/run"], "checkpoint directory not found"),
    (["--data", "/nonexistent/data.txt"], "data path not found"),
    (["--window", "0"], "--window must be positive"),
    (["--seq-len", "-1"], "--seq-len must be positive"),
    (["--tokenizer", "nosuchtok"], "unknown tokenizer"),
])
def test_bad_input(run_dir, capsys, args, msg):
    if "--checkpoint" not in args:
        args = ["--checkpoint", run_dir, *args]
    rc, _, err = _eval(capsys, *args)
    assert rc == 2 and msg in err and "Traceback" not in err


def test_not_a_run(tmp_path, capsys):
    rc, _, err = _eval(capsys, "--checkpoint", str(tmp_path))
    assert rc == 2 and "no config.json" in err
