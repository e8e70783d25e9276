"""8 simulated CPU devices: data x fsdp and tensor-parallel train steps (also of the MDN model with scan_layers)
equal the unsharded step."""

import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_sharded_steps_match_unsharded():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, os.path.join(TESTS, "sharded_check.py")], capture_output=True, text=True,
                       env=env, timeout=240)
    assert p.returncode == 0 and "ALL OK" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
