#!/usr/bin/env bash
# One device call: GPU tests of the kernels, then the op benchmark. Logs and JSON go to $OUT.
# Usage (on the GPU machine, repo root): bash experiments/gpu_run.sh [pytest -k expr] [bench args...]
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
K_EXPR=${1:-gpu}; shift || true
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"
timeout 300 python3 -m pytest tests/test_pallas.py -k "$K_EXPR" -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -30
timeout 280 python3 experiments/bench_ops.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench.log" | tail -20
