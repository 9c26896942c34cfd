// The three steps of one tile of the CPU GMM E-step (gmm_kernels.h), and a chunk of tiles.
#include <algorithm>
#include <vector>

#include "cpu/gmm_kernels.h"

namespace lgm {
namespace gmm_cpu {

// 1. Squared distances of a tile: the SIMD kernel, after a GEMM y = x P for tied/full.
template <typename T>
void tile_maha(const Plan<T>& plan, const at::Tensor& x_tile, const T* xt, int64_t ldx, int64_t rows, int64_t readable,
               Scratch<T>& s) {
  T* maha = s.maha.template data_ptr<T>();
  const T* p = plan.p_tab.template data_ptr<T>();
  const T* nu = plan.nu_tab.template data_ptr<T>();
  const int64_t K = plan.K, D = plan.D, ldt = plan.ldt;
  switch (plan.cov) {
    case CovType::kDiag:
    case CovType::kSpherical: maha_tile<T, true>(xt, ldx, rows, D, p, nu, ldt, K, maha, K, readable); break;
    case CovType::kTied: {
      at::Tensor y = s.y.narrow(0, 0, rows);
      at::mm_out(y, x_tile, plan.prec);
      maha_tile<T, false>(y.template data_ptr<T>(), D, rows, D, nullptr, nu, ldt, K, maha, K, rows);
      break;
    }
    case CovType::kFull: {
      at::Tensor y = s.y.narrow(0, 0, rows);
      for (int64_t k = 0; k < K; ++k) {
        at::mm_out(y, x_tile, plan.prec[k]);
        maha_tile<T, false>(y.template data_ptr<T>(), D, rows, D, nullptr, nu + k * ldt, ldt, 1, maha + k, K, rows);
      }
      break;
    }
  }
}

namespace {

// 2. Joint log-probabilities -> log-sum-exp, responsibilities resp [rows, K] (x's dtype, times the
// sample weight), nk += sum of responsibilities. Returns the tile's weighted log-likelihood.
template <typename T>
double tile_responsibilities(const Plan<T>& plan, const T* sw, int64_t rows, Scratch<T>& s, double* nk) {
  const int64_t K = plan.K;
  const T* maha = s.maha.template data_ptr<T>();
  T* resp = s.resp.template data_ptr<T>();
  double loglik = 0.0;
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t k = 0; k < K; ++k) s.joint[k] = joint_log_prob(plan.log_const[k], maha[n * K + k]);
    const double w = sw ? static_cast<double>(sw[n]) : 1.0;
    loglik += weighted_loglik(row_softmax(s.joint.data(), K, w, s.rd.data()), w);
    for (int64_t k = 0; k < K; ++k) {
      nk[k] += s.rd[k];
      resp[n * K + k] = static_cast<T>(s.rd[k]);
    }
  }
  return loglik;
}

// 3. sx (and diag-form sxx for diag/spherical) from the tile's responsibilities.
template <typename T, bool kSquares>
void tile_moments(const Plan<T>& plan, const T* xt, int64_t ldx, int64_t rows, Scratch<T>& s, double* sx,
                  double* sxx) {
  const int64_t K = plan.K, D = plan.D;
  const T* resp = s.resp.template data_ptr<T>();
  int64_t nnz = 0;
  for (int64_t i = 0; i < rows * K; ++i) nnz += resp[i] != T(0);
  if (2 * nnz >= rows * K) {  // dense enough: register-blocked over components
    moments_dense<T, kSquares>(xt, ldx, rows, D, resp, K, sx, sxx);
    return;
  }
  for (int64_t k = 0; k < K; ++k) {  // sparse: per component, its rows with r != 0 (exact)
    int64_t m = 0;
    for (int64_t n = 0; n < rows; ++n) {
      if (resp[n * K + k] != T(0)) {
        s.idx[m] = n;
        s.val[m++] = resp[n * K + k];
      }
    }
    if (m > 0) moments_sparse<T, kSquares>(xt, ldx, D, s.idx.data(), s.val.data(), m, sx + k * D, kSquares ? sxx + k * D : nullptr);
  }
}

inline void add_to(double* dst, const at::Tensor& src) {
  const int64_t n = src.numel();
  if (src.scalar_type() == at::kDouble) {
    const double* p = src.data_ptr<double>();
    for (int64_t i = 0; i < n; ++i) dst[i] += p[i];
  } else {
    const float* p = src.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) dst[i] += static_cast<double>(p[i]);
  }
}

// Second moments by GEMM. tied: sum_n w_n x_n x_n^T; full: per k, sum over rows with r != 0.
template <typename T>
void tile_second_moments(const Plan<T>& plan, const at::Tensor& x_tile, const T* sw, int64_t rows, Scratch<T>& s,
                         double* sxx) {
  const int64_t K = plan.K, D = plan.D;
  const T* xt = x_tile.template data_ptr<T>();
  const int64_t ldx = x_tile.stride(0);
  if (plan.cov == CovType::kTied) {
    at::Tensor lhs = x_tile;
    if (sw) {
      lhs = s.xr.narrow(0, 0, rows);
      T* xr = lhs.template data_ptr<T>();
      for (int64_t n = 0; n < rows; ++n)
        for (int64_t d = 0; d < D; ++d) xr[n * D + d] = sw[n] * xt[n * ldx + d];
    }
    at::mm_out(s.s, lhs.t(), x_tile);
    add_to(sxx, s.s);
    return;
  }
  const T* resp = s.resp.template data_ptr<T>();
  T* xr = s.xr.template data_ptr<T>();
  T* xg = s.xg.template data_ptr<T>();
  for (int64_t k = 0; k < K; ++k) {
    int64_t m = 0;
    for (int64_t n = 0; n < rows; ++n) {
      const T r = resp[n * K + k];
      if (r == T(0)) continue;
      for (int64_t d = 0; d < D; ++d) {
        xg[m * D + d] = xt[n * ldx + d];
        xr[m * D + d] = r * xt[n * ldx + d];
      }
      ++m;
    }
    if (m == 0) continue;
    at::mm_out(s.s, s.xr.narrow(0, 0, m).t(), s.xg.narrow(0, 0, m));
    add_to(sxx + k * D * D, s.s);
  }
}

}  // namespace

// Steps 1-3 for each tile of the chunk.
template <typename T>
void chunk_stats(const Plan<T>& plan, const at::Tensor& x, const T* sw, int64_t t0, int64_t t1, Scratch<T>& s,
                 double* acc) {
  const int64_t K = plan.K, D = plan.D, N = x.size(0), tile = plan.tile(), ldx = x.stride(0);
  double* nk = acc;
  double* sx = nk + K;
  double* sxx = sx + K * D;
  double* loglik = sxx + plan.sxx_size();
  const T* xp = x.template data_ptr<T>();
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n0 = t * tile, rows = std::min(tile, N - n0);
    const T* xt = xp + n0 * ldx;
    const at::Tensor x_tile = x.narrow(0, n0, rows);
    const T* swt = sw ? sw + n0 : nullptr;
    tile_maha(plan, x_tile, xt, ldx, rows, N - n0, s);
    *loglik += tile_responsibilities(plan, swt, rows, s, nk);
    if (plan.cov == CovType::kDiag || plan.cov == CovType::kSpherical) {
      tile_moments<T, true>(plan, xt, ldx, rows, s, sx, sxx);
    } else {
      tile_moments<T, false>(plan, xt, ldx, rows, s, sx, nullptr);
      tile_second_moments(plan, x_tile, swt, rows, s, sxx);
    }
  }
}

template void tile_maha<float>(const Plan<float>&, const at::Tensor&, const float*, int64_t, int64_t, int64_t,
                               Scratch<float>&);
template void tile_maha<double>(const Plan<double>&, const at::Tensor&, const double*, int64_t, int64_t, int64_t,
                                Scratch<double>&);
template void chunk_stats<float>(const Plan<float>&, const at::Tensor&, const float*, int64_t, int64_t,
                                 Scratch<float>&, double*);
template void chunk_stats<double>(const Plan<double>&, const at::Tensor&, const double*, int64_t, int64_t,
                                  Scratch<double>&, double*);

}  // namespace gmm_cpu
}  // namespace lgm
