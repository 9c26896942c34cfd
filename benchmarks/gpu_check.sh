#!/usr/bin/env bash
# The GPU checks that CI cannot run, prepared for a session that is lent a GPU machine (device
# tool: about 15 minutes of device time in all, at most 10 per call). On an H200 (2026-11-26) a
# machine started in about 35 s and `all` ran in about 3 minutes before its last step (the
# GPU-visible suite, which ran out its 150 s: see README "Known issues"):
#
#   here, once (fills .gpu/, ignored by git: MNIST and the diffusers wheels, 17 MB):
#       bash benchmarks/gpu_check.sh prepare
#   one device call (carry [".gpu"], timeout_s 560): build, CUDA tests, benchmarks, compute-sanitizer,
#   then the op and model tests with the GPU visible
#       bash benchmarks/gpu_check.sh all
#   or the two halves, the second at once on the warm machine (a machine idles back in 30 s):
#       bash benchmarks/gpu_check.sh checks      (build, CUDA tests, compute-sanitizer)
#       bash benchmarks/gpu_check.sh bench       (the GPU benchmarks)
#
# Everything goes to $OUT (log.txt and the benchmarks' JSON); copy what came back to
# benchmarks/results/ with the GPU's name and the date. Each step has its own time limit, so a hang
# costs that step only. The device image has its own torch (2.11 when last seen) and no diffusers;
# the extension is built there for sm_90 into build/ (ignored, kept between calls on a warm machine).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
gpu=$root/.gpu
mode=${1:-checks}

if [ "$mode" = prepare ]; then
  set -e
  mkdir -p "$gpu/mnist" "$gpu/whl"
  cp "${LGM_DATA_DIR:-$root/../shared/data/mnist}"/*-ubyte.gz "$gpu/mnist/"
  # diffusers (benchmark-only) and what it needs beyond the device image's packages
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$gpu/whl" diffusers==0.42.1 importlib_metadata lazy-importer
  du -sh "$gpu"
  exit 0
fi

OUT=${OUT:-$root/gpu_out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
cd "$root"
if [ -d "$gpu/whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$gpu"/whl/*.whl
fi
export PYTHONPATH=/tmp/site:$root PYTHONUNBUFFERED=1 LGM_DATA_DIR=$gpu/mnist LGM_MNIST_DIR=$gpu/mnist
export LGM_OPS_CACHE=${LGM_OPS_CACHE:-$root/build/lgm_ops} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

step() {  # step LIMIT_S NAME COMMAND...: runs COMMAND (its output in $OUT/log.txt: the device
  local limit=$1 name=$2  # tool returns at most 8 files, so one log and the JSON records)
  shift 2
  echo "== $name: $* (limit ${limit}s) $(date +%T)"
  timeout "$limit" "$@" 2>&1
  echo "== $name: rc $? $(date +%T)"
}

checks() {
  step 30 gpu nvidia-smi
  step 30 versions python3 -c "import torch, lightning, torchmetrics; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0), lightning.__version__, torchmetrics.__version__)"
  step 240 build python3 -c "from lightning_genmodels.ops import load_library; info = load_library(); \
print(info); assert info.with_cuda, 'the extension was built without CUDA'"
  # pytest-timeout is in the device image: a hung test costs 60 s, not the call
  step 150 pytest_cuda python3 -m pytest -q -p no:cacheprovider --timeout 60 -rfEs -k "cuda or Cuda" tests/ops \
    tests/diffusion/test_sampling_cuda.py tests/gmm/test_module.py
}
memcheck() {
  step 120 memcheck compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/gpu_sanitize.py
}
suite() {  # the model and op tests with a GPU visible (pytest-xdist is in the device image)
  step 150 pytest_gpu_visible python3 -m pytest -q -p no:cacheprovider -n 8 --timeout 120 -rfE tests/ops \
    tests/diffusion tests/gmm
}
bench() {
  step 180 diffusion_cuda python3 benchmarks/diffusion_sampling.py --device cuda --repeats 3 \
    --json "$OUT/diffusion_cuda.json"
  step 120 gmm_em_cuda python3 benchmarks/gmm_em.py --device cuda --quick --large --repeats 3 \
    --json "$OUT/gmm_em_cuda.json"
}

case "$mode" in
  checks) checks; memcheck ;;
  bench) bench ;;
  all) checks; bench; memcheck; suite ;;  # by priority: a call cut at its limit loses the last first
  *)
    echo "usage: $0 prepare|checks|bench|all" >&2
    exit 2
    ;;
esac
grep -h "^== .*: rc" "$OUT/log.txt"
