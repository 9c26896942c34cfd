// Register-blocked SIMD kernels of the CPU GMM E-step (gmm_kernels.h): squared distances (step 1)
// and first/diagonal second moments (step 3), on GCC/Clang vector extensions.
#include <algorithm>
#include <cstring>

#include "cpu/gmm_kernels.h"

namespace lgm {
namespace gmm_cpu {
namespace {

constexpr int kMahaKB = 5;     // components per block in the distance kernel (4 x 5 accumulators)
constexpr int kMomentKB = 10;  // components per block in the dense moment kernel

template <typename T>
inline __attribute__((always_inline)) Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The first n (clamped to [0, width]) values of p, zeros after.
template <typename T>
inline __attribute__((always_inline)) Vec<T> vload_partial(const T* p, int64_t n) {
  Vec<T> v = {};
  for (int64_t i = 0; i < std::min<int64_t>(n, Simd<T>::kWidth); ++i) v[i] = p[i];
  return v;
}

// Keeps v in a register: stops the compiler from re-reading a table entry from memory for every
// use (on AVX-512 it otherwise spends a load per FMA and becomes load-bound).
template <typename T>
inline __attribute__((always_inline)) void pin(Vec<T>& v) {
#if defined(__AVX512F__)
  __asm__("" : "+v"(v));
#endif
}

template <typename T>
inline __attribute__((always_inline)) T hsum(const Vec<T>& v) {
  T s = 0;
  for (int i = 0; i < Simd<T>::kWidth; ++i) s += v[i];
  return s;
}

// dst[j] += v[j] for j < min(n, width), in float64.
template <typename T>
inline __attribute__((always_inline)) void flush(double* dst, const Vec<T>& v, int64_t n) {
  for (int64_t j = 0; j < std::min<int64_t>(n, Simd<T>::kWidth); ++j) dst[j] += static_cast<double>(v[j]);
}

// ---------------------------------------------------------------------------------------------
// 1. Squared distances: out[r, k] = sum_d (x_rd p_kd - nu_kd)^2 (kScaled) or (x_rd - nu_kd)^2,
// for RB rows and KB components. Tables p, nu are [*, ldt] with ldt >= D a multiple of the
// vector width and zeros past D, so the zero-filled tail of x adds nothing.

// `ahead` (may be null): RB rows to prefetch into L2 as they will be read next, a line per vector.
template <typename T, int RB, int KB, bool kScaled>
void maha_block(const T* x, int64_t ldx, int64_t D, const T* p, const T* nu, int64_t ldt, T* out, int64_t ldo,
                const T* ahead) {
  constexpr int W = Simd<T>::kWidth;
  Vec<T> acc[RB][KB] = {};
  auto step = [&](const Vec<T> (&xv)[RB], int64_t d) __attribute__((always_inline)) {
    for (int k = 0; k < KB; ++k) {
      Vec<T> nv = vload(nu + k * ldt + d);
      pin<T>(nv);
      if constexpr (kScaled) {
        Vec<T> pv = vload(p + k * ldt + d);
        pin<T>(pv);
        for (int r = 0; r < RB; ++r) {
          const Vec<T> t = whitened_residual(xv[r], pv, nv);
          acc[r][k] += t * t;
        }
      } else {
        for (int r = 0; r < RB; ++r) {
          const Vec<T> t = xv[r] - nv;
          acc[r][k] += t * t;
        }
      }
    }
  };
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    Vec<T> xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = vload(x + r * ldx + d);
    if (ahead) {
      for (int r = 0; r < RB; ++r) __builtin_prefetch(ahead + r * ldx + d, 0, 2);
    }
    step(xv, d);
  }
  if (d < D) {
    Vec<T> xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = vload_partial(x + r * ldx + d, D - d);
    step(xv, d);
  }
  for (int r = 0; r < RB; ++r)
    for (int k = 0; k < KB; ++k) out[r * ldo + k] = hsum<T>(acc[r][k]);
}

template <typename T, int KB, bool kScaled>
void maha_rows(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, T* out,
               int64_t ldo, int64_t prefetch_rows) {
  int64_t n = 0;
  for (; n + 4 <= rows; n += 4) {
    const T* ahead = n + 8 <= prefetch_rows ? x + (n + 4) * ldx : nullptr;
    maha_block<T, 4, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n * ldo, ldo, ahead);
  }
  for (; n < rows; ++n) maha_block<T, 1, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n * ldo, ldo, nullptr);
}

}  // namespace

// out [rows, ldo]: columns 0..K-1 for table rows 0..K-1, in blocks of at most kMahaKB components.
// The first block prefetches rows ahead, up to row `readable` of x (past the tile where there are).
template <typename T, bool kScaled>
void maha_tile(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, int64_t K,
               T* out, int64_t ldo, int64_t readable) {
  const int64_t blocks = (K + kMahaKB - 1) / kMahaKB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    const T* pb = kScaled ? p + k0 * ldt : nullptr;
    const T* nb = nu + k0 * ldt;
    T* ob = out + k0;
    switch (kb) {
#define LGM_MAHA_CASE(KB) \
  case KB: maha_rows<T, KB, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo, b == 0 ? readable : 0); break;
      LGM_MAHA_CASE(1) LGM_MAHA_CASE(2) LGM_MAHA_CASE(3) LGM_MAHA_CASE(4) LGM_MAHA_CASE(5)
#undef LGM_MAHA_CASE
      default: TORCH_INTERNAL_ASSERT(false, "gmm: component block of ", kb);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Moments: sx[k, d] += sum_n r[n, k] x[n, d] and (kSquares) sxx[k, d] += sum_n r[n, k] x[n, d]^2.

namespace {

// Dense: all rows, KB components; one vector of d at a time with 2 KB accumulators.
template <typename T, int KB, bool kSquares>
void moments_dense_block(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* r, int64_t ldr, double* sx,
                         double* sxx) {
  constexpr int W = Simd<T>::kWidth;
  for (int64_t d = 0; d < D; d += W) {
    const int64_t len = D - d;
    Vec<T> a1[KB] = {}, a2[KB] = {};
    auto step = [&](const Vec<T>& xv, const T* rn) __attribute__((always_inline)) {
      const Vec<T> x2 = xv * xv;
      for (int k = 0; k < KB; ++k) {
        a1[k] += rn[k] * xv;
        if constexpr (kSquares) a2[k] += rn[k] * x2;
      }
    };
    if (len >= W) {
      for (int64_t n = 0; n < rows; ++n) step(vload(x + n * ldx + d), r + n * ldr);
    } else {
      for (int64_t n = 0; n < rows; ++n) step(vload_partial(x + n * ldx + d, len), r + n * ldr);
    }
    for (int k = 0; k < KB; ++k) {
      flush<T>(sx + k * D + d, a1[k], len);
      if constexpr (kSquares) flush<T>(sxx + k * D + d, a2[k], len);
    }
  }
}

}  // namespace

template <typename T, bool kSquares>
void moments_dense(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* r, int64_t K, double* sx, double* sxx) {
  const int64_t blocks = (K + kMomentKB - 1) / kMomentKB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    double* sxb = sx + k0 * D;
    double* sxxb = kSquares ? sxx + k0 * D : nullptr;
    switch (kb) {
#define LGM_MOMENT_CASE(KB) \
  case KB: moments_dense_block<T, KB, kSquares>(x, ldx, rows, D, r + k0, K, sxb, sxxb); break;
      LGM_MOMENT_CASE(1) LGM_MOMENT_CASE(2) LGM_MOMENT_CASE(3) LGM_MOMENT_CASE(4) LGM_MOMENT_CASE(5)
      LGM_MOMENT_CASE(6) LGM_MOMENT_CASE(7) LGM_MOMENT_CASE(8) LGM_MOMENT_CASE(9) LGM_MOMENT_CASE(10)
#undef LGM_MOMENT_CASE
      default: TORCH_INTERNAL_ASSERT(false, "gmm: component block of ", kb);
    }
  }
}

namespace {

// Sparse: one component, the m rows idx with weights val (its non-zero responsibilities).
// Blocks of NV vectors of d (2 NV independent accumulators), then the last few vectors one by one.
template <typename T, int NV, bool kSquares>
inline __attribute__((always_inline)) void moments_sparse_block(const T* x, int64_t ldx, int64_t d, int64_t D,
                                                                const int64_t* idx, const T* val, int64_t m,
                                                                double* sx, double* sxx) {
  constexpr int W = Simd<T>::kWidth;
  const bool full = d + NV * W <= D;
  Vec<T> a1[NV] = {}, a2[NV] = {};
  for (int64_t i = 0; i < m; ++i) {
    const T* row = x + idx[i] * ldx + d;
    for (int v = 0; v < NV; ++v) {
      const Vec<T> xv = full ? vload(row + v * W) : vload_partial(row + v * W, D - d - v * W);
      const Vec<T> rx = val[i] * xv;
      a1[v] += rx;
      if constexpr (kSquares) a2[v] += rx * xv;
    }
  }
  for (int v = 0; v < NV; ++v) {
    flush<T>(sx + d + v * W, a1[v], D - d - v * W);
    if constexpr (kSquares) flush<T>(sxx + d + v * W, a2[v], D - d - v * W);
  }
}

}  // namespace

template <typename T, bool kSquares>
void moments_sparse(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const T* val, int64_t m, double* sx,
                    double* sxx) {
  constexpr int W = Simd<T>::kWidth, NV = 4;
  int64_t d = 0;
  for (; d + NV * W <= D; d += NV * W) moments_sparse_block<T, NV, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
  for (; d < D; d += W) moments_sparse_block<T, 1, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
}

// The instantiations gmm_tile.cpp uses.
#define LGM_SIMD_INSTANTIATE(T)                                                                                 \
  template void maha_tile<T, true>(const T*, int64_t, int64_t, int64_t, const T*, const T*, int64_t, int64_t, T*, \
                                   int64_t, int64_t);                                                            \
  template void maha_tile<T, false>(const T*, int64_t, int64_t, int64_t, const T*, const T*, int64_t, int64_t, T*, \
                                    int64_t, int64_t);                                                           \
  template void moments_dense<T, true>(const T*, int64_t, int64_t, int64_t, const T*, int64_t, double*, double*); \
  template void moments_dense<T, false>(const T*, int64_t, int64_t, int64_t, const T*, int64_t, double*, double*); \
  template void moments_sparse<T, true>(const T*, int64_t, int64_t, const int64_t*, const T*, int64_t, double*,   \
                                        double*);                                                                \
  template void moments_sparse<T, false>(const T*, int64_t, int64_t, const int64_t*, const T*, int64_t, double*,  \
                                         double*);
LGM_SIMD_INSTANTIATE(float)
LGM_SIMD_INSTANTIATE(double)
#undef LGM_SIMD_INSTANTIATE

}  // namespace gmm_cpu
}  // namespace lgm
