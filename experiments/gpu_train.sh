#!/usr/bin/env bash
# One device call: the 400M MDN training run (throughput, MFU, memory, loss curve, profile), the generation
# benchmark, the FLA parity test. Usage (GPU machine, repo root): MDN_COMMIT=<sha> bash experiments/gpu_train.sh
# Env: STEPS (default 120), EVAL_EVERY (0), PROFILE (30:32), TRAIN_ARGS (extra key=value overrides for every run),
# TRAIN_TIMEOUT, VARIANTS (';'-separated override sets, each one more run after the first, overriding TRAIN_ARGS;
# see below), GEN (0: skip the generation benchmark), GEN_ARGS, GEN_TIMEOUT, FLA (1: run the FLA parity test),
# FLA_TIMEOUT (90), HLO (1: dump the first run's optimized HLO and trace its profile's largest fusion kernels to
# their source lines, fusions.md). Writes under $OUT: device.txt, train.log, metrics.jsonl, train_profile.{json,md},
# bench_generate.{json,log}, fla.log, fusions.md. On an H100 (9369e1f) the set-up takes 12 s and the train step's
# compile 246 s (400M, 21 layers; 47 s with model.scan_layers=true): give TRAIN_TIMEOUT at least 300 s.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 TIKTOKEN_CACHE_DIR=
source experiments/gpu_setup.sh
if [ "${FLA:-1}" = 1 ]; then
  fla_parity ${FLA_TIMEOUT:-90}; grep -E "PASS|FAIL|parity|Error" "$OUT/fla.log" | tail -5
fi
RUN=/tmp/run400m
train() {  # the 400M preset: GPT-2 BPE on the embedded Shakespeare corpus, seq 4096, 16 x 4096 tokens per step
  rm -rf $RUN
  timeout ${TRAIN_TIMEOUT:-330} python3 -m mdn_jax.cli train --config 400M --out $RUN steps=${STEPS:-120} \
    warmup_steps=20 log_every=10 eval_every=${EVAL_EVERY:-0} eval_batches=2 ckpt_every=100000 sample_tokens=0 progress=false \
    tensorboard=false profile_steps=${PROFILE:-30:32} ${TRAIN_ARGS:-} "$@" 2>&1 | tee -a "$OUT/train.log"
  return ${PIPESTATUS[0]}
}
# micro-batch 4 x 4096 without rematerialisation; if that fails (not by the timeout: a second compile would not
# fit either), rematerialise each block
flags=${XLA_FLAGS:-}
[ "${HLO:-0}" = 1 ] && export XLA_FLAGS="$flags --xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text"  # the first run only
train batch_size=16 grad_accum=4; rc=$?
if [ $rc -ne 0 ] && [ $rc -ne 124 ]; then
  echo "exit $rc: retrying with model.remat=true" | tee -a "$OUT/train.log"
  rm -rf /tmp/hlo; train batch_size=16 grad_accum=4 model.remat=true
fi
export XLA_FLAGS="$flags"
cp $RUN/metrics.jsonl "$OUT/" 2>/dev/null
timeout 60 python3 experiments/trace_summary.py $RUN/profile --out "$OUT/train_profile.json" | head -30
[ "${HLO:-0}" = 1 ] && timeout 120 python3 experiments/hlo_fusions.py /tmp/hlo --summary "$OUT/train_profile.json" \
  --top 8 --out "$OUT/fusions.md" | cut -c1-400
# VARIANTS="model.scan_layers=true;loss_chunk=0": more runs of the same step, one per ';'-separated set of overrides,
# each with its log (train_vN.log), metrics (metrics_vN.jsonl) and profile summary (train_profile_vN.json)
IFS=';' read -ra variants <<< "${VARIANTS:-}"
for i in "${!variants[@]}"; do
  echo "variant v$i: ${variants[$i]}" | tee -a "$OUT/train.log"
  RUN=/tmp/run400m_v$i
  # shellcheck disable=SC2086 # each variant is a space-separated list of overrides
  train batch_size=16 grad_accum=4 ${variants[$i]} > "$OUT/train_v$i.log" 2>&1
  grep -E "compiled|train step" "$OUT/train_v$i.log" | tail -4
  cp $RUN/metrics.jsonl "$OUT/metrics_v$i.jsonl" 2>/dev/null
  timeout 60 python3 experiments/trace_summary.py $RUN/profile --out "$OUT/train_profile_v$i.json" | head -12
done
[ "${GEN:-1}" = 1 ] && timeout ${GEN_TIMEOUT:-150} python3 experiments/bench_generate.py --out "$OUT" ${GEN_ARGS:-} 2>&1 \
  | tee "$OUT/bench_generate.log" | tail -12
