// CUDA kernel of diffusion_step: one thread per Philox block of four stream positions, so each
// thread draws its normals once; same arithmetic as the CPU kernel (common/diffusion.h).
// Seed, offset and timesteps are read on the device: no host synchronisation, graph-capturable.
// A timestep outside [0, T) trips a device-side assertion (checking it on the host would sync).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>

#include "common/diffusion.h"

namespace lgm {

void check_diffusion_step(const at::Tensor& x, const at::Tensor& model_output, const at::Tensor& timestep,
                          const at::Tensor& coef, const at::Tensor& seed_offset, double clip_range);

__global__ void diffusion_step_kernel(const float* __restrict__ x, const float* __restrict__ model_output,
                                      const int64_t* __restrict__ timestep, const float* __restrict__ coef,
                                      const int64_t* __restrict__ seed_offset, float* __restrict__ out,
                                      int64_t total, int64_t per_sample, int64_t num_t, float clip) {
  const uint64_t seed = static_cast<uint64_t>(seed_offset[0]);
  const uint64_t offset = static_cast<uint64_t>(seed_offset[1]);
  const uint64_t first = offset >> 2;
  const uint64_t blocks = ((offset + total - 1) >> 2) - first + 1;
  for (uint64_t b = blockIdx.x * static_cast<uint64_t>(blockDim.x) + threadIdx.x; b < blocks;
       b += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint64_t block = first + b;
    float values[4];
    bool drawn = false;
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      const uint64_t position = block * 4 + lane;
      if (position < offset || position - offset >= static_cast<uint64_t>(total)) continue;
      const int64_t i = static_cast<int64_t>(position - offset);
      const int64_t t = timestep[i / per_sample];
      CUDA_KERNEL_ASSERT(t >= 0 && t < num_t);
      const float* c = coef + t * kStepCoefficients;
      float value = diffusion_step_mean(x[i], model_output[i], c, clip);
      const float sigma = __ldg(c + 5);
      if (sigma != 0.0f) {
        if (!drawn) {
          philox_normal4(seed, block, values);
          drawn = true;
        }
        value += sigma * values[lane];
      }
      out[i] = value;
    }
  }
}

at::Tensor diffusion_step_cuda(const at::Tensor& x, const at::Tensor& model_output, const at::Tensor& timestep,
                               const at::Tensor& coef, const at::Tensor& seed_offset, double clip_range) {
  check_diffusion_step(x, model_output, timestep, coef, seed_offset, clip_range);
  TORCH_CHECK(x.is_cuda(), "diffusion_step: CUDA kernel got x on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  const auto xc = x.contiguous();
  const auto oc = model_output.contiguous();
  const auto tc = timestep.contiguous();
  const auto cc = coef.contiguous();
  const auto so = seed_offset.contiguous();
  at::Tensor result = at::empty_like(xc, at::MemoryFormat::Contiguous);
  const int64_t total = xc.numel();
  if (total == 0) return result;
  const int64_t per = total / xc.size(0);
  const int threads = 256;
  const int64_t work = total / 4 + 2;  // Philox blocks touched, worst alignment
  const int blocks = static_cast<int>(std::min<int64_t>((work + threads - 1) / threads, 65535LL * 8));
  diffusion_step_kernel<<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
      xc.data_ptr<float>(), oc.data_ptr<float>(), tc.data_ptr<int64_t>(), cc.data_ptr<float>(),
      so.data_ptr<int64_t>(), result.data_ptr<float>(), total, per, cc.size(0), static_cast<float>(clip_range));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CUDA, m) {
  m.impl("diffusion_step", &lgm::diffusion_step_cuda);
}
