// Step 2 of the width-generic SIMD kernels (responsibilities of float32 x); included after
// gmm_simd.h and gmm_simd_rows.h, before gmm_simd_em.h, under the same target (see gmm_simd.h).
namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

// ---------------------------------------------------------------------------------------------
// 2. Responsibilities of float32 x, in float32.

// exp(v) for v <= 0 in float32 (Cephes expf: Cody-Waite reduction by ln 2, degree-6 polynomial,
// within 2 ulp); exactly 0 below -87 (where e^v < 2^-125: such a responsibility is dropped).
// With 64-byte vectors, e 2^n by vscalefps, zeroed below -87 by its mask (NaN kept): no clamp, and
// two uops for the integer path's six and the clamp's two, the same bits where the result is normal.
LGM_INLINE VF exp_nonpositive(VF v) {
#if defined(__x86_64__) && LGM_SIMD_BYTES == 64
  const VF x = v;  // lanes below -87 are masked out at the end, whatever they hold
#else
  const VF x = v < -87.0f ? VF{} - 87.0f : v;
#endif
  const VF shifter = VF{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const VF t = x * 1.44269504088896341f + shifter;
  const VF n = t - shifter;
  VF r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  VF q = VF{} + 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const VF e = q * (r * r) + r + 1.0f;
#if defined(__x86_64__) && LGM_SIMD_BYTES == 64
  const __mmask16 keep = _mm512_cmp_ps_mask((__m512)v, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
  return (VF)_mm512_maskz_scalef_ps(keep, (__m512)e, (__m512)n);
#else
  // 2^n from the integer in t's low mantissa bits, placed in the exponent field.
  const VI two_n = (((VI)t - (VI)shifter) + 127) << 23;
  const VF out = e * (VF)two_n;
  return (VF)((VI)out & ~(VI)(v < -87.0f));
#endif
}

// Component-major tiles [K, ld] (columns: the tile's rows), so every loop runs along rows.
// The row-at-a-time form, for a tile with a row of weight 0 or without a finite joint
// log-probability (common/gmm.h row_softmax).
double softmax_f32_rows(const float* maha, int64_t rows, int64_t K, int64_t ld, const double* log_const,
                        const float* sw, float* work, double* rowbuf, float* resp, double* nk) {
  constexpr int64_t W = width<float>();
  double* top = rowbuf;               // [rows] max_k joint_nk (common/gmm.h joint_log_prob, float64)
  double* scale = rowbuf + ld;        // [rows] w_n / sum_k e_nk
  double* special = rowbuf + 2 * ld;  // [rows] 0 normally; 1: weight 0 -> resp 0; 2: no finite joint -> NaN
  for (int64_t n = 0; n < rows; ++n) top[n] = -INFINITY;
  for (int64_t k = 0; k < K; ++k) {
    const float* m = maha + k * ld;
    for (int64_t n = 0; n < rows; ++n) {
      const double j = log_const[k] - 0.5 * static_cast<double>(m[n]);
      top[n] = j > top[n] || j != j ? j : top[n];  // a NaN joint (NaN in x) stays: top NaN
    }
  }
  for (int64_t k = 0; k < K; ++k) {  // e = exp(joint - top), float32
    const float* m = maha + k * ld;
    float* wk = work + k * ld;
    for (int64_t n = 0; n < rows; ++n) {
      wk[n] = static_cast<float>((log_const[k] - 0.5 * static_cast<double>(m[n])) - top[n]);
    }
    for (int64_t n = rows; n < (rows + W - 1) / W * W; ++n) wk[n] = -100.0f;
    for (int64_t n = 0; n < rows; n += W) {
      const VF e = exp_nonpositive(load<VF>(wk + n));
      __builtin_memcpy(wk + n, &e, sizeof(VF));
    }
  }
  for (int64_t n = 0; n < rows; ++n) scale[n] = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = work + k * ld;
    for (int64_t n = 0; n < rows; ++n) scale[n] += static_cast<double>(wk[n]);
  }
  double loglik = 0.0;
  for (int64_t n = 0; n < rows; ++n) {
    const double w = sw ? static_cast<double>(sw[n]) : 1.0, sum = scale[n];
    special[n] = w == 0.0 ? 1.0 : (top[n] > -INFINITY ? 0.0 : 2.0);
    scale[n] = w / sum;
    if (w != 0.0) loglik += w * (top[n] > -INFINITY ? top[n] + std::log(sum) : top[n]);  // -inf or NaN
  }
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = work + k * ld;
    float* rk = resp + k * ld;
    double total = 0.0;
    for (int64_t n = 0; n < rows; ++n) {
      const double r = special[n] == 0.0 ? static_cast<double>(wk[n]) * scale[n] : (special[n] == 1.0 ? 0.0 : NAN);
      rk[n] = static_cast<float>(r);
      total += r;
    }
    nk[k] += total;
  }
  return loglik;
}

// sum_k one(k) for k < K in float32, in two chains (even and odd k; each term in [0, 1], one near 1).
template <typename F>
LGM_INLINE VF sum_two_chains(int64_t K, F&& one) {
  VF e0 = {}, e1 = {};
  int64_t k = 0;
  for (; k + 1 < K; k += 2) {
    e0 += one(k);
    e1 += one(k + 1);
  }
  if (k < K) e0 += one(k);
  return e0 + e1;
}

// t1[j] += r x_j, and with squares t2[j] += r x_j^2 (as (r x_j) x_j), for the M tail features' vectors x
// of the same W rows as r: one chain per feature, in row order (moments_tail and scale_fused).
template <int M, bool kSquares>
LGM_INLINE void add_tail_terms(VF r, const VF* x, VF* t1, VF* t2) {
  for (int j = 0; j < M; ++j) {
    const VF rx = r * x[j];
    t1[j] += rx;
    if constexpr (kSquares) t2[j] += rx * x[j];
  }
}

// The count of r != 0 from lanes that each added (VI)(r != 0), i.e. minus one per non-zero r.
LGM_INLINE int64_t nonzero_count(VI minus_counts) {
  int64_t count = 0;
  for (int64_t l = 0; l < width<float>(); ++l) count -= minus_counts[l];
  return count;
}

// resp [K, ld] = e * scale_n over the padded rows, nk += their float32 sums over the tile; with f,
// the FusedSums from the same registers: M tail features (sums as moments_tail's, one chain per
// (k, feature) in row order) and kNorms the norms (as resp_dot's, in float64), and the count of
// non-zero r (FusedSums::nnz). Lanes past the rows have resp 0.
template <int M, bool kSquares, bool kNorms>
LGM_INLINE void scale_fused(const float* work, const float* scale, int64_t K, int64_t ld, int64_t padded, float* resp,
                            double* nk, const FusedSums* f) {
  constexpr int64_t W = width<float>();
  VI nonzero = {};  // minus the count of r != 0
  for (int64_t k = 0; k < K; ++k) {
    VF acc = {}, t1[M > 0 ? M : 1] = {}, t2[M > 0 ? M : 1] = {};
    VD n0s = {}, n1s = {};
    for (int64_t n0 = 0; n0 < padded; n0 += W) {
      const VF r = load<VF>(work + k * ld + n0) * load<VF>(scale + n0);
      __builtin_memcpy(resp + k * ld + n0, &r, sizeof(VF));
      acc += r;
      nonzero += (VI)(r != 0.0f);
      if constexpr (M > 0) {
        VF xv[M];
        for (int j = 0; j < M; ++j) xv[j] = load<VF>(f->xt + j * ld + n0);
        add_tail_terms<M, kSquares>(r, xv, t1, t2);
      }
      if constexpr (kNorms) {
        n0s += lo_double(r) * load<VD>(f->norms + n0);
        n1s += hi_double(r) * load<VD>(f->norms + n0 + kWD);
      }
    }
    nk[k] += sum_as_double(acc);
    for (int j = 0; j < M; ++j) {
      f->sx[k * f->D + f->d0 + j] += sum_as_double(t1[j]);
      if constexpr (kSquares) f->sxx[k * f->D + f->d0 + j] += sum_as_double(t2[j]);
    }
    if constexpr (kNorms) f->sxx_norms[k] += hsum<double>(n0s + n1s);
  }
  if (f && f->nnz) *f->nnz = nonzero_count(nonzero);
}

template <int M>
LGM_INLINE void scale_fused_m(const float* work, const float* scale, int64_t K, int64_t ld, int64_t padded,
                              float* resp, double* nk, const FusedSums* f) {
  if (f->norms) {
    if (f->sxx) return scale_fused<M, true, true>(work, scale, K, ld, padded, resp, nk, f);
    return scale_fused<M, false, true>(work, scale, K, ld, padded, resp, nk, f);
  }
  if (f->sxx) return scale_fused<M, true, false>(work, scale, K, ld, padded, resp, nk, f);
  scale_fused<M, false, false>(work, scale, K, ld, padded, resp, nk, f);
}

void scale_responsibilities(const float* work, const float* scale, int64_t K, int64_t ld, int64_t padded, float* resp,
                            double* nk, FusedSums* f) {
  if (f && (f->m > 0 || f->norms)) {
    f->done = with_tail_width(f->m, [&](auto width_m) {
      scale_fused_m<decltype(width_m)::value>(work, scale, K, ld, padded, resp, nk, f);
    });
    if (f->done) return;
  }
  scale_fused<0, false, false>(work, scale, K, ld, padded, resp, nk, f);  // nothing fused (done stays false)
}

// Unweighted log-likelihood of the block softmaxes, sum_n (top_n + log sum_n), taken block by
// block from registers: the tops summed in float64 vectors, and one log per `per_log` blocks of the
// product of their sums (each in [1, K + 1e-4]: (K + 1)^rows stays below 2^1000 in float64);
// lanes from `valid` on (padding) count as top 0 and sum 1. A scalar sum over the rows had been
// 12% of softmax_f32_joint (one add chain, 4 cycles a row); one log per 16 rows, 3% of the op at
// K = 10 (AVX-512: a log per block).
struct BlockLoglik {
  VD top_lo = {}, top_hi = {}, prod = VD{} + 1.0;
  int64_t pending = 0, per_log = 1;
  double logs = 0.0;

  explicit BlockLoglik(int64_t K) {
    const double rows = std::floor(1000.0 / std::log2(static_cast<double>(K) + 1.0));
    per_log = std::max<int64_t>(1, static_cast<int64_t>(rows) / width<float>());
  }
  LGM_INLINE void add(VD t0, VD t1, VF sum, int64_t valid) {
    if (valid < width<float>()) {
      for (int64_t l = valid; l < width<float>(); ++l) {
        sum[l] = 1.0f;
        if (l < kWD) {
          t0[l] = 0.0;
        } else {
          t1[l - kWD] = 0.0;
        }
      }
    }
    top_lo += t0;
    top_hi += t1;
    prod *= lo_double(sum) * hi_double(sum);
    if (++pending == per_log) flush_logs();
  }
  LGM_INLINE void flush_logs() {
    double q = 1.0;
    for (int64_t l = 0; l < kWD; ++l) q *= prod[l];
    logs += std::log(q);
    prod = VD{} + 1.0;
    pending = 0;
  }
  LGM_INLINE double total() {
    if (pending) flush_logs();
    return hsum<double>(top_lo + top_hi) + logs;
  }
};

// One block of W rows of the block softmaxes (softmax_f32_blocks' a. and b., softmax_f32_joint's, the
// fused pass's): value(k) gives component k's vector, diag's distance (kDiag) or the dot form's joint;
// put(k, e) takes e_k = exp(joint - top). Sets the float32 top tf and the float32 sum sv of the e;
// false (put not called) where a row has no finite joint.
template <bool kDiag, typename Value, typename Put>
LGM_INLINE bool block_exp(int64_t K, const double* log_const, Value&& value, Put&& put, VF& tf, VF& sv) {
  tf = VF{} - INFINITY;
  for (int64_t k = 0; k < K; ++k) {
    const VF j = kDiag ? static_cast<float>(log_const[k]) - 0.5f * value(k) : value(k);
    tf = j > tf ? j : tf;
  }
  if (!all_above_minus_inf(tf)) return false;
  const VD t0 = lo_double(tf), t1 = hi_double(tf);
  sv = sum_two_chains(K, [&](int64_t k) __attribute__((always_inline)) {
    VF e;
    if constexpr (kDiag) {
      const VF m = value(k);
      const VD d0 = (log_const[k] - 0.5 * lo_double(m)) - t0, d1 = (log_const[k] - 0.5 * hi_double(m)) - t1;
      e = exp_nonpositive(to_float(d0, d1));
    } else {
      e = exp_nonpositive(value(k) - tf);
    }
    put(k, e);
    return e;
  });
  return true;
}

// w / sum of a block: diag's in float64, the dot form's in float32 (as each softmax had it).
template <bool kDiag>
LGM_INLINE VF block_scale(VF w, VF sv) {
  if constexpr (kDiag) return to_float(lo_double(w) / lo_double(sv), hi_double(w) / hi_double(sv));
  return w / sv;
}

// The same by blocks of W rows; false (nothing written to nk) where a row needs the row-at-a-time
// form. Lanes from rows up to a multiple of W get maha 0 and weight 0.
//   a. top_n ~ max_k joint_nk in float32: any shift gives the same softmax and lse = top + log sum,
//      and this one keeps joint - top below ~1e-5, where exp_nonpositive is still exact;
//   b. joint - top in float64 (the two are close: float32 would lose digits), rounded once for the
//      float32 exp; sum_n of the float32 e in float32;
//   c. resp = e w / sum in float32, nk += float32 sums over the tile.
bool softmax_f32_blocks(float* maha, int64_t rows, int64_t K, int64_t ld, const double* log_const, const float* sw,
                        float* work, double* rowbuf, float* resp, double* nk, double* loglik, FusedSums* fused) {
  constexpr int64_t W = width<float>();
  const int64_t padded = (rows + W - 1) / W * W;
  double* top = rowbuf;                                        // [padded]
  double* sum = rowbuf + ld;                                   // [padded]
  float* scale = reinterpret_cast<float*>(rowbuf + 2 * ld);  // [padded] w / sum
  if (sw) {
    for (int64_t n = 0; n < rows; ++n) {
      if (sw[n] == 0.0f) return false;
    }
  }
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = rows; n < padded; ++n) maha[k * ld + n] = 0.0f;
  BlockLoglik unweighted(K);
  for (int64_t n0 = 0; n0 < padded; n0 += W) {
    VF tf, ef;
    if (!block_exp<true>(
            K, log_const, [&](int64_t k) __attribute__((always_inline)) { return load<VF>(maha + k * ld + n0); },
            [&](int64_t k, VF e) __attribute__((always_inline)) {
              __builtin_memcpy(work + k * ld + n0, &e, sizeof(VF));
            },
            tf, ef)) {
      return false;
    }
    const VD t0 = lo_double(tf), t1 = hi_double(tf), s0 = lo_double(ef), s1 = hi_double(ef);
    float wbuf[W];
    for (int64_t j = 0; j < W; ++j) wbuf[j] = n0 + j < rows ? (sw ? sw[n0 + j] : 1.0f) : 0.0f;
    const VF c = block_scale<true>(load<VF>(wbuf), ef);
    __builtin_memcpy(scale + n0, &c, sizeof(VF));
    if (!sw) {
      unweighted.add(t0, t1, ef, rows - n0);
      continue;
    }
    __builtin_memcpy(top + n0, &t0, sizeof(VD));  // for the weighted log-likelihood (d.)
    __builtin_memcpy(top + n0 + kWD, &t1, sizeof(VD));
    __builtin_memcpy(sum + n0, &s0, sizeof(VD));
    __builtin_memcpy(sum + n0 + kWD, &s1, sizeof(VD));
  }
  scale_responsibilities(work, scale, K, ld, padded, resp, nk, fused);
  // d. sum_n w_n (top_n + log sum_n)
  double ll = 0.0;
  if (sw) {
    for (int64_t n = 0; n < rows; ++n) ll += static_cast<double>(sw[n]) * (top[n] + std::log(sum[n]));
  } else {
    ll = unweighted.total();
  }
  *loglik = ll;
  return true;
}

// resp [K, ld] = w_n softmax_k(log_const_k - maha_kn / 2) in float32 (computed in float64 but the exp).
double softmax_f32(float* maha, int64_t rows, int64_t K, int64_t ld, const double* log_const, const float* sw,
                   float* work, double* rowbuf, float* resp, double* nk, FusedSums* fused) {
  double loglik = 0.0;
  if (softmax_f32_blocks(maha, rows, K, ld, log_const, sw, work, rowbuf, resp, nk, &loglik, fused)) return loglik;
  return softmax_f32_rows(maha, rows, K, ld, log_const, sw, work, rowbuf, resp, nk);
}

// The same from float32 joint log-probabilities j [K, ld] (the dot form's tile: rounded once from
// float64, so the rounding differs row to row), all in float32 by blocks of W rows: top = max_k j,
// e = exp(j - top), sum in two chains; resp = e w / sum, nk += float32 sums over the tile; loglik
// in float64. Rows of weight 0 or without a finite j take the row-at-a-time form, on maha' = -2 j
// and log_const 0 (exact), which overwrites j.
double softmax_f32_joint(float* joint, int64_t rows, int64_t K, int64_t ld, const float* sw, float* work,
                         double* rowbuf, float* resp, double* nk, FusedSums* fused) {
  constexpr int64_t W = width<float>();
  const int64_t padded = (rows + W - 1) / W * W;
  float* top = reinterpret_cast<float*>(rowbuf);  // [padded] each; rowbuf holds 6 ld + 16 K floats
  float* sum = top + ld;
  float* scale = top + 2 * ld;
  bool blocks = true;
  if (sw) {
    for (int64_t n = 0; n < rows && blocks; ++n) blocks = sw[n] != 0.0f;
  }
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = rows; n < padded; ++n) joint[k * ld + n] = 0.0f;
  BlockLoglik unweighted(K);
  for (int64_t n0 = 0; n0 < padded && blocks; n0 += W) {
    VF tf, sv;
    blocks = block_exp<false>(
        K, nullptr, [&](int64_t k) __attribute__((always_inline)) { return load<VF>(joint + k * ld + n0); },
        [&](int64_t k, VF e) __attribute__((always_inline)) { __builtin_memcpy(work + k * ld + n0, &e, sizeof(VF)); },
        tf, sv);
    if (!blocks) break;
    float wbuf[W];
    for (int64_t l = 0; l < W; ++l) wbuf[l] = n0 + l < rows ? (sw ? sw[n0 + l] : 1.0f) : 0.0f;
    const VF c = block_scale<false>(load<VF>(wbuf), sv);
    __builtin_memcpy(scale + n0, &c, sizeof(VF));
    if (!sw) {
      unweighted.add(lo_double(tf), hi_double(tf), sv, rows - n0);
      continue;
    }
    __builtin_memcpy(top + n0, &tf, sizeof(VF));  // for the weighted log-likelihood
    __builtin_memcpy(sum + n0, &sv, sizeof(VF));
  }
  if (!blocks) {
    double* zeros = rowbuf + 3 * ld;  // [K]
    for (int64_t k = 0; k < K; ++k) {
      zeros[k] = 0.0;
      for (int64_t n = 0; n < rows; ++n) joint[k * ld + n] *= -2.0f;
    }
    return softmax_f32_rows(joint, rows, K, ld, zeros, sw, work, rowbuf, resp, nk);
  }
  scale_responsibilities(work, scale, K, ld, padded, resp, nk, fused);
  if (!sw) return unweighted.total();
  double ll = 0.0;
  for (int64_t n = 0; n < rows; ++n)
    ll += static_cast<double>(sw[n]) * (static_cast<double>(top[n]) + std::log(static_cast<double>(sum[n])));
  return ll;
}

}  // namespace
}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm
