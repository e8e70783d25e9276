#!/usr/bin/env bash
# One device call on a fresh machine: the authors' kernels compile (their autotuning, minutes, CPU-bound) in the
# background while our GPU tests run; then ours and theirs are timed one after the other on the idle GPU, ours
# first. Usage (GPU machine, repo root): MDN_COMMIT=<sha> bash experiments/gpu_side_by_side.sh
# Env: CASES (bench_ops' cases, default S400), AUTHORS_CASES (default S400), AUTHORS_ROOT (default
# .authors/flash-linear-attention), WARM_TIMEOUT (380), TEST_K, TEST_ARGS (-n 3), TEST_TIMEOUT (300).
# Writes under $OUT: device.txt, authors_warm.log (contended: not used), gpu_tests.log, ops/bench_ops.{json,md},
# bench_authors.json, authors.log.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
source experiments/gpu_setup.sh
root=${AUTHORS_ROOT:-.authors/flash-linear-attention}
cache=/tmp/triton_authors; mkdir -p "$cache"
TRITON_CACHE_DIR=$cache timeout ${WARM_TIMEOUT:-380} python3 experiments/bench_authors.py --fla-root "$root" \
  --cases "${AUTHORS_CASES:-S400}" --out /tmp/authors_warm > "$OUT/authors_warm.log" 2>&1 &
warm=$!
timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests/test_pallas.py tests/test_pallas_mosaic.py tests/test_pallas_prep.py \
  -k "${TEST_K:-gpu}" -v -p no:cacheprovider ${TEST_ARGS:--n 3} > "$OUT/gpu_tests.log" 2>&1
grep -E "FAIL|ERROR|passed|failed" "$OUT/gpu_tests.log" | tail -12
wait $warm; echo "authors' warm-up exit $?"
timeout 150 python3 experiments/bench_ops.py --cases "${CASES:-S400}" --impls pallas --decode "" --out "$OUT/ops" 2>&1 \
  | grep -vi warning | tail -8
TRITON_CACHE_DIR=$cache timeout 150 python3 experiments/bench_authors.py --fla-root "$root" \
  --cases "${AUTHORS_CASES:-S400}" --out "$OUT" 2>&1 | grep -vi warning | tee "$OUT/authors.log" | tail -6
