#pragma once
// Host-side preparation of the GMM ops, shared by the CPU kernels (cpu/gmm*.cpp) and the CUDA
// kernels (cuda/gmm.cu): argument checks, the one covariance-shape table, and the per-call tables
// that both kernels read. Defined in cpu/gmm_host.cpp (always compiled).
#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <vector>

#include "common/gmm.h"

namespace lgm {

CovType parse_covariance_type(std::string_view covariance_type);

// The one covariance-shape table: shape of prec_chol, and of the statistic sxx, for a covariance
// type: full [K, D, D], tied [D, D], diag [K, D], spherical [K].
std::vector<int64_t> gmm_param_shape(CovType cov, int64_t k, int64_t d);

// TORCH_CHECKs of every user-facing precondition, naming the argument; returns the parsed type.
CovType gmm_check_inputs(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& sample_weight,
                         const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol,
                         std::string_view covariance_type);

// Tables of one call, on the device of `means`, in its dtype unless said otherwise:
//   p  [K, ld]  diag/spherical: p_kd (spherical: p_k repeated); undefined for tied/full
//   nu [K, ld]  diag/spherical: mu_kd p_kd; tied/full: (mu_k P_k)_d, formed in float64
//   prec        tied [D, D], full [K, D, D]: P, contiguous
//   log_const [K] float64: log w_k - D/2 log 2 pi + log det P_k (common/gmm.h)
// Columns D .. ld - 1 of p and nu are zero (ld >= D: the CPU pads to its vector width).
struct GmmTables {
  CovType cov;
  int64_t K, D, ld;
  at::Tensor p, nu, prec, log_const;
};

GmmTables gmm_tables(CovType cov, const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol,
                     int64_t ld);

}  // namespace lgm
