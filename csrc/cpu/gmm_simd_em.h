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

// Dense: all rows, MB components (r component-major [MB, ldr]); NV vectors V of d from d0 (features
// up to d_end kept; sx, sxx rows of D), MB NV accumulators (2 MB NV with squares). The NV vectors of a
// row are read once for MB components: one vector per pass (D = 50, K = 100: 27 passes over the
// tile's rows, line-split loads from L2) left the FMAs waiting on x and on one broadcast each. With
// the blocked moments_tail below, the op took 0.87 (spherical, K = 100) to 0.96 (K = 10) of the time
// on AVX-512 and 0.95 / 0.98 on AVX2 (2-core Xeon, family 6 model 207; in-process A/B, same bits).
template <typename T, typename V, int MB, int NV, bool kSquares>
LGM_INLINE void moments_dense_cols(const T* x, int64_t ldx, int64_t rows, int64_t d0, int64_t D, int64_t d_end,
                                   const T* r, int64_t ldr, double* sx, double* sxx) {
  constexpr int64_t lanes = sizeof(V) / sizeof(T);
  V a1[MB][NV] = {}, a2[MB][NV] = {};
  for (int64_t n = 0; n < rows; ++n) {
    V xv[NV], x2[NV];
    for (int j = 0; j < NV; ++j) {
      xv[j] = load<V>(x + n * ldx + d0 + j * lanes);
      if constexpr (kSquares) x2[j] = xv[j] * xv[j];
    }
    for (int k = 0; k < MB; ++k) {
      const V rk = splat<V>(r[k * ldr + n]);
      for (int j = 0; j < NV; ++j) {
        a1[k][j] += rk * xv[j];
        if constexpr (kSquares) a2[k][j] += rk * x2[j];
      }
    }
  }
  for (int k = 0; k < MB; ++k) {
    for (int j = 0; j < NV; ++j) {
      const int64_t d = d0 + j * lanes;
      flush(sx + k * D + d, a1[k][j], d_end - d);
      if constexpr (kSquares) flush(sxx + k * D + d, a2[k][j], d_end - d);
    }
  }
}

// Vectors per pass of the dense moments, and components per block (kDenseMB): NV MB accumulators
// (twice with squares) beside NV row vectors (and their squares) and a broadcast, in 32 or 16 registers.
template <bool kSquares>
constexpr int kDenseNV = kBytes == 64 ? (kSquares ? 2 : 3) : (kSquares ? 1 : 2);
template <bool kSquares>
constexpr int kDenseMB = kBytes == 64 ? (kSquares ? 6 : 8) : (kSquares ? kMB : 6);

// Whole vectors along d, NV at a time; with 32- or 64-byte vectors a last one at most half used is a
// half vector (D = 50, AVX-512: 3 x 16 + 8 lanes instead of 4 x 16).
template <typename T, int MB, bool kSquares>
void moments_dense_block(const T* x, int64_t ldx, int64_t rows, int64_t D, int64_t d_end, const T* r, int64_t ldr,
                         double* sx, double* sxx) {
  constexpr int64_t W = width<T>(), half = kBytes >= 32 ? W / 2 : 0;
  constexpr int NV = kDenseNV<kSquares>;
  const int64_t whole = d_end > half ? (d_end - half + W - 1) / W : 0;  // vectors more than half used
  int64_t v = 0;
  for (; v + NV <= whole; v += NV)
    moments_dense_cols<T, Vec<T>, MB, NV, kSquares>(x, ldx, rows, v * W, D, d_end, r, ldr, sx, sxx);
  for (; v < whole; ++v) moments_dense_cols<T, Vec<T>, MB, 1, kSquares>(x, ldx, rows, v * W, D, d_end, r, ldr, sx, sxx);
  if constexpr (half > 0) {
    using VHalf = typename VecOf<T, kBytes / 2>::type;
    if (whole * W < d_end)
      moments_dense_cols<T, VHalf, MB, 1, kSquares>(x, ldx, rows, whole * W, D, d_end, r, ldr, sx, sxx);
  }
}

template <typename T, bool kSquares>
void moments_dense_sq(const T* x, int64_t ldx, int64_t rows, int64_t D, int64_t d_end, const T* r, int64_t ldr,
                      int64_t K, double* sx, double* sxx) {
  constexpr int64_t mb = kDenseMB<kSquares>;
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

// The tail features (Plan::tail_d, M <= W / 2) from their transposed rows xt [M, ldt]: vectors along
// rows, float32 sums over the tile in W lanes, summed in float64. KB components per pass share the
// loads of xt and give KB * M add chains (one component at a time, M = 2 chains waited on the adds'
// latency: the op took 0.97 of the time so at spherical D = 50, K = 100, AVX-512). Whole blocks of W
// rows, then the last rows one by one (r past rows is not always written). Each (k, j) is one chain
// in row order. Where the block softmax runs, it adds these sums itself (FusedSums) instead.
template <int M, int KB, bool kSquares>
LGM_INLINE void moments_tail_block(const float* xt, int64_t ldt, int64_t rows, const float* r, int64_t ldr,
                                   int64_t D, int64_t d0, double* sx, double* sxx) {
  constexpr int64_t W = width<float>();
  const int64_t whole = rows / W * W;
  VF a1[KB][M] = {}, a2[KB][M] = {};
  for (int64_t n0 = 0; n0 < whole; n0 += W) {
    VF xv[M];
    for (int j = 0; j < M; ++j) xv[j] = load<VF>(xt + j * ldt + n0);
    for (int k = 0; k < KB; ++k) add_tail_terms<M, kSquares>(load<VF>(r + k * ldr + n0), xv, a1[k], a2[k]);
  }
  for (int k = 0; k < KB; ++k) {
    const float* rk = r + k * ldr;
    for (int j = 0; j < M; ++j) {
      double t1 = sum_as_double(a1[k][j]), t2 = 0.0;
      if constexpr (kSquares) t2 = sum_as_double(a2[k][j]);
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

// Components in blocks of KB (about 24 accumulators), the rest one by one.
template <int M, bool kSquares>
void moments_tail_m(const float* xt, int64_t ldt, int64_t rows, const float* r, int64_t ldr, int64_t K, int64_t D,
                    int64_t d0, double* sx, double* sxx) {
  constexpr int kAcc = M * (kSquares ? 2 : 1);
  constexpr int KB = kAcc >= 24 ? 1 : (24 / kAcc > 8 ? 8 : 24 / kAcc);
  int64_t k = 0;
  for (; k + KB <= K; k += KB)
    moments_tail_block<M, KB, kSquares>(xt, ldt, rows, r + k * ldr, ldr, D, d0, sx + k * D,
                                        kSquares ? sxx + k * D : nullptr);
  for (; k < K; ++k)
    moments_tail_block<M, 1, kSquares>(xt, ldt, rows, r + k * ldr, ldr, D, d0, sx + k * D,
                                       kSquares ? sxx + k * D : nullptr);
}

template <bool kSquares>
void moments_tail_sq(const float* xt, int64_t ldt, int64_t m, int64_t rows, const float* r, int64_t ldr,
                     int64_t K, int64_t D, int64_t d0, double* sx, double* sxx) {
  with_tail_width(m, [&](auto width_m) {
    constexpr int M = decltype(width_m)::value;
    if constexpr (M > 0) moments_tail_m<M, kSquares>(xt, ldt, rows, r, ldr, K, D, d0, sx, sxx);
  });
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

// out[n] = ||x_n||^2 in float64; rows read in whole vectors of x's dtype, the last D mod W values
// of a row copied to a zeroed vector (a whole load there read past the end of x: a segfault where
// x's storage ends at a page boundary).
template <typename T>
void sq_norms(const T* x, int64_t ldx, int64_t rows, int64_t D, double* out) {
  using V = Vec<T>;
  constexpr int64_t W = width<T>();
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
    if (d < D) {
      alignas(64) T tail[W] = {};
      for (int64_t i = 0; d + i < D; ++i) tail[i] = row[d + i];
      add(load<V>(tail));
    }
    out[n] = hsum<double>(a0 + a1);
  }
}

// rows_dot: out[n, j] = x_n . c_j for RB rows and CB centres, float sums of x's dtype per lane;
// with float32 x and float64 c (TC, "wide"), float64 products of x's values (exact) summed in float64.
// ahead: an offset from x to prefetch as the rows go (0: none).
template <typename T, typename TC, int RB, int CB>
LGM_INLINE void dot_block(const T* x, int64_t ldx, int64_t D, const TC* c, int64_t ldc, double* out, int64_t ldo,
                          int64_t ahead) {
  constexpr bool kWide = sizeof(TC) > sizeof(T);
  using V = Vec<T>;
  constexpr int64_t W = width<T>();
  Vec<TC> acc[RB][CB] = {};
  int64_t d = 0;
  auto step = [&](const T* const (&xr)[RB], const TC* const (&cr)[CB], int64_t at) __attribute__((always_inline)) {
    if constexpr (kWide) {
      VD lo[RB], hi[RB];
      for (int r = 0; r < RB; ++r) {
        const V v = load<V>(xr[r] + at);
        lo[r] = lo_double(v);
        hi[r] = hi_double(v);
      }
      for (int j = 0; j < CB; ++j) {
        const VD c0 = load<VD>(cr[j] + at), c1 = load<VD>(cr[j] + at + kWD);
        for (int r = 0; r < RB; ++r) {
          acc[r][j] += lo[r] * c0;
          acc[r][j] += hi[r] * c1;
        }
      }
    } else {
      V xv[RB];
      for (int r = 0; r < RB; ++r) xv[r] = load<V>(xr[r] + at);
      for (int j = 0; j < CB; ++j) {
        const V cv = load<V>(cr[j] + at);
        for (int r = 0; r < RB; ++r) acc[r][j] += xv[r] * cv;
      }
    }
  };
  const T* xr[RB];
  const TC* cr[CB];
  for (int r = 0; r < RB; ++r) xr[r] = x + r * ldx;
  for (int j = 0; j < CB; ++j) cr[j] = c + j * ldc;
  constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  for (; d + W <= D; d += W) {
    if (ahead && d % kLine == 0)
      for (int r = 0; r < RB; ++r) __builtin_prefetch(xr[r] + ahead + d);
    step(xr, cr, d);
  }
  if (d < D) {  // the last features through zero-padded copies: nothing read past a row
    alignas(64) T xt[RB][W] = {};
    alignas(64) TC ct[CB][W] = {};
    for (int r = 0; r < RB; ++r)
      for (int64_t i = d; i < D; ++i) xt[r][i - d] = xr[r][i];
    for (int j = 0; j < CB; ++j)
      for (int64_t i = d; i < D; ++i) ct[j][i - d] = cr[j][i];
    const T* xp[RB];
    const TC* cp[CB];
    for (int r = 0; r < RB; ++r) xp[r] = xt[r];
    for (int j = 0; j < CB; ++j) cp[j] = ct[j];
    step(xp, cp, 0);
  }
  for (int r = 0; r < RB; ++r)
    for (int j = 0; j < CB; ++j) out[r * ldo + j] = static_cast<double>(hsum<TC>(acc[r][j]));
}

// RB rows against the centres in groups of at most kCB, as even as they come (7 by 6: 4 and 3);
// the rows stay in L1 from one group to the next.
template <typename T, typename TC, int RB, int kCB>
LGM_INLINE void dot_rows(const T* x, int64_t ldx, int64_t D, const TC* c, int64_t C, double* out, int64_t ahead) {
  static_assert(kCB <= 6, "dot_rows: groups of at most 6 centres");
  const int64_t groups = (C + kCB - 1) / kCB;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t j0 = g * C / groups, cb = (g + 1) * C / groups - j0;
    const TC* cg = c + j0 * D;
    double* og = out + j0;
    const int64_t a = g ? 0 : ahead;
    switch (cb) {
      case 1: dot_block<T, TC, RB, 1>(x, ldx, D, cg, D, og, C, a); break;
      case 2: dot_block<T, TC, RB, 2>(x, ldx, D, cg, D, og, C, a); break;
      case 3: dot_block<T, TC, RB, 3>(x, ldx, D, cg, D, og, C, a); break;
      case 4: dot_block<T, TC, RB, 4>(x, ldx, D, cg, D, og, C, a); break;
      case 5: dot_block<T, TC, RB, (kCB < 5 ? kCB : 5)>(x, ldx, D, cg, D, og, C, a); break;
      default: dot_block<T, TC, RB, kCB>(x, ldx, D, cg, D, og, C, a); break;
    }
  }
}

// SimdKernels::rows_dot (TC = T) and rows_dot_wide (TC = double).
template <typename T, typename TC>
void rows_dot(const T* x, int64_t ldx, int64_t rows, int64_t D, const TC* c, int64_t C, double* out) {
  constexpr bool kWide = sizeof(TC) > sizeof(T);
  // RB x CB accumulators beside the rows (two vectors each when wide) and one centre
  constexpr int RB = kBytes == 64 && !kWide ? 4 : 2;
  constexpr int CB = kWide && kBytes < 64 ? 4 : 6;
  constexpr int64_t kAhead = 4 * RB;  // rows prefetched ahead, while the first group reads a block
  int64_t n = 0;
  for (; n + RB <= rows; n += RB)
    dot_rows<T, TC, RB, CB>(x + n * ldx, ldx, D, c, C, out + n * C, n + RB + kAhead <= rows ? kAhead * ldx : 0);
  for (; n < rows; ++n) dot_rows<T, TC, 1, CB>(x + n * ldx, ldx, D, c, C, out + n * C, 0);
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
                                    &maha_rows_lanes, &rows_softmax, {kRowsKB<false>, kRowsKB<true>},
                                    &rows_dot<float, float>, &rows_dot<float, double>};
  return k;
}

template <>
const SimdKernels<double>& kernels<double>() {
  static const SimdKernels<double> k{kBytes, &maha<double>, nullptr, nullptr, &moments_dense<double>, nullptr,
                                     &moments_sparse<double>,
                                     &sq_norms<double>, &resp_dot<double>,
                                     &maha_gather<double>,
                                     kBytes == 32 ? &maha_vecs<double> : nullptr,
                                     nullptr, nullptr, {0, 0}, &rows_dot<double, double>,
                                     &rows_dot<double, double>};
  return k;
}

}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm

#undef LGM_INLINE
