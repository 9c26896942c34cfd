#pragma once
// The fused DDPM/DDIM step on one element, shared by the CPU and CUDA kernels.
// coef points at the sampler's 6 coefficients of the element's timestep (a, b, c, d, e, sigma):
//   x0 = clip(a x + b o),   x_prev = c x0 + d x + e o + sigma z
// (lightning_genmodels/diffusion/samplers.py derives them from diffusers' DDPM and DDIM steps).
#include <cstdint>

#include "common/macros.h"
#include "common/philox.h"

namespace lgm {

constexpr int kStepCoefficients = 6;

// Clamp to [-r, r] when r > 0; NaN stays NaN (as torch.clamp).
LGM_HOST_DEVICE float clip_symmetric(float v, float r) {
  if (r > 0.0f) {
    v = v < -r ? -r : v;
    v = v > r ? r : v;
  }
  return v;
}

// The mean of x_{t'}: predicted x0 (clipped), then the sampler's combination.
LGM_HOST_DEVICE float diffusion_step_mean(float x, float out, const float* coef, float clip_range) {
  const float x0 = clip_symmetric(coef[0] * x + coef[1] * out, clip_range);
  return coef[2] * x0 + coef[3] * x + coef[4] * out;
}

// Normal number `position` of the Philox stream of `seed` (ops/philox.py's addressing).
LGM_HOST_DEVICE float philox_normal_at(uint64_t seed, uint64_t position) {
  float values[4];
  philox_normal4(seed, position >> 2, values);
  return values[position & 3];
}

}  // namespace lgm
