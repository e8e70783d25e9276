"""Helpers of the training tests: run the CLI in a subprocess on CPU with a tiny stand-in model."""

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)

TINY = ["model=tiny_model:build", "seq_len=32", "batch_size=4", "log_every=1", "eval_every=0", "sample_tokens=0",
        "progress=false", "tensorboard=false", "warmup_steps=2"]


def run_cli(args, env_extra=None, timeout=240, check=True):
    """Run `python -m mdn_jax.cli <args>` on CPU with tests/ on PYTHONPATH; returns CompletedProcess."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    p = subprocess.run([sys.executable, "-m", "mdn_jax.cli", *args], capture_output=True, text=True, env=env,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p


def one_line_error(p):
    """The single `mdn-jax: error:` line of a CLI run that failed cleanly (exit 2, no traceback)."""
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.startswith("mdn-jax: error:")]
    assert len(lines) == 1, p.stderr[-2000:]
    return lines[0]
