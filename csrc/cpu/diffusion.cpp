// CPU kernel of diffusion_step: per sample, one pass computing the mean (vectorised), then the
// Philox noise (cpu/philox_batch.h) added in place while the sample is still in cache (only where sigma != 0).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>

#include "common/diffusion.h"
#include "cpu/philox_batch.h"

namespace lgm {

void check_stream_range(const char* op, int64_t offset, int64_t numel);  // cpu/philox.cpp

void check_diffusion_step(const at::Tensor& x, const at::Tensor& model_output, const at::Tensor& timestep,
                          const at::Tensor& coef, const at::Tensor& seed_offset, double clip_range) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "diffusion_step: x must be float32, got ", x.scalar_type());
  TORCH_CHECK(model_output.scalar_type() == at::kFloat, "diffusion_step: model_output must be float32, got ",
              model_output.scalar_type());
  TORCH_CHECK(coef.scalar_type() == at::kFloat, "diffusion_step: coef must be float32, got ", coef.scalar_type());
  TORCH_CHECK(timestep.scalar_type() == at::kLong, "diffusion_step: timestep must be int64, got ",
              timestep.scalar_type());
  TORCH_CHECK(seed_offset.scalar_type() == at::kLong && seed_offset.dim() == 1 && seed_offset.numel() == 2,
              "diffusion_step: seed_offset must be an int64 tensor [2] = (seed, offset), got ",
              seed_offset.scalar_type(), " of shape ", seed_offset.sizes());
  TORCH_CHECK(x.dim() >= 1, "diffusion_step: x must be [N, ...], got shape ", x.sizes());
  TORCH_CHECK(model_output.sizes() == x.sizes(), "diffusion_step: model_output must have the shape of x ",
              x.sizes(), ", got ", model_output.sizes());
  TORCH_CHECK(timestep.dim() == 1 && timestep.size(0) == x.size(0), "diffusion_step: timestep must be [N] = [",
              x.size(0), "], got shape ", timestep.sizes());
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == kStepCoefficients && coef.size(0) >= 1,
              "diffusion_step: coef must be [T, 6], got shape ", coef.sizes());
  TORCH_CHECK(clip_range >= 0.0, "diffusion_step: clip_range must be >= 0, got ", clip_range);
  for (const at::Tensor* t : {&model_output, &timestep, &coef, &seed_offset}) {
    TORCH_CHECK(t->device() == x.device(), "diffusion_step: every input must be on the device of x (", x.device(),
                "), got one on ", t->device());
  }
}

at::Tensor diffusion_step_cpu(const at::Tensor& x, const at::Tensor& model_output, const at::Tensor& timestep,
                              const at::Tensor& coef, const at::Tensor& seed_offset, double clip_range) {
  check_diffusion_step(x, model_output, timestep, coef, seed_offset, clip_range);
  TORCH_CHECK(x.device().is_cpu(), "diffusion_step: CPU kernel got x on ", x.device());
  const auto xc = x.contiguous();
  const auto oc = model_output.contiguous();
  const auto tc = timestep.contiguous();
  const auto cc = coef.contiguous();
  const auto so = seed_offset.contiguous();
  at::Tensor result = at::empty_like(xc, at::MemoryFormat::Contiguous);
  const int64_t n = xc.size(0);
  const int64_t per = n > 0 ? xc.numel() / n : 0;
  const int64_t num_t = cc.size(0);
  const int64_t* t = tc.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK(t[i] >= 0 && t[i] < num_t, "diffusion_step: timestep[", i, "] = ", t[i], " is outside [0, ",
                num_t, ") (the rows of coef)");
  }
  check_stream_range("diffusion_step", so.data_ptr<int64_t>()[1], xc.numel());
  if (xc.numel() == 0) return result;
  const uint64_t seed = static_cast<uint64_t>(so.data_ptr<int64_t>()[0]);
  const uint64_t offset = static_cast<uint64_t>(so.data_ptr<int64_t>()[1]);
  const float* xs = xc.data_ptr<float>();
  const float* os = oc.data_ptr<float>();
  const float* table = cc.data_ptr<float>();
  float* out = result.data_ptr<float>();
  const float clip = static_cast<float>(clip_range);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(per, 1));
  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      const float* c = table + t[s] * kStepCoefficients;
      const int64_t base = s * per;
      const float* xr = xs + base;
      const float* orow = os + base;
      float* r = out + base;
      // 1. mean: a straight, vectorisable loop
      const float c0 = c[0], c1 = c[1], c2 = c[2], c3 = c[3], c4 = c[4];
      for (int64_t j = 0; j < per; ++j) {
        float x0 = c0 * xr[j] + c1 * orow[j];
        if (clip > 0.0f) x0 = clip_symmetric(x0, clip);
        r[j] = c2 * x0 + c3 * xr[j] + c4 * orow[j];
      }
      // 2. noise: four normals per Philox block, blocks addressed by stream position
      const float sigma = c[5];
      if (sigma == 0.0f) continue;
      for_philox_normals(seed, offset + static_cast<uint64_t>(base), per,
                         [r, sigma](int64_t j, float value) { r[j] += sigma * value; });
    }
  });
  return result;
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CPU, m) {
  m.impl("diffusion_step", &lgm::diffusion_step_cpu);
}
