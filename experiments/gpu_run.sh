#!/usr/bin/env bash
# One device call: GPU tests of the kernels, the op benchmark, stage timings, block-size variants.
# Usage (on the GPU machine, repo root): MDN_COMMIT=<sha> bash experiments/gpu_run.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"
timeout ${TEST_TIMEOUT:-240} python3 -m pytest tests/test_pallas.py -m "not slow" -k gpu -v -p no:cacheprovider \
  --durations=5 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "PASS|FAIL|ERROR|passed|failed|Error" | tail -25
timeout 60 python3 experiments/bench_stages.py 2>&1 | tee "$OUT/stages.log" | tail -3
for cfg in ${VARIANTS:-"32 4" "64 4" "64 8"}; do
  set -- $cfg
  MDN_BLOCK_V=$1 MDN_NUM_WARPS=$2 timeout 90 python3 experiments/bench_ops.py --cases S400 --impls pallas \
    --reps 10 --out "$OUT" --tag "variant_bv$1_w$2" 2>&1 | grep '^{' | tee -a "$OUT/variants.log"
done
timeout ${BENCH_TIMEOUT:-200} python3 experiments/bench_ops.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 \
  | tee "$OUT/bench.log" | tail -12
