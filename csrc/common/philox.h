#pragma once
// Counter-based Philox4x32-10 (Salmon et al., SC'11) and the Box-Muller transform.
// Shared by the CPU and CUDA kernels so both produce the same stream.
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace lgm {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;

struct Uint4 {
  uint32_t x, y, z, w;
};

LGM_HOST_DEVICE void mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(product >> 32);
  *lo = static_cast<uint32_t>(product);
}

// Ten rounds of Philox4x32 on counter c with key (k0, k1).
LGM_HOST_DEVICE Uint4 philox4x32_10(Uint4 c, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kPhiloxM0, c.x, &hi0, &lo0);
    mulhilo(kPhiloxM1, c.z, &hi1, &lo1);
    c = Uint4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  return c;
}

// Uniform in (0, 1]: never 0, so log() stays finite.
LGM_HOST_DEVICE float uniform_open0(uint32_t bits) {
  return (static_cast<float>(bits >> 8) + 1.0f) * (1.0f / 16777216.0f);
}

// Uniform in [0, 1).
LGM_HOST_DEVICE float uniform_closed0(uint32_t bits) {
  return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f);
}

// The transcendentals of Box-Muller. nvcc's --use_fast_math (the build's CUDA flags) turns logf,
// sinf, cosf and sqrtf into approximate instructions: lg2.approx has an absolute error near 2^-22
// around 1, enough to make -2 log u negative for u just below 1 and the radius NaN, and sin.approx
// loses accuracy past pi. The device therefore evaluates them in double, which fast math leaves
// alone, and rounds once; the host keeps float libm.
LGM_HOST_DEVICE float box_muller_radius(float u) {
#if defined(__CUDA_ARCH__)
  return static_cast<float>(sqrt(-2.0 * log(static_cast<double>(u))));
#else
  return sqrtf(-2.0f * logf(u));
#endif
}

LGM_HOST_DEVICE float cos_angle(float angle) {
#if defined(__CUDA_ARCH__)
  return static_cast<float>(cos(static_cast<double>(angle)));
#else
  return cosf(angle);
#endif
}

LGM_HOST_DEVICE float sin_angle(float angle) {
#if defined(__CUDA_ARCH__)
  return static_cast<float>(sin(static_cast<double>(angle)));
#else
  return sinf(angle);
#endif
}

// Four standard normals from Philox block `block` of stream `seed`: Box-Muller on (x, y), (z, w).
LGM_HOST_DEVICE void philox_normal4(uint64_t seed, uint64_t block, float out[4]) {
  const Uint4 counter{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u};
  const Uint4 r = philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const float two_pi = 6.2831853071795864f;
  const float radius0 = box_muller_radius(uniform_open0(r.x));
  const float radius1 = box_muller_radius(uniform_open0(r.z));
  const float angle0 = two_pi * uniform_closed0(r.y);
  const float angle1 = two_pi * uniform_closed0(r.w);
  out[0] = radius0 * cos_angle(angle0);
  out[1] = radius0 * sin_angle(angle0);
  out[2] = radius1 * cos_angle(angle1);
  out[3] = radius1 * sin_angle(angle1);
}

}  // namespace lgm
