#pragma once
// E-step arithmetic of the Gaussian mixture, shared by the CPU and CUDA kernels.
//
// Joint log-probability of row n under component k (Bishop, PRML eqs. 2.43 and 9.7), with P_k
// the Cholesky factor of the precision (scikit-learn's precisions_cholesky_):
//   log w_k + log N(x_n | k) = log_const_k - 0.5 * maha_nk,
//   log_const_k = log w_k - 0.5 * D * log(2 pi) + sum_d log (P_k)_dd,   maha_nk = ||(x_n - mu_k) P_k||^2.
// Responsibilities are the softmax over k of the joint log-probabilities (PRML eq. 9.23),
// computed in log space and in double precision.
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace lgm {

enum class CovType { kFull, kTied, kDiag, kSpherical };

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

// log_const_k from log w_k and log det P_k = sum_d log (P_k)_dd.
LGM_HOST_DEVICE double gaussian_log_const(double log_weight, double log_det_prec_chol, int64_t n_features) {
  return log_weight - 0.5 * static_cast<double>(n_features) * kLog2Pi + log_det_prec_chol;
}

// One whitened coordinate of x - mu_k: ((x - mu) P)_d = x_d p_d - (mu P)_d for a diagonal P
// (p = 1 after a dense P has been applied by GEMM). Scalars on the GPU, SIMD vectors on the CPU.
template <typename V>
LGM_HOST_DEVICE V whitened_residual(V x, V p, V mu_p) {
  return x * p - mu_p;
}

// log w_k + log N(x_n | k) from the component's constant and the squared Mahalanobis distance.
LGM_HOST_DEVICE double joint_log_prob(double log_const, double maha) { return log_const - 0.5 * maha; }

// exp(d) for d <= 0, with the underflow to 0 taken early (libm's underflow path is slow).
LGM_HOST_DEVICE double exp_nonpositive(double d) { return d < -746.0 ? 0.0 : exp(d); }

// Softmax of one row of joint log-probabilities, times the row's weight: out[k] = weight *
// exp(row[k] - lse), one exp per component; returns lse = log sum_k exp(row[k]). A row of
// weight 0 gets out = 0 (a padding row contributes nothing, even where its likelihood is not
// finite); a row whose components are all -inf gets lse = -inf and NaN responsibilities, one
// with a NaN (NaN in x) lse = NaN, as torch.logsumexp.
template <typename T, typename R>
LGM_HOST_DEVICE double row_softmax(const T* row, int64_t n_components, double weight, R* out) {
  double top = -INFINITY;
  bool nan = false;
  for (int64_t k = 0; k < n_components; ++k) {
    const double v = static_cast<double>(row[k]);
    nan = nan || v != v;
    top = fmax(top, v);  // fmax skips NaN
  }
  if (nan || top == -INFINITY) {
    for (int64_t k = 0; k < n_components; ++k) out[k] = weight == 0.0 ? R(0) : R(NAN);
    return nan ? NAN : top;
  }
  double sum = 0.0;
  for (int64_t k = 0; k < n_components; ++k) {
    const double e = exp_nonpositive(static_cast<double>(row[k]) - top);
    out[k] = static_cast<R>(e);
    sum += e;
  }
  const double scale = weight == 0.0 ? 0.0 : weight / sum;
  for (int64_t k = 0; k < n_components; ++k) out[k] = static_cast<R>(static_cast<double>(out[k]) * scale);
  return top + log(sum);
}

// The row's contribution to the log-likelihood: weight * lse, exactly 0 for a row of weight 0.
LGM_HOST_DEVICE double weighted_loglik(double lse, double weight) { return weight == 0.0 ? 0.0 : weight * lse; }

}  // namespace lgm
