// CUDA kernel of philox_normal: one thread per Philox block, same arithmetic as the CPU kernel.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <torch/library.h>

#include "common/philox.h"

namespace lgm {

void check_seed_offset(const at::Tensor& seed_offset, c10::SymIntArrayRef size);

__global__ void philox_normal_kernel(const int64_t* __restrict__ seed_offset, float* __restrict__ out,
                                     int64_t n) {
  // Seed and offset are read on the device, so a captured CUDA graph can replay new draws.
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]);
  const uint64_t offset = static_cast<uint64_t>(seed_offset[1]);
  const uint64_t first = offset / 4;
  const uint64_t blocks = (offset + n - 1) / 4 - first + 1;
  for (uint64_t b = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; b < blocks;
       b += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    float values[4];
    const uint64_t block = first + b;
    philox_normal4(seed, block, values);
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const uint64_t position = block * 4 + lane;
      if (position >= offset && position - offset < static_cast<uint64_t>(n)) {
        out[position - offset] = values[lane];
      }
    }
  }
}

at::Tensor philox_normal_cuda(const at::Tensor& seed_offset, c10::SymIntArrayRef size) {
  check_seed_offset(seed_offset, size);
  TORCH_CHECK(seed_offset.is_cuda(), "philox_normal: seed_offset must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(seed_offset.device());
  const auto so = seed_offset.contiguous();
  at::Tensor out = at::empty(C10_AS_INTARRAYREF_SLOW(size), so.options().dtype(at::kFloat));
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int threads = 256;
  // Enough blocks for the worst alignment: n / 4 + 2 Philox blocks.
  const int64_t work = n / 4 + 2;
  const int64_t max_blocks = 65535LL * 8;
  const int blocks = static_cast<int>(std::min((work + threads - 1) / threads, max_blocks));
  philox_normal_kernel<<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      so.data_ptr<int64_t>(), out.data_ptr<float>(), n);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CUDA, m) {
  m.impl("philox_normal", &lgm::philox_normal_cuda);
}
