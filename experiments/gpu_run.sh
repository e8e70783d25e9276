#!/usr/bin/env bash
# One device call: GPU tests of the kernels, stage timings, implementation variants, the op benchmark.
# Usage (on the GPU machine, repo root): MDN_COMMIT=<sha> bash experiments/gpu_run.sh
# Env: TEST_TIMEOUT, TEST_K (pytest -k), FLA_BG (1: FLA parity test in the background), STAGES (1: time the stages), VARIANTS (space-separated env assignments, ';' between variants), BENCH_ARGS, BENCH_TIMEOUT.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
source experiments/gpu_setup.sh
fla_pid=
if [ "${FLA_BG:-0}" = 1 ]; then  # the FLA parity test (Triton autotuning: minutes) beside the kernel tests
  fla_parity ${FLA_TIMEOUT:-280} &
  fla_pid=$!
fi
timeout ${TEST_TIMEOUT:-400} python3 -m pytest tests/test_pallas.py tests/test_model_parity_fla.py -k "${TEST_K:-gpu or fla}" -v -p no:cacheprovider --durations=8 \
  2>&1 | tee "$OUT/gpu_tests.log" | grep -E "PASS|FAIL|ERROR|passed|failed|Error|s call" | tail -30
[ -n "$fla_pid" ] && { wait $fla_pid; grep -E "parity|PASS|FAIL|passed|failed" "$OUT/fla.log" | tail -4; }
if [ "${STAGES:-1}" = 1 ]; then
  timeout 120 python3 experiments/bench_stages.py 2>&1 | grep -E '^\{|Error' | tee "$OUT/stages.log"
fi
IFS=';' read -ra variants <<< "${VARIANTS:-MDN_BLOCK_V=64}"
for v in "${variants[@]}"; do
  echo "variant: $v" | tee -a "$OUT/variants.log"
  env $v timeout 100 python3 experiments/bench_ops.py --cases S400 --impls pallas --reps 10 --out /tmp/v \
    2>&1 | grep -E '^\{|Error' | tee -a "$OUT/variants.log"
done
timeout ${BENCH_TIMEOUT:-200} python3 experiments/bench_ops.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 \
  | tee "$OUT/bench.log" | tail -12
