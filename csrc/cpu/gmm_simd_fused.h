// Steps 1 and 2 of the CPU GMM E-step (gmm_kernels.h) in one pass, for the dot form (float32
// spherical, D <= kSmallD) with every component in one group of the rows kernel and unit weights
// (SimdKernels::rows_softmax). Not a normal header: gmm_simd_<isa>.cpp includes it once, after
// gmm_simd_softmax.h (same rules).
//
// Apart, step 1 stored each block's joints to the tile, and the block softmax read them twice, stored
// the exponentials, then read those again to scale them, with the tile's moment sums on the way. Here
// a block's joints stay in registers from the distances to the responsibilities: the same operations
// in the same order (so the same bits: tests/ops/test_gmm_fused.py), a third of the tile's loads
// and stores, and the zero count for step 3's dense-or-sparse choice on the way.
namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

// Sums over the tile's blocks, per component, kept until the tile is done (none is added where a
// block has a row without a finite joint).
template <int KB>
struct TileSums {
  VF nk[KB] = {};                       // sum of r, float32 (scale_fused's acc)
  VF tail[KB][kWF / 2 > 0 ? kWF / 2 : 1] = {};  // sum of r x_d for the m tail features
  VD norm_lo[KB] = {}, norm_hi[KB] = {};  // sum of r ||y||^2, float64
  VI nonzero = {};                      // minus the count of r != 0
};

template <int KB>
bool rows_softmax_k(const float* x, int64_t ldx, int64_t rows, int64_t D, const float* nuT, int64_t ldk,
                    const float* c, double* norms, const double* sph, float* xtail, float* resp, int64_t ldo,
                    double* nk, FusedSums* f, double* loglik, int64_t* nnz) {
  alignas(64) float yT[kSmallD * kWF];
  alignas(64) float pad[kWF * kSmallD];
  const int64_t m = f->m;
  TileSums<KB> t;
  BlockLoglik unweighted;
  for (int64_t n = 0; n < rows; n += kWF) {
    const int64_t count = min_of<int64_t>(kWF, rows - n);
    int64_t ldb = 0;
    NextBlock next;
    const float* xb = block_rows(x, ldx, rows, n, D, pad, &ldb, &next);
    rows_transposed(xb, ldb, D, c, yT, norms + n, m ? xtail + n : nullptr, ldo);
    VF j[KB];
    rows_joints<KB>(yT, D, nuT, ldk, norms + n, sph, j, next);
    if (count < kWF) {  // padding rows: joint 0, weight 0 (as softmax_f32_joint)
      for (int k = 0; k < KB; ++k)
        for (int64_t l = count; l < kWF; ++l) j[k][l] = 0.0f;
    }
    // softmax_f32_joint's block: top, e = exp(j - top), sum in two chains, scale = w / sum
    VF tf = VF{} - INFINITY;
    for (int k = 0; k < KB; ++k) tf = j[k] > tf ? j[k] : tf;
    for (int64_t l = 0; l < kWF; ++l) {
      if (!(tf[l] > -INFINITY)) return false;
    }
    VF e[KB];
    const VF sv = sum_two_chains(KB, [&](int64_t k) __attribute__((always_inline)) {
      e[k] = exp_nonpositive(j[k] - tf);
      return e[k];
    });
    float wbuf[kWF];
    for (int64_t l = 0; l < kWF; ++l) wbuf[l] = l < count ? 1.0f : 0.0f;
    const VF scale = load<VF>(wbuf) / sv;
    unweighted.add(lo_double(tf), hi_double(tf), sv, count);
    // scale_fused's block: resp, its sums, the tail features' and the norms' moments
    const VD nlo = load<VD>(norms + n), nhi = load<VD>(norms + n + kWD);
    for (int k = 0; k < KB; ++k) {
      const VF r = e[k] * scale;
      __builtin_memcpy(resp + k * ldo + n, &r, sizeof(VF));
      t.nk[k] += r;
      for (int64_t i = 0; i < m; ++i) t.tail[k][i] += r * load<VF>(xtail + i * ldo + n);
      t.norm_lo[k] += lo_double(r) * nlo;
      t.norm_hi[k] += hi_double(r) * nhi;
      t.nonzero += (VI)(r != 0.0f);
    }
  }
  for (int k = 0; k < KB; ++k) {
    nk[k] += sum_as_double(t.nk[k]);
    for (int64_t i = 0; i < m; ++i) f->sx[k * f->D + f->d0 + i] += sum_as_double(t.tail[k][i]);
    f->sxx_norms[k] += hsum<double>(t.norm_lo[k] + t.norm_hi[k]);
  }
  int64_t count_nz = 0;
  for (int64_t l = 0; l < kWF; ++l) count_nz -= t.nonzero[l];
  *nnz = count_nz;
  *loglik = unweighted.total();
  f->done = true;
  return true;
}

template <int KB>
bool rows_softmax_of(int64_t K, const float* x, int64_t ldx, int64_t rows, int64_t D, const float* nuT, int64_t ldk,
                     const float* c, double* norms, const double* sph, float* xtail, float* resp, int64_t ldo,
                     double* nk, FusedSums* f, double* loglik, int64_t* nnz) {
  if constexpr (KB > 1) {
    if (K < KB) return rows_softmax_of<KB - 1>(K, x, ldx, rows, D, nuT, ldk, c, norms, sph, xtail, resp, ldo, nk, f,
                                               loglik, nnz);
  }
  return rows_softmax_k<KB>(x, ldx, rows, D, nuT, ldk, c, norms, sph, xtail, resp, ldo, nk, f, loglik, nnz);
}

// SimdKernels::rows_softmax (K <= kRowsKB<false>).
bool rows_softmax(const float* x, int64_t ldx, int64_t rows, int64_t D, const float* nuT, int64_t ldk, int64_t K,
                  const float* c, double* norms, const double* sph, float* xtail, float* resp, int64_t ldo,
                  double* nk, FusedSums* f, double* loglik, int64_t* nnz) {
  if (K < 1 || K > kRowsKB<false>) return false;
  return rows_softmax_of<kRowsKB<false>>(K, x, ldx, rows, D, nuT, ldk, c, norms, sph, xtail, resp, ldo, nk, f, loglik,
                                         nnz);
}

}  // namespace
}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm
