#pragma once
// Internal to the CPU kernels of gmm_em_stats and gmm_log_prob (cpu/gmm*.cpp): one pass over x in
// tiles of rows.
//
// Each tile (cache-resident) goes through three steps:
//   1. maha [K, rows] (component-major, like every tile below): squared Mahalanobis distances.
//      diag/spherical: a register-blocked kernel computing sum_d (x_d p_kd - mu_kd p_kd)^2 (the
//      centred form: no cancellation, 2 FMAs per term; spherical p_k (p_k sum_d (mu_kd - x_d)^2), a
//      subtraction and an FMA; float32 spherical with D <= 64: a dot product on rows centred by
//      the mean of the means, Plan::centre), summed in x's dtype over D, with vectors along D
//      (D > 64), along rows (float32 diag/spherical, D <= 64, Plan::rows_form) or along components
//      (float64, D <= 64); tied/full: y = x P by GEMM, then the same kernel on
//      sum_d (y_d - (mu P)_d)^2.
//   2. row-wise log-sum-exp and responsibilities [K, rows] in x's dtype: float32 x takes joint
//      log-probabilities in float64 but a vectorised float32 exp of (joint - row max) (exactly 0
//      below e^-87) summed in float32 (the dot form: joints already in the tile, all float32),
//      float64 x libm's exp (common/gmm.h). Steps 1 and 2 take one pass (the same bits) where the
//      rows kernel holds every component in one group and rows have unit weights
//      (SimdKernels::rows_softmax, gmm_simd_fused.h; LGM_GMM_FUSE=0 turns it off).
//   3. moments sum_n r_nk x_n (and x_n^2) by a register-blocked kernel, dense, or sparse over the
//      rows whose responsibility is not 0: products and sums over the tile in x's dtype, added to
//      float64 totals (float32: within 1e-7 of float64 sums at N = 1e6, tested; spherical: r
//      times ||x_n||^2, in float64 for D > 64, a float32 sum for D <= 64). tied/full second
//      moments by a GEMM in x's dtype over the tile, added in float64.
// Every thread runs its tiles with subnormal floats flushed to zero (FlushSubnormals): a
// responsibility e^-87 * w / sum can land below FLT_MIN, and each vector instruction with such a
// lane took a microcode assist (~100 cycles). Those values add under 1e-37 to any sum.
// Tiles are grouped into chunks whose boundaries depend only on (N, D, K, covariance type, vector
// width); each chunk owns a float64 accumulator and chunks are summed in order at the end, so the
// result does not depend on the number of threads.
//
// The SIMD kernels of steps 1-3 exist once per instruction set (the gmm_simd*.h headers, compiled by
// gmm_simd_<isa>.cpp with that target) and are chosen at run time (gmm_isa.cpp): avx512, avx2 or
// generic (16-byte vectors), or the one named by LGM_GMM_CPU_ISA.
#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/gmm_host.h"

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

namespace lgm {
namespace gmm_cpu {

enum class Isa { kGeneric, kAvx2, kAvx512 };

// Sums that the float32 softmax adds while it writes the responsibilities (block form only), so
// that step 3 does not read the tile of responsibilities again for them: the moments of the
// Plan::tail_d features from xt [m, ld] (sx, and sxx when not null: diag's squares; rows of D from
// feature d0) and, with norms [ld] (the dot form's), spherical sxx_norms[k] += sum_n r_kn norms_n.
// done: set where it added them. nnz not null: the block form writes there its count of non-zero
// responsibilities (step 3's dense-or-sparse choice), which otherwise takes a pass over the tile.
struct FusedSums {
  const float* xt = nullptr;
  int64_t m = 0, D = 0, d0 = 0;
  double* sx = nullptr;
  double* sxx = nullptr;
  const double* norms = nullptr;
  double* sxx_norms = nullptr;
  int64_t* nnz = nullptr;
  bool done = false;
};

// The SIMD kernels of one instruction set, for x of dtype T. Rows of x are read in whole vectors,
// D rounded up to the vector width (what lies past D is masked or never used): the caller copies
// a tile whose last row could not be read that far (gmm_tile.cpp tile_rows).
template <typename T>
struct SimdKernels {
  int bytes;  // vector width in bytes: 64, 32 or 16
  // 1. out[k, r] = sum_d (x_rd p_kd - nu_kd)^2, or (x_rd - nu_kd)^2 when p is null, times scale_k^2
  // when scale is not null; tables [K, ldt], transposed pT, nuT [D, ldk] (null: not used) that
  // small D reads instead, scale [ldk]. Tiles of maha and resp are component-major: [K, ld] with
  // ld = the tile's row count.
  void (*maha)(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, const T* pT,
               const T* nuT, int64_t ldk, int64_t K, T* out, int64_t ldo, const T* scale);
  // 2. (float32 only, else null) resp [K, ld] = w_n softmax_k(log_const_k - maha_kn / 2), nk += sum_n resp;
  // returns sum_n w_n lse_n. Sets maha to 0 from rows up to a multiple of the width. work: float
  // [K, ld]; rowbuf: double [3 ld + 8 K]; fused: null, or the sums to add on the way.
  double (*softmax)(T* maha, int64_t rows, int64_t K, int64_t ld, const double* log_const, const T* sw,
                    float* work, double* rowbuf, T* resp, double* nk, FusedSums* fused);
  // 2. the same from joint log-probabilities [K, ld] (the dot form's tile; float32 only), which it
  // may overwrite.
  double (*softmax_joint)(T* joint, int64_t rows, int64_t K, int64_t ld, const T* sw, float* work, double* rowbuf,
                          T* resp, double* nk, FusedSums* fused);
  // 3. sx[k, d] += sum_n r_kn x_nd and, when sxx is not null, sxx[k, d] += sum_n r_kn x_nd^2 for
  // d < d_end (sx, sxx [K, D]): float64 totals of sums over one tile in x's dtype; r [K, ldr].
  void (*moments_dense)(const T* x, int64_t ldx, int64_t rows, int64_t D, int64_t d_end, const T* r, int64_t ldr,
                        int64_t K, double* sx, double* sxx);
  // 3. the same for features d0 .. d0 + m from their transposed rows xt [m, ldt] (Plan::tail_d,
  // written by maha_rows): vectors along rows, where the last half-used vector along d would cost
  // moments_dense a whole pass.
  void (*moments_tail)(const T* xt, int64_t ldt, int64_t m, int64_t rows, const T* r, int64_t ldr, int64_t K,
                       int64_t D, int64_t d0, double* sx, double* sxx);
  // 3. the same for one component over the m rows idx with responsibilities val.
  void (*moments_sparse)(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const T* val, int64_t m,
                         double* sx, double* sxx);
  // out[n] = ||x_n||^2 in float64, for spherical second moments.
  void (*sq_norms)(const T* x, int64_t ldx, int64_t rows, int64_t D, double* out);
  // out[k] += sum_n r_kn v_n in float64; r [K, ldr], v [rows].
  void (*resp_dot)(const T* r, int64_t ldr, int64_t K, int64_t rows, const double* v, double* out);
  // 1, pruned (gmm_prune.cpp): out[idx_i] += sum over the vectors of d at offsets vecs of
  // (x_d p_d - nu_d)^2, for one component (p, nu: its table rows) and the m rows idx; when p is
  // null, c^2 sum (x_d - nu_d)^2 (spherical: nu the means, c = p_k).
  void (*maha_gather)(const T* x, int64_t ldx, const int32_t* idx, int64_t m, int64_t D, const T* p, const T* nu,
                      const int32_t* vecs, int64_t nv, T* out, T c);
  // The same for every row and component, written (not added) to out [K, ldo]; tables [K, ldt],
  // scale [K] the c of each component when p is null. Null where the row-gather form is faster
  // for the first stage (64-byte vectors).
  void (*maha_vecs)(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt,
                    int64_t K, const int32_t* vecs, int64_t nv, T* out, int64_t ldo, const T* scale);
  // 1. float32 only (else null), D <= kSmallD (diag, spherical): vectors along rows
  // (gmm_simd_rows.h), out [K, ldo]. diag: maha from pT, nuT; c not null: the dot form's joints from
  // rows centred by c, with nuT = (mu - c)^T, and norms [rows rounded up to the width] =
  // ||x_n - c||^2 written (summed in float32).
  // xtail not null: also the last Plan::tail_d features of the rows, transposed, to xtail [tail_d, ldo].
  void (*maha_rows)(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* pT, const T* nuT, int64_t ldk,
                    int64_t K, T* out, int64_t ldo, const T* c, double* norms, const double* sph, T* xtail);
  // 1 and 2 in one pass (gmm_simd_fused.h; float32 only, else null): maha_rows' distances (c null:
  // diag) or joints and their block softmax, for unit weights and K <= rows_softmax_k[diag ? 1 : 0]
  // (one group of components): resp [K, ldo], nk += its sums, f's sums (f->done set), *loglik, *nnz
  // = the count of resp != 0. false where a row has no finite joint: nothing added, and the caller
  // runs steps 1 and 2 apart.
  bool (*rows_softmax)(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* pT, const T* nuT, int64_t ldk,
                       int64_t K, const T* c, double* norms, const double* sph, const double* log_const, T* xtail,
                       T* resp, int64_t ldo, double* nk, FusedSums* f, double* loglik, int64_t* nnz);
  int64_t rows_softmax_k[2];
  // k-means++ (rows_dot.cpp): out [rows, C] = x c^T, float64 totals of per-lane sums in x's dtype;
  // c [C, D] contiguous.
  void (*rows_dot)(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* c, int64_t C, double* out);
  // The same with c in float64 and float64 products of x's values (exact for float32) summed in
  // float64: the greedy seeding's distances, rounded to float32 as scikit-learn's are.
  void (*rows_dot_wide)(const T* x, int64_t ldx, int64_t rows, int64_t D, const double* c, int64_t C, double* out);
};

// Flush-to-zero and denormals-are-zero (MXCSR) on this thread while in scope, then the caller's
// setting again. At K = 100, D = 50 (MNIST PCA), 3% of the float32 responsibilities were subnormal
// and the E-step took 0.81x the time with them flushed (AVX-512), to the same bits.
class FlushSubnormals {
 public:
#if defined(__x86_64__) || defined(__i386__)
  FlushSubnormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | kFtzDaz); }
  ~FlushSubnormals() { _mm_setcsr(saved_); }

 private:
  static constexpr unsigned kFtzDaz = 0x8040;  // FTZ (bit 15), DAZ (bit 6)
  unsigned saved_;
#endif
};

namespace generic {
template <typename T>
const SimdKernels<T>& kernels();
}
#if defined(__x86_64__) || defined(__i386__)
namespace avx2 {
template <typename T>
const SimdKernels<T>& kernels();
}
namespace avx512 {
template <typename T>
const SimdKernels<T>& kernels();
}
#endif

// gmm_isa.cpp: tiles done by SimdKernels::rows_softmax (the op _gmm_cpu_fused_tiles, for tests).
extern std::atomic<int64_t> fused_tile_count;

// gmm_isa.cpp: the instruction set of a request ("auto", "avx512", "avx2", "generic"; "" reads
// LGM_GMM_CPU_ISA, default auto); raises when the host cannot run the one asked for.
Isa resolve_isa(const std::string& request);
const char* isa_name(Isa isa);
template <typename T>
const SimdKernels<T>& simd_kernels(Isa isa);

// ---------------------------------------------------------------------------------------------
// Per-call plan: the shared tables (common/gmm_host.h) padded to the vector width.

constexpr int64_t kSmallD = 64;     // up to this many features, distances vectorise along components
constexpr int64_t kTile = 128;      // rows per tile: x tile + tables stay in L2
// D <= kSmallD on 64-byte vectors: fewer tiles' fixed costs, 2-4% faster at K = 10 and 40, D = 50.
// Not on AVX2, where 256 rows were 2.5-9% slower (K = 10 to 100: the tile's tables leave L1).
constexpr int64_t kSmallDTile = 256;
// D <= kSmallD where a core has at least 1 MiB of L2 (Xeon 207: 2 MiB; Zen 3: 512 KiB), on every
// path: 512 rows of float32, the same bytes of float64. Xeon 207, pca50, in-process A/B, with the
// moments summed by kSumRows: the op 0.976 (spherical K = 10) and 0.987-0.993 (spherical K = 100,
// diag) of 256 rows with 64-byte vectors; the AVX2 path 0.92-0.97 of 128 rows; 1024 rows 1.05 at K = 100.
constexpr int64_t kLargeL2 = int64_t{1} << 20;
constexpr int64_t kLargeL2TileBytes = 512 * 4;
// Bytes of a core's level-2 cache (0 where unknown).
int64_t l2_cache_bytes();
// The moment passes' float32 partial sums run over at most this many rows before they go to
// float64 (issue 7: within 1e-7 of float64 sums at N = 1e6; 512 rows gave diag D = 50's sxx 1.8e-7).
// The block softmaxes' sums of r and of the tail features run over the tile (nk 2e-8 at 512 rows).
constexpr int64_t kSumRows = 256;
constexpr int64_t kFullTile = 512;  // full: larger tiles amortise the float64 D x D adds

template <typename T>
struct Plan {
  const SimdKernels<T>& simd;
  GmmTables tab;
  int64_t K, D, ldt, ldk;
  // spherical: p_k (p_k sum_d (x_d - mu_kd)^2), a subtraction and one FMA per term instead of two
  // FMAs (an FMA overwrites one input, so the scaled form also copies a register per term). Two
  // products by the exact p_k, not one by a rounded p_k^2: that rounding would bias every distance
  // to component k alike (nk off by 1.7e-7 at N = 1e6).
  at::Tensor mu, scale;           // spherical but not dot_form: [K, ldt] the means; [ldk] p_k; zeros past D, K
  at::Tensor p_t, nu_t;           // [D, ldk]: diag p and nu (spherical: mu; dot_form: mu - c) transposed, zeros past K
  // float32 spherical, D <= kSmallD (dot_form): distances as
  // p_k^2 (||y||^2 + ||m_k||^2 - 2 y.m_k) with y = x - c, m_k = mu_k - c, c the mean of the means
  // (so rows far from the origin lose no digits to cancellation): one FMA per term, from
  // nu_t = m^T and the tile's ||y_n||^2 (Scratch::norms, float32 sums from the rows kernel). The
  // tile then holds the joint log-probabilities log_const_k - maha / 2, made in float64 and rounded
  // once (so the rounding is not the same for every row of a component), from float64 sph [4, ldk]:
  // log_const - p^2 ||m||^2 / 2, -p^2 / 2, p^2 (exact for a float p), log_const (the cap: maha >= 0).
  // The second moments sum r ||y||^2: finish_centred_sxx adds the rest.
  at::Tensor centre, sph;  // [ldt] c in x's dtype, zeros past D; [4, ldk]
  // full: [K, D] the means, about which tile_second_moments sums each component's second moments
  // (raw sums in x's dtype cancel where a mean is far from the origin against its spread)
  at::Tensor full_means;
  std::vector<double> log_const;  // [K]
  // Pruned distances (gmm_prune.cpp; em_stats only): vector offsets along D, most discriminating
  // first, and the number of them done after each stage. Empty: not pruned.
  std::vector<int32_t> vec_order;
  std::vector<int64_t> stage_ends;
  // The first stage's tables packed [K, first_ld] in vec_order (SimdKernels::maha_vecs; diag p and
  // nu, spherical mu), and its offsets 0, W, 2 W ..: with the tile's rows packed the same way, the
  // stage reads whole lines in order (tile_maha_pruned). first_ld 0: not packed.
  std::vector<T> first_p, first_nu;
  std::vector<int32_t> first_order;
  int64_t first_ld = 0;
  bool fuse = false;  // fused_softmax, but for the weights
  // The dot form cancels p^2 (||y||^2 + ||m||^2 - 2 y.m) in float32: at most ~4 p^2 ||m||^2 2^-24
  // in a joint log-probability (rows near their means: ||y|| ~ ||m||). Where that bound passes
  // kDotFormError, float32 spherical takes the distance kernels instead: sigma << the spread of the
  // means (K = 3, D = 4, means ~1 apart, sigma = 1e-3: bound 0.3, off by 2.9e-3 per row). The
  // tests' clustered data (bounds to 9e-4) and MNIST's PCA features keep the dot form.
  static constexpr double kDotFormError = 1e-2;
  bool dot_ok = true;

  Plan(const SimdKernels<T>& simd_, CovType cov, const at::Tensor& log_weights, const at::Tensor& means,
       const at::Tensor& prec_chol)
      : simd(simd_),
        tab(gmm_tables(cov, log_weights, means, prec_chol, padded(means.size(1), simd_.bytes))),
        K(tab.K), D(tab.D), ldt(tab.ld) {
    const double* lc = tab.log_const.template data_ptr<double>();
    log_const.assign(lc, lc + K);
    ldk = padded(K, simd_.bytes);
    // By loops on the host: ~40 ATen calls of about 1 us each were most of the op's fixed cost,
    // paid once per EM iteration while the other cores wait.
    TORCH_INTERNAL_ASSERT(means.is_contiguous() && prec_chol.is_contiguous(), "Plan: contiguous parameters");
    const at::TensorOptions opts = means.options();
    const T* mp = means.template data_ptr<T>();
    const T* pc = prec_chol.template data_ptr<T>();
    auto transposed = [&](const T* src, int64_t lds) {  // src [K, lds] -> [D, ldk], zeros past K
      at::Tensor out = at::zeros({D, ldk}, opts);
      T* o = out.template data_ptr<T>();
      for (int64_t k = 0; k < K; ++k)
        for (int64_t d = 0; d < D; ++d) o[d * ldk + k] = src[k * lds + d];
      return out;
    };
    if (cov == CovType::kFull) full_means = means;
    if (cov == CovType::kSpherical && rows_form()) dot_ok = dot_form_is_exact(mp, pc);
    if (dot_form()) {  // nu_t = (mu - c)^T, the centre and the float64 coefficients
      nu_t = at::zeros({D, ldk}, opts);
      centre = at::zeros({ldt}, opts);
      sph = at::zeros({4, ldk}, opts.dtype(at::kDouble));
      T* c = centre.template data_ptr<T>();
      T* nt = nu_t.template data_ptr<T>();
      double* sp = sph.template data_ptr<double>();
      // Each sum in order along its index, the sums side by side (one chain each had been most of
      // the op's fixed cost at K = 100: 4-cycle adds, one after another).
      std::vector<double> sum(D, 0.0), sq(K, 0.0);  // sq: ||m_k||^2 of m_k = mu_k - c as the kernel reads it
      for (int64_t k = 0; k < K; ++k)
        for (int64_t d = 0; d < D; ++d) sum[d] += static_cast<double>(mp[k * D + d]);
      for (int64_t d = 0; d < D; ++d) c[d] = static_cast<T>(sum[d] / static_cast<double>(K));
      for (int64_t k = 0; k < K; ++k)
        for (int64_t d = 0; d < D; ++d) nt[d * ldk + k] = mp[k * D + d] - c[d];
      for (int64_t d = 0; d < D; ++d)
        for (int64_t k = 0; k < K; ++k) sq[k] += static_cast<double>(nt[d * ldk + k]) * nt[d * ldk + k];
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(pc[k]), p2 = p * p;
        sp[k] = lc[k] - 0.5 * p2 * sq[k];
        sp[ldk + k] = -0.5 * p2;
        sp[2 * ldk + k] = p2;
        sp[3 * ldk + k] = lc[k];
      }
    } else {
      if (cov == CovType::kSpherical) {
        mu = at::zeros({K, ldt}, opts);
        scale = at::zeros({ldk}, opts);
        T* m = mu.template data_ptr<T>();
        T* sc = scale.template data_ptr<T>();
        for (int64_t k = 0; k < K; ++k) {
          std::copy(mp + k * D, mp + (k + 1) * D, m + k * ldt);
          sc[k] = pc[k];
        }
      }
      nu_t = transposed(cov == CovType::kSpherical ? mp : tab.nu.template data_ptr<T>(),
                        cov == CovType::kSpherical ? D : ldt);
    }
    if (cov == CovType::kDiag) p_t = transposed(tab.p.template data_ptr<T>(), ldt);
    const char* fuse_env = std::getenv("LGM_GMM_FUSE");  // "0": steps 1 and 2 apart (tests, A/B)
    fuse = rows_form() && simd.rows_softmax && K <= simd.rows_softmax_k[cov == CovType::kDiag ? 1 : 0] &&
           !(fuse_env != nullptr && std::strcmp(fuse_env, "0") == 0);
  }

  // max_k 4 p_k^2 ||mu_k - c||^2 2^-24 <= kDotFormError, c the mean of the means (as below).
  bool dot_form_is_exact(const T* mp, const T* pc) const {
    std::vector<double> c(D, 0.0);
    for (int64_t k = 0; k < K; ++k)
      for (int64_t d = 0; d < D; ++d) c[d] += static_cast<double>(mp[k * D + d]) / static_cast<double>(K);
    double worst = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      double sq = 0.0;
      for (int64_t d = 0; d < D; ++d) sq += (mp[k * D + d] - c[d]) * (mp[k * D + d] - c[d]);
      worst = std::max(worst, static_cast<double>(pc[k]) * pc[k] * sq);
    }
    return 4.0 * worst * 0x1p-24 <= kDotFormError;
  }

  static int64_t padded(int64_t d, int bytes) {
    const int64_t w = bytes / static_cast<int64_t>(sizeof(T));
    return (d + w - 1) / w * w;
  }
  CovType cov() const { return tab.cov; }
  bool dot_form() const { return tab.cov == CovType::kSpherical && rows_form(); }  // float32, D <= kSmallD
  // float32 diag and spherical (the dot form), D <= kSmallD: SimdKernels::maha_rows, on every ISA
  // and K. Along components instead (maha_kvec, and a dot form of its own), AVX2 took 3-5% longer
  // at K = 60 and 100 (spherical) and 16-byte vectors up to 13% (diag); rows won everywhere once
  // their norms stayed in registers (2026-11-26).
  bool rows_form() const {
    return simd.maha_rows && D <= kSmallD && (tab.cov == CovType::kDiag || (tab.cov == CovType::kSpherical && dot_ok));
  }
  // rows_form with 32- or 64-byte vectors: the features of a last vector along d that is at most half
  // used (D = 50: 2 on AVX-512 and AVX2), whose moments take moments_tail (0: none). The dense
  // moments' pass for them cost as much as a whole vector's: 7% of the op at K = 10, D = 50.
  int64_t tail_d() const {
    const int64_t w = simd.bytes / static_cast<int64_t>(sizeof(T));
    return rows_form() && simd.bytes >= 32 && D % w != 0 && D % w <= w / 2 ? D % w : 0;
  }
  // Steps 1 and 2 of a tile in one pass (SimdKernels::rows_softmax): rows_form, K in one group, no
  // sample weights, not pruned.
  bool fused_softmax(const T* sw) const { return fuse && sw == nullptr && vec_order.empty(); }
  // tied and full: products by ATen GEMM over a view of the tile (tile_maha's x_tile).
  bool gemm_form() const { return tab.cov == CovType::kTied || tab.cov == CovType::kFull; }
  int64_t tile() const {
    if (tab.cov == CovType::kFull) return kFullTile;
    if (D > kSmallD) return kTile;
    if (l2_cache_bytes() >= kLargeL2) return kLargeL2TileBytes / static_cast<int64_t>(sizeof(T));
    return simd.bytes == 64 ? kSmallDTile : kTile;
  }
  // Accumulator layout: nk [K] | sx [K, D] | sxx (gmm_param_shape) | loglik.
  int64_t sxx_size() const {
    switch (tab.cov) {
      case CovType::kFull: return K * D * D;
      case CovType::kTied: return D * D;
      case CovType::kDiag: return K * D;
      case CovType::kSpherical: return K;
    }
    return 0;
  }
  int64_t stats_size() const { return K + K * D + sxx_size() + 1; }
};

// Scratch owned by one thread (gmm_scratch.h).
template <typename T>
struct Scratch;

// ---------------------------------------------------------------------------------------------
// One tile (gmm_tile.cpp), instantiated for float and double.

// Rows n0 .. n0 + rows of x (row stride ldx, N rows) as rows readable to ldt values: x itself
// where the last row's ldt values end inside x, else a zero-padded copy in s.xpad. Returns the
// pointer and sets *ld to its row stride.
template <typename T>
const T* tile_rows(const Plan<T>& plan, const T* x, int64_t ldx, int64_t N, int64_t n0, int64_t rows, Scratch<T>& s,
                   int64_t* ld);

// maha [rows, K] for the tile (xs: tile_rows' padded rows, row stride lds); x_tile, its view, is
// read only where plan.gemm_form().
template <typename T>
void tile_maha(const Plan<T>& plan, const at::Tensor& x_tile, const T* xs, int64_t lds, int64_t rows, Scratch<T>& s);

// gmm_prune.cpp. Sets plan.vec_order and stage_ends where pruning applies (float32 x, diag or
// spherical, D >= 384, K >= 32; LGM_GMM_PRUNE=0 turns it off), else leaves them empty.
template <typename T>
void plan_pruning(Plan<T>& plan);

// maha [K, tile] as tile_maha, but +inf for every (row, component) whose joint log-probability is
// shown, from a partial sum over D, to lie more than 88 below the row's best: its float32
// responsibility would be exactly 0 (exp_nonpositive), so the E-step's statistics are unchanged.
template <typename T>
void tile_maha_pruned(const Plan<T>& plan, const T* xs, int64_t lds, int64_t rows, Scratch<T>& s);

// dot_form: the spherical sxx summed r ||x - c||^2; adds 2 c.sx_k - nk_k ||c||^2 to make it
// sum r ||x||^2 (stats: float64 totals in Plan::stats_size's layout).
template <typename T>
void finish_centred_sxx(const Plan<T>& plan, double* stats);

// One chunk of tiles [t0, t1) accumulated into acc (layout of Plan::stats_size).
template <typename T>
void chunk_stats(const Plan<T>& plan, const at::Tensor& x, const T* sw, int64_t t0, int64_t t1, Scratch<T>& s,
                 double* acc);

}  // namespace gmm_cpu
}  // namespace lgm
