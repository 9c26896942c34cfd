#pragma once
// Internal to the CPU kernels of gmm_em_stats and gmm_log_prob (cpu/gmm*.cpp): one pass over x in
// tiles of rows.
//
// Each tile (kTile rows, cache-resident) goes through three steps:
//   1. maha [rows, K]: squared Mahalanobis distances. diag/spherical: a register-blocked kernel
//      computing sum_d (x_d p_kd - mu_kd p_kd)^2 (the centred form: no cancellation, 2 FMAs per
//      term); tied/full: y = x P by GEMM, then the same kernel on sum_d (y_d - (mu P)_d)^2.
//   2. row-wise log-sum-exp and responsibilities in double precision (common/gmm.h).
//   3. moments sum_n r_nk x_n (and x_n^2) by a register-blocked kernel, dense, or sparse over the
//      rows whose responsibility is not exactly 0; tied/full second moments by GEMM.
// Tiles are grouped into chunks whose boundaries depend only on (N, D, K, covariance type); each
// chunk owns a float64 accumulator and chunks are summed in order at the end, so the result does
// not depend on the number of threads. Within a tile, products are formed in x's dtype over at
// most kTile rows and then added into the float64 accumulators.
//
// gmm.cpp: the ops (checks, chunk schedule, registration); gmm_tile.cpp: the three steps of a tile;
// gmm_simd.cpp: the register-blocked SIMD kernels of steps 1 and 3.
#include <ATen/ATen.h>

#include <vector>

#include "common/gmm.h"

namespace lgm {

// Defined in gmm.cpp, shared with cuda/gmm.cu.
at::Tensor gmm_log_det(const at::Tensor& prec_chol, CovType cov, int64_t n_components, int64_t n_features);
std::vector<int64_t> gmm_sxx_shape(CovType cov, int64_t k, int64_t d);

namespace gmm_cpu {

constexpr int64_t kTile = 128;      // rows per tile: x tile + tables stay in L2
constexpr int64_t kFullTile = 512;  // full: larger tiles amortise the float64 D x D adds

// 64-byte SIMD vectors (GCC/Clang vector extension): AVX-512 registers with -march=native,
// pairs of AVX2 registers otherwise.
template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(64)));
  static constexpr int kWidth = 16;
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(64)));
  static constexpr int kWidth = 8;
};

template <typename T>
using Vec = typename Simd<T>::V;

// ---------------------------------------------------------------------------------------------
// SIMD kernels (gmm_simd.cpp), instantiated for float and double.

// 1. Squared distances out [rows, ldo]: out[r, k] = sum_d (x_rd p_kd - nu_kd)^2 (kScaled) or
// (x_rd - nu_kd)^2, columns 0..K-1 for table rows 0..K-1. Tables p, nu are [*, ldt] with ldt >= D
// a multiple of the vector width and zeros past D. Rows of x up to `readable` may be prefetched.
template <typename T, bool kScaled>
void maha_tile(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, int64_t K,
               T* out, int64_t ldo, int64_t readable);

// 3. Moments: sx[k, d] += sum_n r[n, k] x[n, d] and (kSquares) sxx[k, d] += sum_n r[n, k] x[n, d]^2.
// Dense: all rows, responsibilities r [rows, K].
template <typename T, bool kSquares>
void moments_dense(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* r, int64_t K, double* sx, double* sxx);

// Sparse: one component, the m rows idx with weights val (its non-zero responsibilities).
template <typename T, bool kSquares>
void moments_sparse(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const T* val, int64_t m, double* sx,
                    double* sxx);

// ---------------------------------------------------------------------------------------------
// Per-call plan: tables for the distance kernel, sizes of the accumulator layout.

template <typename T>
struct Plan {
  CovType cov;
  int64_t K, D, ldt;
  at::Tensor p_tab;   // [K, ldt] diag/spherical: p_kd (spherical: p_k repeated)
  at::Tensor nu_tab;  // [K, ldt] diag/spherical: mu_kd p_kd; tied/full: (mu_k P_k)_d
  at::Tensor prec;    // tied [D, D], full [K, D, D]: P in x's dtype, contiguous
  std::vector<double> log_const;  // [K]

  Plan(CovType cov_, const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol)
      : cov(cov_), K(means.size(0)), D(means.size(1)) {
    constexpr int W = Simd<T>::kWidth;
    ldt = (D + W - 1) / W * W;
    const at::Tensor log_det = gmm_log_det(prec_chol, cov, K, D).contiguous();
    const at::Tensor lw = log_weights.to(at::kDouble).contiguous();
    for (int64_t k = 0; k < K; ++k) {
      log_const.push_back(gaussian_log_const(lw.data_ptr<double>()[k], log_det.data_ptr<double>()[k], D));
    }
    const auto opts = means.options();
    p_tab = at::zeros({K, ldt}, opts);
    nu_tab = at::zeros({K, ldt}, opts);
    at::Tensor p, nu;
    switch (cov) {
      case CovType::kDiag: p = prec_chol; nu = means * prec_chol; break;
      case CovType::kSpherical: p = prec_chol.unsqueeze(1).expand({K, D}); nu = means * p; break;
      case CovType::kTied: prec = prec_chol.contiguous(); nu = at::mm(means, prec); break;
      case CovType::kFull: prec = prec_chol.contiguous(); nu = at::bmm(means.unsqueeze(1), prec).squeeze(1); break;
    }
    if (p.defined()) p_tab.narrow(1, 0, D).copy_(p);
    nu_tab.narrow(1, 0, D).copy_(nu);
  }

  int64_t tile() const { return cov == CovType::kFull ? kFullTile : kTile; }
  // Accumulator layout: nk [K] | sx [K, D] | sxx (diag form [K, D] for spherical) | loglik.
  int64_t sxx_size() const {
    switch (cov) {
      case CovType::kFull: return K * D * D;
      case CovType::kTied: return D * D;
      default: return K * D;
    }
  }
  int64_t stats_size() const { return K + K * D + sxx_size() + 1; }
};

// Scratch owned by one thread.
template <typename T>
struct Scratch {
  at::Tensor maha, resp, y, xr, xg, s;  // [tile, K] x2, [tile, D] x3, [D, D]
  std::vector<double> joint, rd;
  std::vector<int64_t> idx;
  std::vector<T> val;

  Scratch(const Plan<T>& plan, const at::TensorOptions& opts) {
    const int64_t t = plan.tile();
    maha = at::empty({t, plan.K}, opts);
    resp = at::empty({t, plan.K}, opts);
    if (plan.cov == CovType::kTied || plan.cov == CovType::kFull) {
      y = at::empty({t, plan.D}, opts);
      xr = at::empty({t, plan.D}, opts);
      xg = at::empty({t, plan.D}, opts);
      s = at::empty({plan.D, plan.D}, opts);
    }
    joint.resize(plan.K);
    rd.resize(plan.K);
    idx.resize(t);
    val.resize(t);
  }
};

// ---------------------------------------------------------------------------------------------
// One tile (gmm_tile.cpp), instantiated for float and double.

// maha [rows, K] for the tile x_tile = rows n0 .. n0 + rows of x (pointer xt, row stride ldx);
// `readable` rows of x start at xt (for prefetching past the tile).
template <typename T>
void tile_maha(const Plan<T>& plan, const at::Tensor& x_tile, const T* xt, int64_t ldx, int64_t rows, int64_t readable,
               Scratch<T>& s);

// One chunk of tiles [t0, t1) accumulated into acc (layout of Plan::stats_size).
template <typename T>
void chunk_stats(const Plan<T>& plan, const at::Tensor& x, const T* sw, int64_t t0, int64_t t1, Scratch<T>& s,
                 double* acc);

}  // namespace gmm_cpu
}  // namespace lgm
