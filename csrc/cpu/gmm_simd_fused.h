// Steps 1 and 2 of the CPU GMM E-step (gmm_kernels.h) in one pass, for the rows kernels (float32
// diag and spherical's dot form, D <= kSmallD) with every component in one group and unit weights
// (SimdKernels::rows_softmax). Not a normal header: gmm_simd_<isa>.cpp includes it once, after
// gmm_simd_softmax.h (same rules).
//
// Apart, step 1 stores each block's distances (or joints) to the tile, and the block softmax reads
// them twice, stores the exponentials, then reads those again to scale them, with the tile's moment
// sums on the way. Here they stay in registers from the distance loop to the responsibilities: the
// same operations in the same order (so the same bits: tests/ops/test_gmm_fused.py), a third of the
// tile's loads and stores, and the zero count for step 3's dense-or-sparse choice on the way.
namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

// Sums over the tile's blocks, per component, kept until the tile is done (none is added where a
// block has a row without a finite joint).
template <int KB, bool kDiag>
struct TileSums {
  static constexpr int kTail = kWF / 2 > 0 ? kWF / 2 : 1;
  VF nk[KB] = {};                                        // sum of r, float32 (scale_fused's acc)
  VF tail[KB][kTail];                                    // sum of r x_d, the m tail features
  VF tail_sq[kDiag ? KB : 1][kDiag ? kTail : 1];         // diag: sum of r x_d^2
  VD norm_lo[KB] = {}, norm_hi[KB] = {};                 // dot form: sum of r ||y||^2, float64
  VI nonzero = {};                                       // minus the count of r != 0
  explicit TileSums(int64_t m) {
    for (int k = 0; k < KB; ++k) {
      for (int64_t i = 0; i < m; ++i) {
        tail[k][i] = VF{};
        if constexpr (kDiag) tail_sq[k][i] = VF{};
      }
    }
  }
};

template <int KB, bool kDiag>
bool rows_softmax_k(const float* x, int64_t ldx, int64_t rows, int64_t D, const float* pT, const float* nuT,
                    int64_t ldk, const float* c, double* norms, const double* sph, const double* log_const,
                    float* xtail, float* resp, int64_t ldo, double* nk, FusedSums* f, double* loglik, int64_t* nnz) {
  alignas(64) float yT[kSmallD * kWF];
  alignas(64) float pad[kWF * kSmallD];
  const int64_t m = f->m;
  TileSums<KB, kDiag> t(m);
  BlockLoglik unweighted(KB);
  // The rest of a block's step after its distances or joints j: false where a row has no finite joint.
  auto finish = [&](VF (&j)[KB], int64_t n, int64_t count) __attribute__((always_inline)) {
    if (count < kWF) {  // padding rows: distance or joint 0 (as the softmaxes)
      for (int k = 0; k < KB; ++k)
        for (int64_t l = count; l < kWF; ++l) j[k][l] = 0.0f;
    }
    VF e[KB], tf, sv;
    if (!block_exp<kDiag>(
            KB, log_const, [&](int64_t k) __attribute__((always_inline)) { return j[k]; },
            [&](int64_t k, VF ek) __attribute__((always_inline)) { e[k] = ek; }, tf, sv)) {
      return false;
    }
    VF w = VF{} + 1.0f;  // padding rows: weight 0
    for (int64_t l = count; l < kWF; ++l) w[l] = 0.0f;
    const VF scale = block_scale<kDiag>(w, sv);
    unweighted.add(lo_double(tf), hi_double(tf), sv, count);
    // scale_fused's block: resp, its sums, the tail features' and (dot form) the norms' moments
    VD nlo = {}, nhi = {};
    if constexpr (!kDiag) {
      nlo = load<VD>(norms + n);
      nhi = load<VD>(norms + n + kWD);
    }
    for (int k = 0; k < KB; ++k) {
      const VF r = e[k] * scale;
      __builtin_memcpy(resp + k * ldo + n, &r, sizeof(VF));
      t.nk[k] += r;
      for (int64_t i = 0; i < m; ++i) {
        const VF xi = load<VF>(xtail + i * ldo + n), rx = r * xi;
        t.tail[k][i] += rx;
        if constexpr (kDiag) t.tail_sq[k][i] += rx * xi;
      }
      if constexpr (!kDiag) {
        t.norm_lo[k] += lo_double(r) * nlo;
        t.norm_hi[k] += hi_double(r) * nhi;
      }
      t.nonzero += (VI)(r != 0.0f);
    }
    return true;
  };
  // The dot form on 16 registers takes two blocks at a time (rows_joints2): the op 0.93-0.98x at
  // spherical K = 10, D = 50 on AVX2 and 0.94x on 16-byte vectors (in-process A/B); none at K = 7
  // (1.02x), nor for diag's distances (1.0x), nor with 64-byte vectors (1.01x).
  constexpr bool kPairs = !kDiag && kBytes <= 32 && KB >= 8;
  alignas(64) float y1T[kPairs ? kSmallD * kWF : 1];
  for (int64_t n = 0; n < rows;) {
    const int64_t count = min_of<int64_t>(kWF, rows - n);
    int64_t ldb = 0;
    NextBlock next;
    const float* xb = block_rows(x, ldx, rows, n, D, pad, &ldb, &next);
    rows_transposed(xb, ldb, D, c, yT, kDiag ? nullptr : norms + n, m ? xtail + n : nullptr, ldo);
    VF j[KB];
    if constexpr (kPairs) {
      if (n + 2 * kWF <= rows) {  // two full blocks: see rows_joints2
        const NextBlock next1 = second_block(x, ldx, rows, n, D, c, y1T, norms, m ? xtail : nullptr, ldo, pad);
        VF j1[KB];
        rows_joints2<KB>(yT, y1T, D, nuT, ldk, norms + n, norms + n + kWF, sph, j, j1, next1);
        if (!finish(j, n, kWF) || !finish(j1, n + kWF, kWF)) return false;
        n += 2 * kWF;
        continue;
      }
    }
    if constexpr (kDiag) {
      rows_maha<KB>(yT, D, pT, nuT, ldk, j, next);
    } else {
      rows_joints<KB>(yT, D, nuT, ldk, norms + n, sph, j, next);
    }
    if (!finish(j, n, count)) return false;
    n += kWF;
  }
  for (int k = 0; k < KB; ++k) {
    nk[k] += sum_as_double(t.nk[k]);
    for (int64_t i = 0; i < m; ++i) {
      f->sx[k * f->D + f->d0 + i] += sum_as_double(t.tail[k][i]);
      if constexpr (kDiag) f->sxx[k * f->D + f->d0 + i] += sum_as_double(t.tail_sq[k][i]);
    }
    if constexpr (!kDiag) f->sxx_norms[k] += hsum<double>(t.norm_lo[k] + t.norm_hi[k]);
  }
  *nnz = nonzero_count(t.nonzero);
  *loglik = unweighted.total();
  f->done = true;
  return true;
}

template <int KB, bool kDiag>
bool rows_softmax_of(int64_t K, const float* x, int64_t ldx, int64_t rows, int64_t D, const float* pT,
                     const float* nuT, int64_t ldk, const float* c, double* norms, const double* sph,
                     const double* log_const, float* xtail, float* resp, int64_t ldo, double* nk, FusedSums* f,
                     double* loglik, int64_t* nnz) {
  if constexpr (KB > 1) {
    if (K < KB) {
      return rows_softmax_of<KB - 1, kDiag>(K, x, ldx, rows, D, pT, nuT, ldk, c, norms, sph, log_const, xtail, resp,
                                            ldo, nk, f, loglik, nnz);
    }
  }
  return rows_softmax_k<KB, kDiag>(x, ldx, rows, D, pT, nuT, ldk, c, norms, sph, log_const, xtail, resp, ldo, nk, f,
                                   loglik, nnz);
}

// SimdKernels::rows_softmax: c null is diag (K <= kRowsKB<true>), else the dot form (kRowsKB<false>).
bool rows_softmax(const float* x, int64_t ldx, int64_t rows, int64_t D, const float* pT, const float* nuT,
                  int64_t ldk, int64_t K, const float* c, double* norms, const double* sph, const double* log_const,
                  float* xtail, float* resp, int64_t ldo, double* nk, FusedSums* f, double* loglik, int64_t* nnz) {
  if (K < 1) return false;
  if (c == nullptr) {
    return K <= kRowsKB<true> && rows_softmax_of<kRowsKB<true>, true>(K, x, ldx, rows, D, pT, nuT, ldk, c, norms,
                                                                        sph, log_const, xtail, resp, ldo, nk, f,
                                                                        loglik, nnz);
  }
  return K <= kRowsKB<false> && rows_softmax_of<kRowsKB<false>, false>(K, x, ldx, rows, D, pT, nuT, ldk, c, norms,
                                                                         sph, log_const, xtail, resp, ldo, nk, f,
                                                                         loglik, nnz);
}

}  // namespace
}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm
