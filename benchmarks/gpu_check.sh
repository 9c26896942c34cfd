#!/usr/bin/env bash
# The GPU checks that CI cannot run, prepared for a session that is lent a GPU machine (device
# tool: about 15 minutes of device time in all, at most 10 per call). On an H200 (2026-11-26) a
# machine started in about 35 s and `all` ran in about 3 minutes before its last step (the
# GPU-visible suite, which ran out its 150 s: see README "Known issues"):
#
#   here, once (fills .gpu/, ignored by git: MNIST, the diffusers and jsonargparse wheels, 18 MB):
#       bash benchmarks/gpu_check.sh prepare
#   one device call (carry [".gpu"], timeout_s 560): build, CUDA tests, benchmarks, compute-sanitizer,
#   then the op and model tests with the GPU visible
#       bash benchmarks/gpu_check.sh all
#   or some of its parts, in the order given (a machine idles back in 30 s):
#       bash benchmarks/gpu_check.sh checks bench throw unet   (build, CUDA tests, compute-sanitizer;
#           the GPU benchmarks; an error raised inside the ops; the UNet's rate per precision)
#       bash benchmarks/gpu_check.sh suite       (the op and model tests with the GPU visible)
#       bash benchmarks/gpu_check.sh tests sampling   (build and CUDA tests without compute-sanitizer;
#           whole sampling without the step benchmark)
#       RERUN_TESTS="tests/a.py::t ..." bash benchmarks/gpu_check.sh build rerun   (named tests only)
#       bash benchmarks/gpu_check.sh build tune   (inductor's tuning at 1024 images; max-autotune was
#           still autotuning after ~4 minutes on an H200, 2026-11-27: give it the call's whole time)
# On an H200 (2026-11-27, second session) `SUITE_LIMIT=215 ... tests sampling suite` took 451 s in all,
# the suite 197 s of it.
#
# Everything goes to $OUT (log.txt and the benchmarks' JSON); copy what came back to
# benchmarks/results/ with the GPU's name and the date. Each step has its own time limit, so a hang
# costs that step only. The device image has its own torch (2.11 when last seen) and no diffusers;
# the extension is built there for sm_90 into build/ (ignored, kept between calls on a warm machine).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
gpu=$root/.gpu
[ $# -gt 0 ] || set -- checks
mode=$1

if [ "$mode" = prepare ]; then
  set -e
  mkdir -p "$gpu/mnist" "$gpu/whl"
  cp "${LGM_DATA_DIR:-$root/../shared/data/mnist}"/*-ubyte.gz "$gpu/mnist/"
  # diffusers (benchmark-only) and what it needs beyond the device image's packages
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$gpu/whl" diffusers==0.42.1 importlib_metadata lazy-importer \
    "jsonargparse[signatures]==4.53.0" docstring_parser typeshed_client  # the CLI test (not in the device image)
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

build() {
  step 30 versions python3 -c "import torch, lightning, torchmetrics; print(torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name(0), lightning.__version__, torchmetrics.__version__)"
  step 240 build python3 -c "from lightning_genmodels.ops import load_library; info = load_library(); \
print(info); assert info.with_cuda, 'the extension was built without CUDA'"
}
checks() {
  step 30 gpu nvidia-smi
  build
  # pytest-timeout is in the device image: a hung test costs 60 s, not the call
  step 150 pytest_cuda python3 -m pytest -q -p no:cacheprovider --timeout 60 -rfEs -k "cuda or Cuda" tests/ops \
    tests/diffusion/test_sampling_cuda.py tests/gmm/test_module.py
}
memcheck() {
  step 120 memcheck compute-sanitizer --tool memcheck --error-exitcode 1 python3 benchmarks/gpu_sanitize.py
}
suite() {  # the model and op tests with a GPU visible (pytest-xdist is in the device image); -v names each
  # failure as it happens (a cut run loses pytest's summary: 2026-11-27, ~750 tests in 180 s); 8 workers
  # of 2 threads: 16 workers of 16 threads each (H100 run) oversubscribed the 16 cores
  OMP_NUM_THREADS=2 step ${SUITE_LIMIT:-240} pytest_gpu_visible python3 -m pytest -v -p no:cacheprovider -n 8 --timeout 120 -rfE \
    tests/ops tests/diffusion tests/gmm
}
throwcheck() {  # an error raised by the compiled ops themselves (crashed the GPU-visible suite on the H200)
  step 30 toolchain bash -c 'echo "CXX=${CXX:-} CC=${CC:-} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"; command -v c++ g++ gcc gdb;
    c++ --version | head -1; so=$(find "$LGM_OPS_CACHE" -name "*.so" | head -1); echo "$so";
    ldd "$so" | grep -E "stdc|gcc_s|gomp|c10|torch_python"; python3 -c "import torch; print(torch.__config__.show())" | head -8'
  step 30 throw python3 -X faulthandler -c "$THROW_PY"
  if command -v gdb >/dev/null; then
    step 60 throw_gdb gdb -q -batch -ex run -ex bt --args python3 -c "$THROW_PY"
  fi
}
THROW_PY='import torch
from lightning_genmodels.ops import load_library
load_library()
for args in [(torch.zeros(2, dtype=torch.int32), [3]), (torch.zeros(3, dtype=torch.int64), [3])]:
    try:
        torch.ops.lightning_genmodels.philox_normal(*args)
    except RuntimeError as exc:
        print("caught:", str(exc).splitlines()[0])'
unetrate() {
  # what could make the compiled UNet of a 1024-image step faster (2026-11-27: 1.94-2.0x diffusers there)
  step 180 unet_rate_cuda python3 benchmarks/diffusion_unet_rate.py --device cuda --repeats 5 --batches 1024 \
    --variants fp32 compiled compiled_bf16 compiled_channels_last compiled_cudnn_benchmark --json "$OUT/unet_rate_cuda.json"
}
sampling() {  # whole sampling only (the step op alone is unchanged since the 2026-11-26 records), with the
  # variants that might lift the compute-bound 1024-image case (2026-11-27: 1.94-2.0x diffusers there)
  step 300 diffusion_sampling_cuda python3 benchmarks/diffusion_sampling.py --device cuda --repeats 3 --skip-step \
    --variant ddim:50:1024 channels_last --variant ddim:50:1024 cudnn_benchmark --json "$OUT/diffusion_cuda.json"
}
tune() {  # inductor's own tuning for the 1024-image case (channels-last and cudnn.benchmark: 1.01x, 0.99x ours)
  step 240 diffusion_sampling_tune python3 benchmarks/diffusion_sampling.py --device cuda --repeats 3 --skip-step \
    --cases ddim:50:1024 --variant ddim:50:1024 coordinate_descent --variant ddim:50:1024 max_autotune \
    --json "$OUT/diffusion_cuda_tune.json"
}
rerun() {  # the tests named in RERUN_TESTS, with the GPU visible
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=2 step ${RERUN_LIMIT:-120} pytest_rerun python3 -m pytest -v -p no:cacheprovider -n 4 --timeout 110 \
    -rfE $RERUN_TESTS
}
bench() {
  step 180 diffusion_cuda python3 benchmarks/diffusion_sampling.py --device cuda --repeats 3 \
    --json "$OUT/diffusion_cuda.json"
  step 120 gmm_em_cuda python3 benchmarks/gmm_em.py --device cuda --quick --large --repeats 3 \
    --json "$OUT/gmm_em_cuda.json"
}

for mode in "$@"; do  # several modes run in order: gpu_check.sh checks bench throw
  case "$mode" in
    checks) checks; memcheck ;;
    tests) checks ;;
    sampling) sampling ;;
    bench) bench ;;
    throw) throwcheck ;;
    unet) unetrate ;;
    suite) suite ;;
    build) build ;;
    tune) tune ;;
    rerun) rerun ;;
    all) checks; bench; throwcheck; unetrate; memcheck; suite ;;  # by priority: a call cut at its limit loses the last first
    *)
      echo "usage: $0 prepare | MODE... (checks tests bench sampling throw unet suite build tune rerun all)" >&2
      exit 2
      ;;
  esac
done
grep -h "^== .*: rc" "$OUT/log.txt"
