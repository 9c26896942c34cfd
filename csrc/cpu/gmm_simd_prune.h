// Step 1 for the pruned distances (gmm_prune.cpp) of the width-generic SIMD kernels: included by
// gmm_simd_<isa>.cpp after gmm_simd.h and before gmm_simd_em.h, under the same target (see
// gmm_simd.h).
namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

// Pruned distances (gmm_prune.cpp): out[idx_i] += sum over the listed vectors of d (offsets, any
// order) of (x_d p_d - nu_d)^2, for one component and the rows idx of x; when p is null (spherical)
// c (c sum (nu_d - x_d)^2) with nu the means and c = p_k (gmm_kernels.h Plan::scale). RB rows, NA
// accumulators each (alternate vectors), so enough independent FMA chains; lanes past D masked.
constexpr int kRBG = kBytes == 64 ? 8 : 4;

template <typename T, int RB, int NA, bool kScaled>
LGM_INLINE void maha_gather_block(const T* x, int64_t ldx, const int32_t* idx, int64_t D, const T* p, const T* nu,
                                  const int32_t* vecs, int64_t nv, Vec<T> tail_mask, T* out, T scale) {
  using V = Vec<T>;
  using VM = typename VecOf<int64_t, kBytes>::type;
  constexpr int64_t W = width<T>();
  const T* row[RB];
  for (int r = 0; r < RB; ++r) row[r] = x + idx[r] * ldx;
  V acc[NA][RB] = {};
  auto step = [&](V (&a)[RB], int64_t d) __attribute__((always_inline)) {
    V pv = kScaled ? load<V>(p + d) : V{}, nv_ = load<V>(nu + d);
    pin(pv);
    pin(nv_);
    auto term = [&](V xv) __attribute__((always_inline)) { return kScaled ? xv * pv - nv_ : nv_ - xv; };
    if (d + W <= D) {
      for (int r = 0; r < RB; ++r) {
        const V t = term(load<V>(row[r] + d));
        a[r] += t * t;
      }
    } else {
      for (int r = 0; r < RB; ++r) {
        const V t = term((V)((VM)load<V>(row[r] + d) & (VM)tail_mask));
        a[r] += t * t;
      }
    }
  };
  int64_t c = 0;
  for (; c + NA <= nv; c += NA)
    for (int a = 0; a < NA; ++a) step(acc[a], vecs[c + a]);
  for (; c < nv; ++c) step(acc[0], vecs[c]);
  for (int r = 0; r < RB; ++r) {
    V total = acc[0][r];
    for (int a = 1; a < NA; ++a) total += acc[a][r];
    out[idx[r]] += kScaled ? hsum<T>(total) : times_p_squared(scale, hsum<T>(total));
  }
}

template <typename T, bool kScaled>
void maha_gather_as(const T* x, int64_t ldx, const int32_t* idx, int64_t m, int64_t D, const T* p, const T* nu,
                    const int32_t* vecs, int64_t nv, T* out, T c) {
  const Vec<T> tail_mask = tail_mask_of<T>(D);
  int64_t i = 0;
  for (; i + kRBG <= m; i += kRBG)
    maha_gather_block<T, kRBG, 2, kScaled>(x, ldx, idx + i, D, p, nu, vecs, nv, tail_mask, out, c);
  for (; i + 2 <= m; i += 2)
    maha_gather_block<T, 2, 4, kScaled>(x, ldx, idx + i, D, p, nu, vecs, nv, tail_mask, out, c);
  for (; i < m; ++i) maha_gather_block<T, 1, 4, kScaled>(x, ldx, idx + i, D, p, nu, vecs, nv, tail_mask, out, c);
}

template <typename T>
void maha_gather(const T* x, int64_t ldx, const int32_t* idx, int64_t m, int64_t D, const T* p, const T* nu,
                 const int32_t* vecs, int64_t nv, T* out, T c) {
  if (p) {
    maha_gather_as<T, true>(x, ldx, idx, m, D, p, nu, vecs, nv, out, c);
  } else {
    maha_gather_as<T, false>(x, ldx, idx, m, D, nullptr, nu, vecs, nv, out, c);
  }
}

// The first stage of the pruned distances with 32-byte vectors: out[k, r] = the same sums for
// every row and component, register-blocked as maha_block (RB rows x KB components). (With 64-byte
// vectors the row-gather form above is faster: 78 against 95 ms per pass at K = 100, D = 784.)
template <typename T, int RB, int KB, bool kScaled>
LGM_INLINE void maha_vecs_block(const T* x, int64_t ldx, int64_t D, const T* p, const T* nu, int64_t ldt,
                                const int32_t* vecs, int64_t nv, Vec<T> tail_mask, T* out, int64_t ldo,
                                const T* scale) {
  using V = Vec<T>;
  using VM = typename VecOf<int64_t, kBytes>::type;
  constexpr int64_t W = width<T>();
  V acc[RB][KB] = {};
  for (int64_t c = 0; c < nv; ++c) {
    const int64_t d = vecs[c];
    V xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = load<V>(x + r * ldx + d);
    if (d + W > D) {
      for (int r = 0; r < RB; ++r) xv[r] = (V)((VM)xv[r] & (VM)tail_mask);
    }
    for (int k = 0; k < KB; ++k) {
      V pv = kScaled ? load<V>(p + k * ldt + d) : V{}, nv_ = load<V>(nu + k * ldt + d);
      pin(pv);
      pin(nv_);
      for (int r = 0; r < RB; ++r) {
        const V t = kScaled ? xv[r] * pv - nv_ : nv_ - xv[r];
        acc[r][k] += t * t;
      }
    }
  }
  for (int k = 0; k < KB; ++k) {
    const T c = kScaled ? T(1) : scale[k];
    for (int r = 0; r < RB; ++r) {
      out[k * ldo + r] = kScaled ? hsum<T>(acc[r][k]) : times_p_squared(c, hsum<T>(acc[r][k]));
    }
  }
}

template <typename T, int KB>
void maha_vecs_rows(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt,
                    const int32_t* vecs, int64_t nv, Vec<T> tail_mask, T* out, int64_t ldo, const T* scale) {
  auto block = [&](auto rb, int64_t n) __attribute__((always_inline)) {
    constexpr int RB = decltype(rb)::value;
    if (p) {
      maha_vecs_block<T, RB, KB, true>(x + n * ldx, ldx, D, p, nu, ldt, vecs, nv, tail_mask, out + n, ldo, nullptr);
    } else {
      maha_vecs_block<T, RB, KB, false>(x + n * ldx, ldx, D, nullptr, nu, ldt, vecs, nv, tail_mask, out + n, ldo,
                                        scale);
    }
  };
  int64_t n = 0;
  for (; n + kRB <= rows; n += kRB) block(std::integral_constant<int, kRB>{}, n);
  for (; n < rows; ++n) block(std::integral_constant<int, 1>{}, n);
}

template <typename T>
void maha_vecs(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, int64_t K,
               const int32_t* vecs, int64_t nv, T* out, int64_t ldo, const T* scale) {
  const Vec<T> tail_mask = tail_mask_of<T>(D);
  const int64_t blocks = (K + kKB - 1) / kKB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    const T* pb = p ? p + k0 * ldt : nullptr;
    const T* nb = nu + k0 * ldt;
    const T* sb = scale ? scale + k0 : nullptr;
    T* ob = out + k0 * ldo;
    switch (kb) {
      case 1:
        maha_vecs_rows<T, 1>(x, ldx, rows, D, pb, nb, ldt, vecs, nv, tail_mask, ob, ldo, sb);
        break;
      case 2:
        maha_vecs_rows<T, 2>(x, ldx, rows, D, pb, nb, ldt, vecs, nv, tail_mask, ob, ldo, sb);
        break;
      case 3:
        if constexpr (kKB >= 3) maha_vecs_rows<T, 3>(x, ldx, rows, D, pb, nb, ldt, vecs, nv, tail_mask, ob, ldo, sb);
        break;
      case 4:
        if constexpr (kKB >= 4) maha_vecs_rows<T, 4>(x, ldx, rows, D, pb, nb, ldt, vecs, nv, tail_mask, ob, ldo, sb);
        break;
      case 5:
        if constexpr (kKB >= 5) maha_vecs_rows<T, 5>(x, ldx, rows, D, pb, nb, ldt, vecs, nv, tail_mask, ob, ldo, sb);
        break;
      default: break;
    }
  }
}

}  // namespace
}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm
