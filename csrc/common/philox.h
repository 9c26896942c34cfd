#pragma once
// Counter-based Philox4x32-10 (Salmon et al., SC'11) and the Box-Muller transform.
// Shared by the CPU and CUDA kernels so both produce the same stream.
#include <cmath>
#include <cstdint>
#include <cstring>

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

// Box-Muller, bit-identical on the CPU and under nvcc --use_fast_math: the transcendentals are
// evaluated here in float64 from +, *, / and sqrt (IEEE-exact on both sides, fast math relaxes only
// float32 division, sqrt and transcendentals) and explicit fma; a product meets an addition only
// inside an explicit fma or where it is exact, so FMA contraction cannot change a result. Each
// value is within a few float64 ulps of the exact one and is rounded once to float32.

// The double with mantissa bits `mantissa` (52 bits) and biased exponent `exponent`.
LGM_HOST_DEVICE double with_exponent(uint64_t mantissa, int exponent) {
  const uint64_t bits = mantissa | (static_cast<uint64_t>(exponent) << 52);
  double v;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// v with its sign flipped when `flip` (an exact negation, as bits).
LGM_HOST_DEVICE double flip_sign(double v, bool flip) {
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  bits ^= static_cast<uint64_t>(flip) << 63;
  memcpy(&v, &bits, sizeof(v));
  return v;
}

// ln(m / 2^24) for an integer 1 <= m <= 2^24 (the radius uniform of uniform_open0).
LGM_HOST_DEVICE double log_uniform24(uint32_t m) {
  // m = 2^e s with s in [sqrt(1/2), sqrt(2)), from the bits of (double) m.
  const double md = static_cast<double>(static_cast<int32_t>(m));  // m <= 2^24: a signed conversion vectorises
  uint64_t bits;
  memcpy(&bits, &md, sizeof(bits));
  int e = static_cast<int>(bits >> 52) - 1023;
  bits &= (uint64_t{1} << 52) - 1;
  double s = with_exponent(bits, 1023);
  // halved by its exponent bits, not by a multiply in a branch: no branch, so loops over lanes
  // vectorise (a compiler does not speculate floating-point operations on AVX2)
  const int big = s > 1.4142135623730951 ? 1 : 0;
  s = with_exponent(bits, 1023 - big);
  e += big;
  // ln s = 2 atanh(z) = 2 z (1 + z^2/3 + z^4/5 + ...), |z| <= 0.1716, z^2 <= 0.0295: 12 terms.
  const double z = (s - 1.0) / (s + 1.0);
  const double w = z * z;
  double q = 1.0 / 25.0;
  q = fma(q, w, 1.0 / 23.0);
  q = fma(q, w, 1.0 / 21.0);
  q = fma(q, w, 1.0 / 19.0);
  q = fma(q, w, 1.0 / 17.0);
  q = fma(q, w, 1.0 / 15.0);
  q = fma(q, w, 1.0 / 13.0);
  q = fma(q, w, 1.0 / 11.0);
  q = fma(q, w, 1.0 / 9.0);
  q = fma(q, w, 1.0 / 7.0);
  q = fma(q, w, 1.0 / 5.0);
  q = fma(q, w, 1.0 / 3.0);
  q = fma(q, w, 1.0);
  // + (e - 24) ln 2, with ln 2 = hi + lo, hi of 32 bits so that (e - 24) hi is exact.
  const double k = static_cast<double>(e - 24);
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  return fma(2.0 * z, q, k * ln2_lo) + k * ln2_hi;
}

// sin and cos of 2 pi a / 2^24 for an integer 0 <= a < 2^24 (the angle uniform of uniform_closed0):
// exact reduction to a quadrant q and x = (pi / 2) f with |f| <= 1/2, then Taylor polynomials.
LGM_HOST_DEVICE void sincos_turn24(uint32_t a, double* sin_out, double* cos_out) {
  const uint32_t q = (a + (1u << 21)) >> 22;                                          // nearest quarter turn, 0..4
  const double f = static_cast<double>(static_cast<int32_t>(a) - static_cast<int32_t>(q << 22)) * (1.0 / 4194304.0);
  const double x = f * 1.5707963267948966;  // |x| <= pi / 4
  const double w = x * x;
  // sin x = x + x^3 (-1/3! + w/5! - ...), to x^19; cos x = 1 + w (-1/2! + w/4! - ...), to x^20.
  double sp = -1.0 / 121645100408832000.0;
  sp = fma(sp, w, 1.0 / 355687428096000.0);
  sp = fma(sp, w, -1.0 / 1307674368000.0);
  sp = fma(sp, w, 1.0 / 6227020800.0);
  sp = fma(sp, w, -1.0 / 39916800.0);
  sp = fma(sp, w, 1.0 / 362880.0);
  sp = fma(sp, w, -1.0 / 5040.0);
  sp = fma(sp, w, 1.0 / 120.0);
  sp = fma(sp, w, -1.0 / 6.0);
  double cp = 1.0 / 2432902008176640000.0;
  cp = fma(cp, w, -1.0 / 6402373705728000.0);
  cp = fma(cp, w, 1.0 / 20922789888000.0);
  cp = fma(cp, w, -1.0 / 87178291200.0);
  cp = fma(cp, w, 1.0 / 479001600.0);
  cp = fma(cp, w, -1.0 / 3628800.0);
  cp = fma(cp, w, 1.0 / 40320.0);
  cp = fma(cp, w, -1.0 / 720.0);
  cp = fma(cp, w, 1.0 / 24.0);
  cp = fma(cp, w, -0.5);
  const double xw = x * w;
  const double sx = fma(xw, sp, x);
  const double cx = fma(w, cp, 1.0);
  // quadrant 0: (sx, cx), 1: (cx, -sx), 2: (-sx, -cx), 3: (-cx, sx): selects and sign bits
  const uint32_t quadrant = q & 3u;
  const double s_abs = (quadrant & 1u) ? cx : sx;
  const double c_abs = (quadrant & 1u) ? sx : cx;
  *sin_out = flip_sign(s_abs, quadrant >= 2u);
  *cos_out = flip_sign(c_abs, ((quadrant + 1u) & 2u) != 0u);  // negative in quadrants 1 and 2
}

// Two standard normals from two 32-bit words: radius sqrt(-2 ln u), u = uniform_open0(radius_bits),
// angle 2 pi uniform_closed0(angle_bits); each product formed in float64 and rounded once.
LGM_HOST_DEVICE void box_muller2(uint32_t radius_bits, uint32_t angle_bits, float* cos_out, float* sin_out) {
  const double radius = sqrt(-2.0 * log_uniform24((radius_bits >> 8) + 1u));
  double s, c;
  sincos_turn24(angle_bits >> 8, &s, &c);
  *cos_out = static_cast<float>(radius * c);
  *sin_out = static_cast<float>(radius * s);
}

// Kept for callers of the float interface: the same float64 evaluation, rounded once.
LGM_HOST_DEVICE float box_muller_radius(float u) {
  return static_cast<float>(sqrt(-2.0 * log_uniform24(static_cast<uint32_t>(u * 16777216.0f))));
}

LGM_HOST_DEVICE float cos_angle(float angle) { return static_cast<float>(cos(static_cast<double>(angle))); }

LGM_HOST_DEVICE float sin_angle(float angle) { return static_cast<float>(sin(static_cast<double>(angle))); }

// Four standard normals from Philox block `block` of stream `seed`: Box-Muller on (x, y), (z, w).
LGM_HOST_DEVICE void philox_normal4(uint64_t seed, uint64_t block, float out[4]) {
  const Uint4 counter{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u};
  const Uint4 r = philox4x32_10(counter, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  box_muller2(r.x, r.y, &out[0], &out[1]);
  box_muller2(r.z, r.w, &out[2], &out[3]);
}

}  // namespace lgm
