#!/usr/bin/env bash
# One device call: the authors' kernels and ours timed in one run at the given cases, then (optionally) the
# device time per kernel of T=32768's forward at several sequence-split segment counts.
# Usage (GPU machine, repo root; the authors' flash-linear-attention folder carried in .authors):
#   MDN_COMMIT=<sha> CASES=S400-T32768,1.3B bash experiments/gpu_side_by_side.sh
# Their Triton autotuning compiles every config on a fresh machine (~7 minutes at these two cases, CPU-bound).
# With a warm compile cache in $CACHE (a previous call on the same machine) both sides are timed one after the
# other on an idle GPU. Without one, each case warms and is timed in its own background process while our
# benchmark (and the profiles) run: their numbers are usable (within 2.5% of the sequential mode's on an H100,
# results/h100_2026-12-07_ff2ab94), ours are not (their autotuning on the GPU inflated some of ours 2x there), so
# call again on the same warm machine (within its idle release) for the sequential mode.
# Env: CASES, CACHE (/tmp/ta), AUTHORS_TIMEOUT (480), BENCH_TIMEOUT (150), SPLITS (e.g. "4 16": profile_op.py at MDN_SEQ_SPLIT=each, S400-T32768).
# Writes under $OUT: device.txt, authors*.log,
# bench_authors.json, bench.log, bench_ops.{json,md}, profile_T32768_G<g>.log, side_by_side.txt (which mode ran).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
source experiments/gpu_setup.sh
CASES=${CASES:-S400-T32768,1.3B} CACHE=${CACHE:-/tmp/ta} A=${AUTHORS_ROOT:-.authors/flash-linear-attention}
bench_ours() {
  timeout "${BENCH_TIMEOUT:-150}" python3 experiments/bench_ops.py --out "$OUT" --cases "$CASES" --impls pallas \
    --decode= > "$OUT/bench.log" 2>&1; tail -5 "$OUT/bench.log"
}
profiles() {  # device time per kernel of T=32768's forward at each segment count of $SPLITS
  for g in ${SPLITS:-}; do
    MDN_SEQ_SPLIT=$g timeout 90 python3 experiments/profile_op.py --case S400-T32768 --reps 5 --out "/tmp/profile_G$g" \
      2>&1 | grep -v Warning | head -25 > "$OUT/profile_T32768_G$g.log"
    echo "== G=$g"; head -14 "$OUT/profile_T32768_G$g.log"
  done
}
if [ -d "$CACHE" ]; then
  echo "sequential: their kernels on the warm cache $CACHE, then ours" | tee "$OUT/side_by_side.txt"
  TRITON_CACHE_DIR=$CACHE timeout "${AUTHORS_TIMEOUT:-480}" python3 experiments/bench_authors.py --no-gdn \
    --fla-root "$A" --cases "$CASES" --out "$OUT" > "$OUT/authors.log" 2>&1
  grep -h '^{' "$OUT/authors.log"
  bench_ours
  profiles
else
  echo "parallel: each case of theirs warms and is timed in its own process; ours during their compiles" \
    | tee "$OUT/side_by_side.txt"
  pids=()
  for c in ${CASES//,/ }; do
    TRITON_CACHE_DIR=$CACHE timeout "${AUTHORS_TIMEOUT:-480}" python3 experiments/bench_authors.py --no-gdn \
      --fla-root "$A" --cases "$c" --out "/tmp/authors_$c" > "$OUT/authors_$c.log" 2>&1 &
    pids+=($!)
  done
  bench_ours
  profiles  # (also during their compiles)
  wait "${pids[@]}"; grep -h '^{' "$OUT"/authors_*.log
fi
