// Step 1 of the CPU GMM E-step (gmm_kernels.h) with vectors along rows (SimdKernels::maha_rows), and
// the other distance kernels' dispatch (SimdKernels::maha). Not a normal header: gmm_simd_<isa>.cpp
// includes it once, after gmm_simd.h and gmm_simd_transpose.h (same rules).
//
// float32 diag and spherical with few features (D <= kSmallD), at every K: vectors along components
// (maha_kvec, kept for float64) use K of their lanes (K = 10: 10 of 16) and scatter their sums into
// the component-major tile one float at a time. Here a block of W rows is transposed in registers,
// yT [D, W], and each term is one vector over W rows against a broadcast table entry: every lane
// used, whole-vector stores, and diag's sums in the same order as the kvec kernels. The spherical
// dot form centres the rows and takes their norms on the way (no separate pass, no centred copy of
// the tile).
namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

// Components per block: accumulators of 32 or 16 registers, beside the row vector, the broadcast
// table entries and diag's residual.
template <bool kDiag>
constexpr int kRowsKB = kBytes == 64 ? 16 : (kDiag ? 10 : 12);

LGM_INLINE void store_lanes(float* dst, VF v, int64_t count) {
  if (count == kWF) {
    __builtin_memcpy(dst, &v, sizeof(VF));  // a variable-length copy compiles to rep movs
  } else {
    for (int64_t l = 0; l < count; ++l) dst[l] = v[l];
  }
}

// Prefetches of the next block of rows spread over a kernel's loop along d, one line per step (the
// rest after it), where the rows lie packed (row stride at most 2 D). Issued together at the start of
// a block, 50 of them (D = 50, AVX-512) waited for the core's line fill buffers (X streams from L3),
// and the core with them. Spread, the op took 0.93 (spherical) and 0.95 (diag) of the time at K =
// 10 on AVX-512, 0.96-0.98 on AVX2, 0.98 at diag K = 100 (pca50, in-process A/B, 30 rounds).
struct NextBlock {
  const char* p = nullptr;
  int64_t lines = 0;
  LGM_INLINE void at(int64_t d) const {
    if (d < lines) __builtin_prefetch(p + 64 * d);
  }
  LGM_INLINE void rest(int64_t D) const {
    for (int64_t l = D; l < lines; ++l) __builtin_prefetch(p + 64 * l);
  }
};

// Joint log-probabilities j[k] of W rows from their float32 dot products with m_k and their norms
// [W], made in float64 and rounded once.
template <int KB>
LGM_INLINE void joints_of_dots(const VF (&dots)[KB], const double* norms, const double* sph, int64_t ldk,
                               VF (&j)[KB]) {
  const VD nlo = load<VD>(norms), nhi = load<VD>(norms + kWD);
  for (int k = 0; k < KB; ++k) {
    const VD a = splat<VD>(sph[k]), b = splat<VD>(sph[ldk + k]), c = splat<VD>(sph[2 * ldk + k]);
    const VD cap = splat<VD>(sph[3 * ldk + k]);
    j[k] = to_float(dot_joint(lo_double(dots[k]), a, b, c, cap, nlo), dot_joint(hi_double(dots[k]), a, b, c, cap, nhi));
  }
}

// The dot form's joint log-probabilities j[k] of the W rows of yT for components 0 .. KB: from
// y.m_k (float32 sums over d) and the rows' norms [W], made in float64 and rounded once.
template <int KB>
LGM_INLINE void rows_joints(const float* yT, int64_t D, const float* nuT, int64_t ldk, const double* norms,
                            const double* sph, VF (&j)[KB], const NextBlock& next) {
  VF acc[KB] = {};
  for (int64_t d = 0; d < D; ++d) {
    next.at(d);
    const VF y = load<VF>(yT + d * kWF);
    const float* nu = nuT + d * ldk;
    for (int k = 0; k < KB; ++k) acc[k] += y * splat<VF>(nu[k]);
  }
  joints_of_dots<KB>(acc, norms, sph, ldk, j);
  next.rest(D);
}

// rows_joints for two blocks of W rows at once (y0T, y1T), in two passes of half the components:
// each broadcast table entry serves two row vectors (7 loads per 10 FMAs instead of 11 at KB = 10).
// The same sums in the same order per row and component, so the same bits. next: the two blocks
// after these, prefetched over both passes.
template <int KB>
LGM_INLINE void rows_joints2(const float* y0T, const float* y1T, int64_t D, const float* nuT, int64_t ldk,
                             const double* norms0, const double* norms1, const double* sph, VF (&j0)[KB],
                             VF (&j1)[KB], const NextBlock& next) {
  constexpr int H = (KB + 1) / 2;
  VF acc0[KB], acc1[KB];
  for (int h = 0; h < KB; h += H) {
    VF s0[H] = {}, s1[H] = {};
    for (int64_t d = 0; d < D; ++d) {
      next.at((h ? D : 0) + d);
      const VF y0 = load<VF>(y0T + d * kWF), y1 = load<VF>(y1T + d * kWF);
      const float* nu = nuT + d * ldk + h;
      for (int k = 0; k < H && h + k < KB; ++k) {
        const VF mk = splat<VF>(nu[k]);
        s0[k] += y0 * mk;
        s1[k] += y1 * mk;
      }
    }
    for (int k = 0; k < H && h + k < KB; ++k) {
      acc0[h + k] = s0[k];
      acc1[h + k] = s1[k];
    }
  }
  next.rest(2 * D);
  joints_of_dots<KB>(acc0, norms0, sph, ldk, j0);
  joints_of_dots<KB>(acc1, norms1, sph, ldk, j1);
}

// diag's squared distances m[k] = sum_d (y_d p_kd - nu_kd)^2 of the W rows of yT, components 0 .. KB.
template <int KB>
LGM_INLINE void rows_maha(const float* yT, int64_t D, const float* pT, const float* nuT, int64_t ldk, VF (&m)[KB],
                          const NextBlock& next) {
  for (int k = 0; k < KB; ++k) m[k] = VF{};
  for (int64_t d = 0; d < D; ++d) {
    next.at(d);
    const VF y = load<VF>(yT + d * kWF);
    const float* nu = nuT + d * ldk;
    const float* p = pT + d * ldk;
    for (int k = 0; k < KB; ++k) {
      const VF t = y * splat<VF>(p[k]) - splat<VF>(nu[k]);
      m[k] += t * t;
    }
  }
  next.rest(D);
}

// KB components (table columns 0 .. KB) for the W rows of yT, count of them written: diag's
// distances (rows_maha) or the dot form's joint log-probabilities (rows_joints).
template <int KB, bool kDiag>
LGM_INLINE void rows_group(const float* yT, int64_t D, const float* pT, const float* nuT, int64_t ldk, float* out,
                           int64_t ldo, int64_t count, const double* norms, const double* sph,
                           const NextBlock& next) {
  VF acc[KB];
  if constexpr (kDiag) {
    rows_maha<KB>(yT, D, pT, nuT, ldk, acc, next);
  } else {
    rows_joints<KB>(yT, D, nuT, ldk, norms, sph, acc, next);
  }
  for (int k = 0; k < KB; ++k) store_lanes(out + k * ldo, acc[k], count);
}

// rows_group for KB = kc (1 <= kc <= KB): no lanes spent on components past K.
template <int KB, bool kDiag>
LGM_INLINE void rows_group_of(int64_t kc, const float* yT, int64_t D, const float* pT, const float* nuT, int64_t ldk,
                              float* out, int64_t ldo, int64_t count, const double* norms, const double* sph,
                              const NextBlock& next) {
  if constexpr (KB > 1) {
    if (kc < KB) return rows_group_of<KB - 1, kDiag>(kc, yT, D, pT, nuT, ldk, out, ldo, count, norms, sph, next);
  }
  rows_group<KB, kDiag>(yT, D, pT, nuT, ldk, out, ldo, count, norms, sph, next);
}

// The block of W rows of x from row n: x itself, or for a last, partial block the rows copied to
// pad [W, kSmallD] with zeros after them; its row stride goes to *ldb. The next block's rows (the
// tile is the E-step's first read of x) are prefetched here, or where they lie packed left to
// *next (NextBlock).
LGM_INLINE const float* block_rows(const float* x, int64_t ldx, int64_t rows, int64_t n, int64_t D, float* pad,
                                   int64_t* ldb, NextBlock* next) {
  const int64_t count = min_of<int64_t>(kWF, rows - n);
  const float* xb = x + n * ldx;
  *ldb = ldx;
  *next = NextBlock{};
  if (count < kWF) {
    __builtin_memset(pad, 0, sizeof(float) * kWF * kSmallD);
    for (int64_t r = 0; r < count; ++r) __builtin_memcpy(pad + r * kSmallD, xb + r * ldx, D * sizeof(float));
    *ldb = kSmallD;
    return pad;
  }
  if (n + 2 * kWF > rows) return xb;
  if (ldx <= 2 * D) {  // one line past the span: the rows need not start on a line
    *next = NextBlock{reinterpret_cast<const char*>(x + (n + kWF) * ldx),
                      (kWF * ldx * static_cast<int64_t>(sizeof(float)) + 63) / 64 + 1};
    return xb;
  }
  constexpr int64_t kLine = 64 / sizeof(float);
  for (int64_t r = kWF; r < 2 * kWF; ++r)
    for (int64_t d = 0; d < D; d += kLine) __builtin_prefetch(x + (n + r) * ldx + d);
  return xb;
}

// The second of two full blocks (rows n + W ..; the dot form, n + 2 W <= rows) transposed to y1T,
// with its norms and tail features; returns the prefetches of the two blocks after these.
LGM_INLINE NextBlock second_block(const float* x, int64_t ldx, int64_t rows, int64_t n, int64_t D, const float* c,
                                  float* y1T, double* norms, float* xtail, int64_t ldo, float* pad) {
  NextBlock next;
  int64_t ldb = 0;
  const float* xb = block_rows(x, ldx, rows, n + kWF, D, pad, &ldb, &next);
  rows_transposed(xb, ldb, D, c, y1T, norms + n + kWF, xtail ? xtail + n + kWF : nullptr, ldo);
  if (next.lines && n + 4 * kWF <= rows) next.lines = 2 * next.lines - 1;  // both blocks after these
  return next;
}

// rows_joints2 for components 0 .. kc of two full blocks of W rows, stored to out [kc, ldo] (the
// first block at out, the second at out + W).
template <int KB>
LGM_INLINE void joints_pair_of(int64_t kc, const float* y0T, const float* y1T, int64_t D, const float* nuT,
                               int64_t ldk, float* out, int64_t ldo, const double* norms, const double* sph,
                               const NextBlock& next) {
  if constexpr (KB > 1) {
    if (kc < KB) return joints_pair_of<KB - 1>(kc, y0T, y1T, D, nuT, ldk, out, ldo, norms, sph, next);
  }
  VF j0[KB], j1[KB];
  rows_joints2<KB>(y0T, y1T, D, nuT, ldk, norms, norms + kWF, sph, j0, j1, next);
  for (int k = 0; k < KB; ++k) {
    __builtin_memcpy(out + k * ldo, &j0[k], sizeof(VF));
    __builtin_memcpy(out + k * ldo + kWF, &j1[k], sizeof(VF));
  }
}

// SimdKernels::maha_rows: every component for rows of x (stride ldx, readable to D rounded up) into
// out [K, ldo]; norms [rows rounded up to W] (its lanes past rows are written too).
// diag: maha from pT, nuT; c not null: the spherical dot form's joints, nuT = (mu - c)^T. xtail not
// null: the last block of features (at most W / 2 of them) also goes to xtail [m, ldo], uncentred.
void maha_rows_lanes(const float* x, int64_t ldx, int64_t rows, int64_t D, const float* pT, const float* nuT,
                     int64_t ldk, int64_t K, float* out, int64_t ldo, const float* c, double* norms,
                     const double* sph, float* xtail) {
  alignas(64) float yT[kSmallD * kWF];
  alignas(64) float y1T[kSmallD * kWF];
  alignas(64) float pad[kWF * kSmallD];
  for (int64_t n = 0; n < rows; n += kWF) {
    const int64_t count = min_of<int64_t>(kWF, rows - n);
    int64_t ldb = 0;
    NextBlock next;
    const float* xb = block_rows(x, ldx, rows, n, D, pad, &ldb, &next);
    rows_transposed(xb, ldb, D, c, yT, c ? norms + n : nullptr, xtail ? xtail + n : nullptr, ldo);
    // The dot form, two full blocks at a time (rows_joints2): the op 0.92-0.93x at spherical
    // K = 100, D = 50 on AVX2 and 16-byte vectors, 0.98-0.99x with 64-byte vectors (in-process A/B).
    if (c && n + 2 * kWF <= rows) {
      const NextBlock next1 = second_block(x, ldx, rows, n, D, c, y1T, norms, xtail, ldo, pad);
      for (int64_t k0 = 0; k0 < K; k0 += kRowsKB<false>) {
        const int64_t kc = min_of<int64_t>(K - k0, kRowsKB<false>);
        joints_pair_of<kRowsKB<false>>(kc, yT, y1T, D, nuT + k0, ldk, out + k0 * ldo + n, ldo, norms + n,
                                       sph + k0, k0 == 0 ? next1 : NextBlock{});
      }
      n += kWF;  // and the loop's
      continue;
    }
    const int64_t group = c ? kRowsKB<false> : kRowsKB<true>;
    for (int64_t k0 = 0; k0 < K; k0 += group) {
      const int64_t kc = min_of<int64_t>(K - k0, group);
      float* ob = out + k0 * ldo + n;
      const NextBlock pf = k0 == 0 ? next : NextBlock{};
      if (c) {
        rows_group_of<kRowsKB<false>, false>(kc, yT, D, nullptr, nuT + k0, ldk, ob, ldo, count, norms + n, sph + k0,
                                             pf);
      } else {
        rows_group_of<kRowsKB<true>, true>(kc, yT, D, pT + k0, nuT + k0, ldk, ob, ldo, count, nullptr, nullptr, pf);
      }
    }
  }
}

// SimdKernels::maha: the kernel for the covariance type, D and K.
template <typename T>
void maha(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, const T* pT,
          const T* nuT, int64_t ldk, int64_t K, T* out, int64_t ldo, const T* scale) {
  if (nuT && D <= kSmallD) {
    if (pT) {
      maha_kvec<T, true>(x, ldx, rows, D, pT, nuT, ldk, K, out, ldo, scale);
    } else {
      maha_kvec<T, false>(x, ldx, rows, D, nullptr, nuT, ldk, K, out, ldo, scale);
    }
    return;
  }
  if (p) {
    maha_blocks<T, true>(x, ldx, rows, D, p, nu, ldt, K, out, ldo, scale);
  } else {
    maha_blocks<T, false>(x, ldx, rows, D, nullptr, nu, ldt, K, out, ldo, scale);
  }
}

}  // namespace
}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm
