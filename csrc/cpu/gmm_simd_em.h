// Step 3 of the width-generic SIMD kernels (moments) and the table of one instruction set;
// included after gmm_simd.h and gmm_simd_softmax.h, under the same target (see gmm_simd.h).
namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

// ---------------------------------------------------------------------------------------------
// 3. Moments: sx[k, d] += sum_n r_nk x_nd, (kSquares) sxx[k, d] += sum_n r_nk x_nd^2, products
// and partial sums over one tile (Plan::tile(): 128 to 512 rows) in x's dtype, added to the float64
// totals.

// Dense: all rows, MB components (r component-major [MB, ldr]); one vector V of d from d0 (features
// up to d_end kept; sx, sxx rows of D), 2 MB accumulators.
template <typename T, typename V, int MB, bool kSquares>
LGM_INLINE void moments_dense_cols(const T* x, int64_t ldx, int64_t rows, int64_t d0, int64_t D, int64_t d_end,
                                   const T* r, int64_t ldr, double* sx, double* sxx) {
  V a1[MB] = {}, a2[MB] = {};
  for (int64_t n = 0; n < rows; ++n) {
    const V xv = load<V>(x + n * ldx + d0);
    const V x2 = xv * xv;
    for (int k = 0; k < MB; ++k) {
      const V rk = splat<V>(r[k * ldr + n]);
      a1[k] += rk * xv;
      if constexpr (kSquares) a2[k] += rk * x2;
    }
  }
  for (int k = 0; k < MB; ++k) {
    flush(sx + k * D + d0, a1[k], d_end - d0);
    if constexpr (kSquares) flush(sxx + k * D + d0, a2[k], d_end - d0);
  }
}

// Whole vectors along d; with 32- or 64-byte vectors a last one at most half used is a half vector
// (D = 50, AVX-512: 3 x 16 + 8 lanes instead of 4 x 16).
template <typename T, int MB, bool kSquares>
void moments_dense_block(const T* x, int64_t ldx, int64_t rows, int64_t D, int64_t d_end, const T* r, int64_t ldr,
                         double* sx, double* sxx) {
  constexpr int64_t W = width<T>(), half = kBytes >= 32 ? W / 2 : 0;
  int64_t d = 0;
  for (; d < d_end && d_end - d > half; d += W)
    moments_dense_cols<T, Vec<T>, MB, kSquares>(x, ldx, rows, d, D, d_end, r, ldr, sx, sxx);
  if constexpr (half > 0) {
    using VHalf = typename VecOf<T, kBytes / 2>::type;
    if (d < d_end) moments_dense_cols<T, VHalf, MB, kSquares>(x, ldx, rows, d, D, d_end, r, ldr, sx, sxx);
  }
}

template <typename T, bool kSquares>
void moments_dense_sq(const T* x, int64_t ldx, int64_t rows, int64_t D, int64_t d_end, const T* r, int64_t ldr,
                      int64_t K, double* sx, double* sxx) {
  constexpr int64_t mb = kSquares ? kMB : kMBSx;
  const int64_t blocks = (K + mb - 1) / mb;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    double* sxb = sx + k0 * D;
    double* sxxb = kSquares ? sxx + k0 * D : nullptr;
    switch (kb) {
#define LGM_MOMENT_CASE(MB) \
  case MB: \
    if constexpr (mb >= MB) \
      moments_dense_block<T, MB, kSquares>(x, ldx, rows, D, d_end, r + k0 * ldr, ldr, sxb, sxxb); \
    break;
      LGM_MOMENT_CASE(1) LGM_MOMENT_CASE(2) LGM_MOMENT_CASE(3) LGM_MOMENT_CASE(4) LGM_MOMENT_CASE(5)
      LGM_MOMENT_CASE(6) LGM_MOMENT_CASE(7) LGM_MOMENT_CASE(8) LGM_MOMENT_CASE(9) LGM_MOMENT_CASE(10)
      LGM_MOMENT_CASE(11) LGM_MOMENT_CASE(12)
#undef LGM_MOMENT_CASE
      default: break;
    }
  }
}

template <typename T>
void moments_dense(const T* x, int64_t ldx, int64_t rows, int64_t D, int64_t d_end, const T* r, int64_t ldr,
                   int64_t K, double* sx, double* sxx) {
  if (d_end <= 0) return;
  if (sxx) {
    moments_dense_sq<T, true>(x, ldx, rows, D, d_end, r, ldr, K, sx, sxx);
  } else {
    moments_dense_sq<T, false>(x, ldx, rows, D, d_end, r, ldr, K, sx, nullptr);
  }
}

// The tail features (Plan::tail_d, m <= W / 2) from their transposed rows xt [m, ldt]: vectors along
// rows, float32 sums over the tile in W lanes, summed in float64. Whole blocks of W rows, then the
// last rows one by one (r past rows is not always written).
template <bool kSquares>
void moments_tail_sq(const float* xt, int64_t ldt, int64_t m, int64_t rows, const float* r, int64_t ldr,
                     int64_t K, int64_t D, int64_t d0, double* sx, double* sxx) {
  constexpr int64_t W = width<float>();
  constexpr int kM = W / 2;
  const int64_t whole = rows / W * W;
  for (int64_t k = 0; k < K; ++k) {
    const float* rk = r + k * ldr;
    VF a1[kM] = {}, a2[kM] = {};
    for (int64_t n0 = 0; n0 < whole; n0 += W) {
      const VF rv = load<VF>(rk + n0);
      for (int j = 0; j < kM; ++j) {
        if (j >= m) break;
        const VF xv = load<VF>(xt + j * ldt + n0);
        const VF rx = rv * xv;
        a1[j] += rx;
        if constexpr (kSquares) a2[j] += rx * xv;
      }
    }
    for (int64_t j = 0; j < m; ++j) {
      double t1 = hsum<double>(lo_double(a1[j]) + hi_double(a1[j])), t2 = 0.0;
      if constexpr (kSquares) t2 = hsum<double>(lo_double(a2[j]) + hi_double(a2[j]));
      for (int64_t n = whole; n < rows; ++n) {
        const float rx = rk[n] * xt[j * ldt + n];
        t1 += static_cast<double>(rx);
        if constexpr (kSquares) t2 += static_cast<double>(rx * xt[j * ldt + n]);
      }
      sx[k * D + d0 + j] += t1;
      if constexpr (kSquares) sxx[k * D + d0 + j] += t2;
    }
  }
}

void moments_tail(const float* xt, int64_t ldt, int64_t m, int64_t rows, const float* r, int64_t ldr, int64_t K,
                  int64_t D, int64_t d0, double* sx, double* sxx) {
  if (sxx) {
    moments_tail_sq<true>(xt, ldt, m, rows, r, ldr, K, D, d0, sx, sxx);
  } else {
    moments_tail_sq<false>(xt, ldt, m, rows, r, ldr, K, D, d0, sx, nullptr);
  }
}

// Sparse: one component over the m rows idx with responsibilities val; NV vectors of d per pass.
template <typename T, int NV, bool kSquares>
LGM_INLINE void moments_sparse_block(const T* x, int64_t ldx, int64_t d, int64_t D, const int64_t* idx,
                                     const T* val, int64_t m, double* sx, double* sxx) {
  using V = Vec<T>;
  constexpr int64_t W = width<T>();
  V a1[NV] = {}, a2[NV] = {};
  for (int64_t i = 0; i < m; ++i) {
    const T* row = x + idx[i] * ldx + d;
    const V v = splat<V>(val[i]);
    for (int j = 0; j < NV; ++j) {
      const V xv = load<V>(row + j * W);
      const V rx = v * xv;
      a1[j] += rx;
      if constexpr (kSquares) a2[j] += rx * xv;
    }
  }
  for (int j = 0; j < NV; ++j) {
    flush(sx + d + j * W, a1[j], D - d - j * W);
    if constexpr (kSquares) flush(sxx + d + j * W, a2[j], D - d - j * W);
  }
}

template <typename T, bool kSquares>
void moments_sparse_sq(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const T* val, int64_t m, double* sx,
                       double* sxx) {
  // 16 registers: 8 accumulators without squares (4 were four add chains where two adds per cycle
  // at a latency of 3 want six: AVX2 spherical on MNIST pixels, K = 100, 0.96 of the time).
  constexpr int NV = kBytes == 64 ? 6 : (kSquares ? 4 : 8);
  constexpr int64_t W = width<T>();
  int64_t d = 0;
  for (; d + NV * W <= D; d += NV * W) moments_sparse_block<T, NV, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
  for (; d < D; d += W) moments_sparse_block<T, 1, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
}

template <typename T>
void moments_sparse(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const T* val, int64_t m, double* sx,
                    double* sxx) {
  if (sxx) {
    moments_sparse_sq<T, true>(x, ldx, D, idx, val, m, sx, sxx);
  } else {
    moments_sparse_sq<T, false>(x, ldx, D, idx, val, m, sx, nullptr);
  }
}

// out[k] += sum_n r_kn v_n in float64 (spherical: v = ||x_n||^2), r [K, ldr].
template <typename T>
void resp_dot(const T* r, int64_t ldr, int64_t K, int64_t rows, const double* v, double* out) {
  for (int64_t k = 0; k < K; ++k) {
    const T* rk = r + k * ldr;
    VD a0 = {}, a1 = {};
    int64_t n = 0;
    for (; n + 2 * kWD <= rows; n += 2 * kWD) {
      a0 += load_double(rk + n) * load<VD>(v + n);
      a1 += load_double(rk + n + kWD) * load<VD>(v + n + kWD);
    }
    double total = hsum<double>(a0 + a1);
    for (; n < rows; ++n) total += static_cast<double>(rk[n]) * v[n];
    out[k] += total;
  }
}

// out[n] = ||x_n||^2 in float64; rows read in whole vectors of x's dtype, lanes past D masked.
template <typename T>
void sq_norms(const T* x, int64_t ldx, int64_t rows, int64_t D, double* out) {
  using V = Vec<T>;
  using VM = typename VecOf<int64_t, kBytes>::type;
  constexpr int64_t W = width<T>();
  const V tail_mask = tail_mask_of<T>(D);
  for (int64_t n = 0; n < rows; ++n) {
    const T* row = x + n * ldx;
    VD a0 = {}, a1 = {};
    auto add = [&](V v) __attribute__((always_inline)) {
      if constexpr (sizeof(T) == 8) {
        a0 += v * v;
      } else {
        const VD lo = lo_double(v), hi = hi_double(v);
        a0 += lo * lo;
        a1 += hi * hi;
      }
    };
    int64_t d = 0;
    for (; d + W <= D; d += W) add(load<V>(row + d));
    if (d < D) add((V)((VM)load<V>(row + d) & (VM)tail_mask));
    out[n] = hsum<double>(a0 + a1);
  }
}

}  // namespace

template <>
const SimdKernels<float>& kernels<float>() {
  static const SimdKernels<float> k{kBytes, &maha<float>, &softmax_f32, &softmax_f32_joint, &moments_dense<float>,
                                    kBytes >= 32 ? &moments_tail : nullptr,
                                    &moments_sparse<float>,
                                    &sq_norms<float>, &resp_dot<float>,
                                    &maha_gather<float>,
                                    kBytes == 32 ? &maha_vecs<float> : nullptr,
                                    &maha_rows_lanes};
  return k;
}

template <>
const SimdKernels<double>& kernels<double>() {
  static const SimdKernels<double> k{kBytes, &maha<double>, nullptr, nullptr, &moments_dense<double>, nullptr,
                                     &moments_sparse<double>,
                                     &sq_norms<double>, &resp_dot<double>,
                                     &maha_gather<double>,
                                     kBytes == 32 ? &maha_vecs<double> : nullptr,
                                     nullptr};
  return k;
}

}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm

#undef LGM_INLINE
