#!/usr/bin/env bash
# One device call: stage timings, implementation variants (forward), GPU tests of the kernels, the op benchmark.
# Usage (on the GPU machine, repo root): MDN_COMMIT=<sha> bash experiments/gpu_run.sh
# Env: STAGES (1: time the stages), PROFILE (1: device time per kernel of the S400 forward; PROFILE_ARGS=--backward for forward+backward), VARIANTS (bench_ops --variants: ';'-separated env assignments, forward only; VARIANTS_CASES: the cases, default S400),
# TESTS (0: skip the GPU tests), TEST_TIMEOUT, TEST_K (pytest -k), TEST_ARGS (e.g. -n 3: compile in parallel processes), FLA_BG (1: FLA parity test in the background of the tests), BENCH_ARGS,
# BENCH (0: skip the op benchmark), BENCH_TIMEOUT, VARIANTS_BWD (1: time the variants forward+backward too), AUTHORS_ROOT (the authors' flash-linear-attention
# folder: their kernels timed by bench_authors.py, AUTHORS_ARGS, AUTHORS_TIMEOUT; Triton's compile cache of their kernels comes
# back as triton_authors.tgz: unpack it into .triton_authors (git-ignored) and carry that folder to skip the compiles;
# AUTHORS_WARM="1.3B S400-T32768": first compile their configs for each of these cases in its own process, side by side
# (their compiles are CPU-bound; those processes' times, authors_warm_<case>.log, are contended and not used), within
# AUTHORS_WARM_TIMEOUT; AUTHORS_TIMEOUT=0 skips the timed run, e.g. to time on the warm cache in the next call),
# AB (bench_ab.py's interleaved timing, for differences of 1-3%: ';'-separated variants; AB_CASE: space-separated cases, default S400;
# AB_BWD=1 for forward+backward; AB_ROUNDS, default 15; AB_TIMEOUT, per case), MOSAIC_CONFIGS (experiments/mosaic_pass.py: the
# Mosaic passes' configurations block_v:stages:consumers, comma-separated, each mode timed beside the Triton kernel;
# MOSAIC_CASES, default 1.3B; MOSAIC_TIMEOUT). Writes under $OUT: device.txt, stages.log, profile.log, variants.log,
# ab.log and ab_<case>_<mode>.json, mosaic_pass.log and mosaic_pass.json, gpu_tests.log, bench.log,
# bench_ops.{json,md}.
# The whole GPU suite: TEST_ARGS="-n 4" TEST_TIMEOUT=470 FLA_BG=1 FLA_TIMEOUT=470 (473 s at daaf98b; "-n 6" beside
# the FLA test was slower: 31 of the 47 kernel tests within 390 s at c93f180).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
source experiments/gpu_setup.sh
if [ "${STAGES:-1}" = 1 ]; then
  timeout 120 python3 experiments/bench_stages.py 2>&1 | grep -E '^\{|Error' | tee "$OUT/stages.log"
fi
if [ "${PROFILE:-0}" = 1 ]; then
  timeout 120 python3 experiments/profile_op.py --case S400 --reps 5 --out /tmp/profile_op ${PROFILE_ARGS:-} 2>&1 | grep -v Warning \
    | head -30 | tee "$OUT/profile.log"
fi
if [ -n "${VARIANTS:-}" ]; then
  timeout ${VARIANTS_TIMEOUT:-150} python3 experiments/bench_ops.py --cases ${VARIANTS_CASES:-S400} --impls pallas --reps 20 --decode "" \
    $([ "${VARIANTS_BWD:-0}" = 1 ] || echo --no-backward) --variants "$VARIANTS" --out /tmp/variants 2>&1 \
    | grep -E '^\{|Error' | tee "$OUT/variants.log"
fi
if [ -n "${AB:-}" ]; then
  for case in ${AB_CASE:-S400}; do
    timeout ${AB_TIMEOUT:-150} python3 experiments/bench_ab.py --case "$case" --rounds ${AB_ROUNDS:-15} \
      $([ "${AB_BWD:-0}" = 1 ] && echo --backward) --variants "$AB" --out "$OUT" 2>&1 | grep -E '^\{|Error' \
      | tee -a "$OUT/ab.log"
  done
fi
if [ -n "${MOSAIC_CONFIGS:-}" ]; then
  timeout ${MOSAIC_TIMEOUT:-240} python3 experiments/mosaic_pass.py --cases ${MOSAIC_CASES:-1.3B} \
    --configs "$MOSAIC_CONFIGS" --out "$OUT" 2>&1 | grep -E '^\{|Error' | tee "$OUT/mosaic_pass.log"
fi
fla_pid=
if [ "${FLA_BG:-0}" = 1 ]; then  # the FLA parity test (Triton autotuning: minutes) beside the kernel tests
  fla_parity ${FLA_TIMEOUT:-280} &
  fla_pid=$!
fi
[ "${TESTS:-1}" = 1 ] && timeout ${TEST_TIMEOUT:-400} python3 -m pytest tests/test_pallas.py tests/test_pallas_mosaic.py tests/test_pallas_prep.py tests/test_model_parity_fla.py -k "${TEST_K:-gpu or fla}" -v -p no:cacheprovider --durations=8 ${TEST_ARGS:-} \
  2>&1 | tee "$OUT/gpu_tests.log" | grep -E "PASS|FAIL|ERROR|passed|failed|Error|s call" | tail -30
[ -n "$fla_pid" ] && { wait $fla_pid; grep -E "parity|PASS|FAIL|passed|failed" "$OUT/fla.log" | tail -4; }
if [ -n "${AUTHORS_ROOT:-}" ]; then
  # Their Triton kernels compile every autotuning config on a fresh machine (minutes): keep Triton's compile cache
  # in .triton_authors when it was carried (made from a previous call's triton_authors.tgz), and send it back.
  cache=/tmp/triton_authors; [ -d .triton_authors ] && cache=$PWD/.triton_authors
  pids=()
  for case in ${AUTHORS_WARM:-}; do
    TRITON_CACHE_DIR=$cache timeout ${AUTHORS_WARM_TIMEOUT:-300} python3 experiments/bench_authors.py --no-gdn \
      --fla-root "$AUTHORS_ROOT" --cases "$case" --out "/tmp/authors_warm_$case" > "$OUT/authors_warm_$case.log" 2>&1 &
    pids+=($!)
  done
  [ ${#pids[@]} -gt 0 ] && { wait "${pids[@]}"; grep -h '^{' "$OUT"/authors_warm_*.log; }
  # shellcheck disable=SC2086
  [ "${AUTHORS_TIMEOUT:-180}" != 0 ] && TRITON_CACHE_DIR=$cache timeout ${AUTHORS_TIMEOUT:-180} python3 \
    experiments/bench_authors.py --fla-root "$AUTHORS_ROOT" --out "$OUT" ${AUTHORS_ARGS:-} 2>&1 | grep -vi warning \
    | tee "$OUT/authors.log" | tail -8
  # (a file over 16 MiB does not come back: 28 MiB on 2026-12-02 at the S400 case alone, so it stays behind then)
  [ -d "$cache" ] && tar czf /tmp/triton_authors.tgz -C "$cache" . && du -h /tmp/triton_authors.tgz \
    && [ "$(stat -c %s /tmp/triton_authors.tgz)" -lt 16000000 ] && mv /tmp/triton_authors.tgz "$OUT/"
fi
if [ "${BENCH:-1}" = 1 ]; then
  timeout ${BENCH_TIMEOUT:-200} python3 experiments/bench_ops.py --out "$OUT" ${BENCH_ARGS:-} 2>&1 \
    | tee "$OUT/bench.log" | tail -12
fi
