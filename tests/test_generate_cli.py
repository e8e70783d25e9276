"""`mdn-jax generate` end to end: train a tiny MDN (model=tiny_mdn) for a few steps with the CLI, generate from
its run directory, params export and checkpoint step; bad input exits 2 with one error line."""

import pathlib

import pytest
from tiny_run import tiny_run
from train_cli import one_line_error, run_cli


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The session's shared tiny run (tests/tiny_run.py: model=tiny_mdn, 3 steps, warmup_steps=1, saved at step 3),
    trained once for the eval, stability and generate tests."""
    return pathlib.Path(tiny_run(tmp_path_factory))


def test_generate_streams_text(run_dir):
    p = run_cli(["generate", "--checkpoint", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "12",
                 "--temperature", "0.8", "--top-k", "40", "--seed", "1"])
    assert p.stdout.startswith("ROMEO:") and len(p.stdout.rstrip("\n")) > len("ROMEO:")


def test_generate_batch_from_params_and_step(run_dir):
    p = run_cli(["generate", "--checkpoint", str(run_dir / "params"), "--prompt", "ROMEO:", "--prompt", "To be",
                 "--max-new-tokens", "8"])
    assert "--- 0\nROMEO:" in p.stdout and "--- 1\nTo be" in p.stdout
    # a checkpoint step dir holds the same weights (3 steps) -> same greedy text, streamed
    q = run_cli(["generate", "--checkpoint", str(run_dir / "checkpoints" / "3"), "--prompt", "ROMEO:",
                 "--max-new-tokens", "8"])
    assert q.stdout.strip() == p.stdout.split("--- 1")[0].split("--- 0\n")[1].strip()


@pytest.mark.parametrize("args, msg", [
    (["--prompt", ""], "prompt 0 is empty"),
    (["--prompt", "hi", "--checkpoint", "/nonexistent/run"], "checkpoint path not found"),
    (["--prompt", "ROMEO: a long prompt", "--max-len", "8", "--checkpoint", "RUN"], "longer than max_len"),
])
def test_bad_input(run_dir, args, msg):
    args = [str(run_dir) if a == "RUN" else a for a in args]
    assert msg in one_line_error(run_cli(["generate", *args], check=False))
