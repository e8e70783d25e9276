#!/usr/bin/env bash
# One device call (one H100, about 8 minutes in all): a cut of the MQAR grid (MDN vs GDN vs Transformer, two seeds
# for MDN and GDN) and a trimmed LM comparison (issue 8).
# Usage (GPU machine, repo root): MDN_COMMIT=<sha> bash experiments/gpu_experiments.sh
# Writes under $OUT (7 files): device.txt, mqar.log, mqar_gpu.{json,md}, lm_compare.log, lm_compare_gpu.{json,md}.
# Both scripts rewrite their JSON/md after every run, so a step stopped by its `timeout` leaves what it finished
# (status "partial ..." in the files); mqar.py also stops by itself before a run that would pass MQAR_BUDGET.
#
# What is cut from the presets (the JSON/md files say it too, under "cut" / "trimmed"):
#   MQAR `gpu`: widths 64 128 256 -> 64 128; tasks 64:4 128:8 256:16 512:32 -> 256:16 512:32; steps 2000 -> 800;
#     seeds 0 -> 0 1 for MDN and GDN (0 for the Transformer); lrs 1e-3 3e-3, vocab 8192, batch 64, 1000 test
#     examples, 2 layers unchanged. Both tasks run in models compiled at T=512 (T=256 padded at the end: causal
#     models, same computation), so there is one compilation per (model, width): 6, and 40 runs.
#   LM `gpu`: steps 1500 -> 600 (warm-up 150 -> 60; 24.6M -> 9.8M tokens per model), eval every 250 -> 200 steps.
# Time estimate (H100; not measured yet, the logs will say): MQAR ~230 s (6 compilations 95-120 s: MDN/GDN train
# step + init + predict ~20-25 s each, Transformer ~10 s; 32 MDN/GDN runs x (800 steps x ~3.5 ms + ~0.3 s) ~100 s;
# 8 Transformer runs ~10 s; start ~10 s), stopped by its own budget at 215 s (the last runs of the second seed go
# first); LM ~215 s (MDN or GDN: train-step compile ~40 s, eval-step ~15 s, 600 steps x ~27 ms ~16 s, data and
# checkpoint ~10 s; Transformer ~45 s; start ~8 s); set-up ~15 s. Worst case with the timeouts: ~8 min.
# Env: MQAR_STEPS (800), MQAR_BUDGET (215 s), MQAR_TIMEOUT (245 s), MQAR_ARGS (replaces the cut flags), LM_STEPS
# (600), LM_EVAL_EVERY (200), LM_TIMEOUT (220 s), LM=0 / MQAR=0 skip a part, PRESET (gpu; the CPU check of this
# script: JAX_PLATFORMS=cpu PRESET=cpu-smoke MQAR_ARGS="--widths 8 16 --tasks 32:4 64:8 --lrs 1e-3 3e-3 --seeds 0 1
# --model-seeds transformer=0" MQAR_STEPS=3 LM_STEPS=4 LM_EVAL_EVERY=2 OUT=/tmp/x bash experiments/gpu_experiments.sh).
export TIKTOKEN_CACHE_DIR=
source experiments/gpu_setup.sh
t0=$SECONDS

if [ "${MQAR:-1}" = 1 ]; then
  MQAR_ARGS=${MQAR_ARGS:-"--widths 64 128 --tasks 256:16 512:32 --lrs 1e-3 3e-3 --seeds 0 1 --model-seeds transformer=0"}
  # shellcheck disable=SC2086
  timeout -k 30 ${MQAR_TIMEOUT:-245} python3 experiments/mqar.py --preset ${PRESET:-gpu} $MQAR_ARGS --steps ${MQAR_STEPS:-800} \
    --time-budget ${MQAR_BUDGET:-215} --out "$OUT" > "$OUT/mqar.log" 2>&1
  echo "mqar: rc $? after $((SECONDS - t0)) s"
  grep -E "compiled|partial|Error|error" "$OUT/mqar.log" | tail -12
  sed -n '/^| model | width | params/,/^$/p' "$OUT/mqar_${PRESET:-gpu}.md" 2>/dev/null
  sed -n '/^| width | task/,/^$/p' "$OUT/mqar_${PRESET:-gpu}.md" 2>/dev/null
  grep -E "^Status" "$OUT/mqar_${PRESET:-gpu}.md" 2>/dev/null
fi

if [ "${LM:-1}" = 1 ]; then
  t1=$SECONDS
  rm -rf /tmp/lm_compare_runs
  timeout -k 30 ${LM_TIMEOUT:-220} python3 experiments/lm_compare.py --preset ${PRESET:-gpu} --steps ${LM_STEPS:-600} \
    --eval-every ${LM_EVAL_EVERY:-200} --runs /tmp/lm_compare_runs --out "$OUT" > "$OUT/lm_compare.log" 2>&1
  echo "lm_compare: rc $? after $((SECONDS - t1)) s"
  grep -E "^train step +1 |stopped at step|Error" "$OUT/lm_compare.log" | tail -8
  grep -E "^\*\*(Trimmed|Changed)" "$OUT/lm_compare_${PRESET:-gpu}.md" 2>/dev/null
  sed -n '/^Status/,$p' "$OUT/lm_compare_${PRESET:-gpu}.md" 2>/dev/null
fi
echo "total $((SECONDS - t0)) s after set-up"
