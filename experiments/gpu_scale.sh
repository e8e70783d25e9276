#!/usr/bin/env bash
# One device call on a 2-GPU machine (nvidia-h200-x2): data-parallel scaling of `mdn-jax train`, the 400M config at
# seq 4096, the same per-device batch on 1 GPU (CUDA_VISIBLE_DEVICES=0) and then on 2 GPUs with FSDP (mesh data=1
# fsdp=2: parameters and Adam moments sharded over fsdp by the `embed -> fsdp` rule, 99.9% of the elements; the
# batch over fsdp). Each run compiles the train step once (about 2 minutes for the 400M config); the throughput is
# the loop's own: median over the logged windows after step 1 (step 1 holds the compile).
# Usage (GPU machine, repo root, .whl carried): MDN_COMMIT=<sha> bash experiments/gpu_scale.sh
# Env: PER_DEV_BATCH (16 rows per device per optimizer step), GRAD_ACCUM (4: micro-batch 4 x SEQ per device, the
#   one-H100 setting of h100_2026-11-23_838af13_train, 42.9 GiB without remat), STEPS (30), LOG_EVERY (5),
#   SEQ (4096), CONFIG (400M), SCALE_ARGS (extra key=value overrides for every run), DP (0; 1: then a 2-GPU pure
#   data-parallel run, mesh data=2 fsdp=1, if DP_MIN_S=200 s of the budget are left; only: DP instead of FSDP),
#   BUDGET_S (560: the whole script; each run's `timeout` comes out of it), RUN1_TIMEOUT (250), RUN2_TIMEOUT (300),
#   CPU_SIM (1: simulated CPU devices instead of GPUs, to check the plumbing, e.g. CONFIG=tiny SEQ=128).
# Writes under $OUT (8 files at most): device.txt, train_1gpu.log, train_2gpu.log (the DP run's log appended),
#   metrics_1gpu.jsonl, metrics_2gpu.jsonl, metrics_2gpu_dp.jsonl (DP only), scaling.json, scaling.md.
SECONDS=0
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92} TIKTOKEN_CACHE_DIR=
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # no NVLink multicast
if [ "${CPU_SIM:-0}" = 1 ]; then
  set -u; export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
  python3 -c "import jax; print(jax.__version__, 'simulated CPU devices')" | tee "$OUT/device.txt"
else
  source experiments/gpu_setup.sh
  nvidia-smi topo -m >> "$OUT/device.txt" 2>&1
fi
CONFIG=${CONFIG:-400M} SEQ=${SEQ:-4096} PER_DEV_BATCH=${PER_DEV_BATCH:-16} GRAD_ACCUM=${GRAD_ACCUM:-4}
STEPS=${STEPS:-30} LOG_EVERY=${LOG_EVERY:-5} BUDGET_S=${BUDGET_S:-560} DP=${DP:-0}
RUNS=${RUNS_DIR:-/tmp/mdn_scale}

left() { echo $((BUDGET_S - SECONDS - $1)); }  # seconds of the budget left, keeping $1 in reserve
min() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }

train_run() {  # $1 name, $2 file tag, $3 devices, $4 timeout (s), rest: overrides (the mesh)
  local name=$1 tag=$2 n=$3 t=$4 log=$OUT/train_${2%_dp}.log envs; shift 4
  if [ "${CPU_SIM:-0}" = 1 ]; then envs="JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$n"
  else envs="CUDA_VISIBLE_DEVICES=$(seq -s, 0 $((n - 1)))"; fi
  if [ "$t" -lt 60 ]; then echo "== scale run $name: skipped, ${t} s of the budget left" | tee -a "$log"; return 124; fi
  rm -rf "$RUNS/$name"
  echo "== scale run $name: devices $n ($envs), per-device batch $PER_DEV_BATCH x $SEQ (grad_accum $GRAD_ACCUM)," \
       "global batch $((PER_DEV_BATCH * n)), timeout $t s, start $(date +%s.%N)" | tee -a "$log"
  # timeout -k: SIGTERM does not stop a compile (the loop's handler runs between steps), SIGKILL does
  env $envs timeout -k 20 "$t" python3 -m mdn_jax.cli train --config "$CONFIG" --out "$RUNS/$name" steps="$STEPS" \
    seq_len="$SEQ" batch_size=$((PER_DEV_BATCH * n)) grad_accum="$GRAD_ACCUM" model.remat=false warmup_steps=10 \
    log_every="$LOG_EVERY" eval_every=0 ckpt_every=100000 sample_tokens=0 progress=false tensorboard=false \
    "$@" ${SCALE_ARGS:-} 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== scale run $name: rc $rc, end $(date +%s.%N)" | tee -a "$log"
  cp "$RUNS/$name/metrics.jsonl" "$OUT/metrics_$tag.jsonl" 2>/dev/null
  rm -rf "$RUNS/$name"  # the final checkpoint (5 GB for 400M) and params export
  return "$rc"
}

status=0
train_run 1gpu 1gpu 1 "$(min "${RUN1_TIMEOUT:-250}" "$(left 60)")" mesh_data=1 mesh_fsdp=1 || status=1
summary_args=(--run "1gpu:1:$OUT/metrics_1gpu.jsonl:$OUT/train_1gpu.log")
if [ "$DP" != only ]; then
  train_run 2gpu_fsdp 2gpu 2 "$(min "${RUN2_TIMEOUT:-300}" "$(left 15)")" mesh_data=1 mesh_fsdp=2 || status=1
  summary_args+=(--run "2gpu_fsdp:2:$OUT/metrics_2gpu.jsonl:$OUT/train_2gpu.log")
fi
if [ "$DP" = 1 ] || [ "$DP" = only ]; then
  t=$(left 15)
  if [ "$DP" = only ] || [ "$t" -ge "${DP_MIN_S:-200}" ]; then
    train_run 2gpu_dp 2gpu_dp 2 "$(min "${RUN2_TIMEOUT:-300}" "$t")" mesh_data=2 mesh_fsdp=1 || status=1
    summary_args+=(--run "2gpu_dp:2:$OUT/metrics_2gpu_dp.jsonl:$OUT/train_2gpu.log")
  else
    echo "== scale run 2gpu_dp: skipped, $t s of the budget left (DP_MIN_S ${DP_MIN_S:-200})" | tee -a "$OUT/train_2gpu.log"
  fi
fi
timeout 30 python3 experiments/scaling_summary.py "${summary_args[@]}" --out "$OUT/scaling" \
  --note "config $CONFIG, seq $SEQ, per-device batch $PER_DEV_BATCH x $SEQ as $GRAD_ACCUM micro-batches, $STEPS steps,\
 log every $LOG_EVERY, model.remat=false, commit ${MDN_COMMIT:-unknown}; script wall $SECONDS s at the summary" || status=1
echo "gpu_scale.sh: done in $SECONDS s, status $status"
exit $status
