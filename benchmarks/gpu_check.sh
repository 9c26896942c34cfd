#!/usr/bin/env bash
# The GPU checks that CI cannot run, prepared for a session that is lent a GPU machine (device
# tool: about 15 minutes of device time in all, at most 10 per call). Two calls on one machine:
#
#   here, once (fills .gpu/, ignored by git: MNIST and the diffusers wheels, 17 MB):
#       bash benchmarks/gpu_check.sh prepare
#   device call 1 (carry [".gpu"], timeout_s 560): build, CUDA tests, compute-sanitizer
#       bash benchmarks/gpu_check.sh checks
#   device call 2 at once, on the warm machine (same carry): the GPU benchmarks
#       bash benchmarks/gpu_check.sh bench
#
# Everything goes to $OUT (log.txt and one file per step); copy what came back to
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
export PYTHONPATH=/tmp/site:$root PYTHONUNBUFFERED=1 LGM_DATA_DIR=$gpu/mnist
export LGM_OPS_CACHE=${LGM_OPS_CACHE:-$root/build/lgm_ops} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}

step() {  # step LIMIT_S NAME COMMAND...: runs COMMAND, its output also in $OUT/NAME.txt
  local limit=$1 name=$2
  shift 2
  echo "== $name: $* (limit ${limit}s) $(date +%T)"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "== $name: rc ${PIPESTATUS[0]} $(date +%T)"
}

case "$mode" in
  checks)
    step 30 gpu nvidia-smi
    step 30 versions python3 -c "import torch, lightning, torchmetrics; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0), lightning.__version__, torchmetrics.__version__)"
    step 240 build python3 -c "from lightning_genmodels.ops import load_library; info = load_library(); \
print(info); assert info.with_cuda, 'the extension was built without CUDA'"
    step 150 pytest_cuda python3 -m pytest -q -p no:cacheprovider -k "cuda or Cuda" tests/ops \
      tests/diffusion/test_sampling_cuda.py tests/gmm/test_module.py
    step 150 memcheck compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/gpu_sanitize.py
    ;;
  bench)
    step 200 gmm_em_cuda python3 benchmarks/gmm_em.py --device cuda --quick --large --repeats 3 \
      --json "$OUT/gmm_em_cuda.json"
    step 200 diffusion_cuda python3 benchmarks/diffusion_sampling.py --device cuda --repeats 3 \
      --json "$OUT/diffusion_cuda.json"
    ;;
  *)
    echo "usage: $0 prepare|checks|bench" >&2
    exit 2
    ;;
esac
