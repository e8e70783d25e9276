#!/usr/bin/env bash
# One device call (one GPU, about 9.5 minutes): a cut of the MQAR grid (MDN vs GDN vs Transformer, two seeds for MDN
# and GDN) and the LM comparison (issue 8).
# Usage (GPU machine, repo root): MDN_COMMIT=<sha> bash experiments/gpu_experiments.sh
# Writes under $OUT (7 files): device.txt, mqar.log, mqar_gpu.{json,md}, lm_compare.log, lm_compare_gpu.{json,md}.
# Both scripts rewrite their JSON/md after every run, so a step stopped by its `timeout` leaves what it finished
# (status "partial ..." in the files); mqar.py also stops by itself before a run that would pass MQAR_BUDGET.
#
# Measured on an H200 at 09db149 with the earlier defaults (vocab 8192, tasks 256:16 512:32, 800 steps, LM with all
# three models): 442 s; per (model, width) one compilation of 15-39 s, 3-4 s per MQAR run; the 215 s budget ended
# the grid after 20 of 40 runs, and no model left the loss plateau (accuracy <= 0.002): 800 steps are far too few
# at vocab 8192. LM: MDN 101 s, GDN 76 s, then the Transformer was stopped at step 369 by the 220 s timeout.
# So the defaults now are: MQAR at vocab 256, tasks 128:16 256:32 (compiled at T=256), widths 64 128, 1500 steps,
# lrs 1e-3 3e-3, seeds 0 1 for MDN/GDN and 0 for the Transformer; then the LM comparison of the Transformer alone
# (LM_ARGS; its MDN and GDN rows at the same seed and settings are in results/h200_2026-12-01_09db149_experiments).
# Measured on an H200 at 07a86da (MQAR only, budget 195 s): compilations at width 64 MDN 39 s, GDN 34 s,
# Transformer 15 s, 3-7 s per run; the budget ended the grid after the 12 width-64 seed-0 runs (154 s). The whole
# grid (6 compilations, 40 runs) needs ~420 s, hence the budget default 420 s; the Transformer LM run ~70 s
# (600 steps at ~400k tokens/s plus compilation): ~9.5 minutes in all, one call of the device's 600 s limit.
# The JSON/md files say what differs from the presets ("cut", "trimmed").
# Env: MQAR_STEPS (1500), MQAR_BUDGET (420 s), MQAR_TIMEOUT (440 s), MQAR_ARGS (replaces the cut flags), LM_STEPS
# (600), LM_EVAL_EVERY (200), LM_ARGS (--models transformer), LM_TIMEOUT (110 s), LM=0 / MQAR=0 skip a part,
# PRESET (gpu; the CPU check of this script: JAX_PLATFORMS=cpu PRESET=cpu-smoke MQAR_ARGS="--widths 8 16 --tasks
# 32:4 64:8 --lrs 1e-3 3e-3 --seeds 0 1 --model-seeds transformer=0" MQAR_STEPS=3 LM_STEPS=4 LM_EVAL_EVERY=2
# OUT=/tmp/x bash experiments/gpu_experiments.sh).
export TIKTOKEN_CACHE_DIR=
source experiments/gpu_setup.sh
t0=$SECONDS

if [ "${MQAR:-1}" = 1 ]; then
  MQAR_ARGS=${MQAR_ARGS:-"--widths 64 128 --tasks 128:16 256:32 --vocab 256 --lrs 1e-3 3e-3 --seeds 0 1 --model-seeds transformer=0"}
  # shellcheck disable=SC2086
  timeout -k 10 ${MQAR_TIMEOUT:-440} python3 experiments/mqar.py --preset ${PRESET:-gpu} $MQAR_ARGS --steps ${MQAR_STEPS:-1500} \
    --time-budget ${MQAR_BUDGET:-420} --out "$OUT" > "$OUT/mqar.log" 2>&1
  echo "mqar: rc $? after $((SECONDS - t0)) s"
  grep -E "compiled|partial|Error|error" "$OUT/mqar.log" | tail -12
  sed -n '/^| model | width | params/,/^$/p' "$OUT/mqar_${PRESET:-gpu}.md" 2>/dev/null
  sed -n '/^| width | task/,/^$/p' "$OUT/mqar_${PRESET:-gpu}.md" 2>/dev/null
  grep -E "^Status" "$OUT/mqar_${PRESET:-gpu}.md" 2>/dev/null
fi

if [ "${LM:-1}" = 1 ]; then
  t1=$SECONDS
  rm -rf /tmp/lm_compare_runs
  # shellcheck disable=SC2086
  timeout -k 10 ${LM_TIMEOUT:-110} python3 experiments/lm_compare.py --preset ${PRESET:-gpu} --steps ${LM_STEPS:-600} \
    --eval-every ${LM_EVAL_EVERY:-200} ${LM_ARGS:---models transformer} --runs /tmp/lm_compare_runs --out "$OUT" \
    > "$OUT/lm_compare.log" 2>&1
  echo "lm_compare: rc $? after $((SECONDS - t1)) s"
  grep -E "^train step +1 |stopped at step|Error" "$OUT/lm_compare.log" | tail -8
  grep -E "^\*\*(Trimmed|Changed)" "$OUT/lm_compare_${PRESET:-gpu}.md" 2>/dev/null
  sed -n '/^Status/,$p' "$OUT/lm_compare_${PRESET:-gpu}.md" 2>/dev/null
fi
echo "total $((SECONDS - t0)) s after set-up"
