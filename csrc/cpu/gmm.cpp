// CPU kernels of gmm_em_stats and gmm_log_prob: argument checks and per-component constants shared
// with cuda/gmm.cu, the schedule of chunks of tiles, and registration. The per-tile work is in
// gmm_tile.cpp and gmm_simd.cpp; gmm_kernels.h describes the algorithm.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string_view>
#include <vector>

#include "common/gmm.h"
#include "cpu/gmm_kernels.h"

namespace lgm {

// ---------------------------------------------------------------------------------------------
// Argument checks and per-component constants: shared with cuda/gmm.cu.

CovType parse_covariance_type(std::string_view covariance_type) {
  if (covariance_type == "full") return CovType::kFull;
  if (covariance_type == "tied") return CovType::kTied;
  if (covariance_type == "diag") return CovType::kDiag;
  if (covariance_type == "spherical") return CovType::kSpherical;
  TORCH_CHECK_VALUE(false, "covariance_type must be one of 'full', 'tied', 'diag', 'spherical', got '",
                    covariance_type, "'");
  return CovType::kFull;  // unreachable
}

CovType gmm_check_inputs(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& sample_weight,
                         const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol,
                         std::string_view covariance_type) {
  const CovType cov = parse_covariance_type(covariance_type);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) >= 1, op, ": x must be [N, D] with D >= 1, got ", x.sizes());
  TORCH_CHECK_VALUE(log_weights.dim() == 1 && log_weights.size(0) >= 1, op,
                    ": log_weights must be [K] with K >= 1, got ", log_weights.sizes());
  const int64_t n = x.size(0), d = x.size(1), k = log_weights.size(0);
  TORCH_CHECK_VALUE(means.dim() == 2 && means.size(0) == k && means.size(1) == d, op, ": means must be [K, D] = [",
                    k, ", ", d, "], got ", means.sizes());
  std::vector<int64_t> expected;
  switch (cov) {
    case CovType::kFull: expected = {k, d, d}; break;
    case CovType::kTied: expected = {d, d}; break;
    case CovType::kDiag: expected = {k, d}; break;
    case CovType::kSpherical: expected = {k}; break;
  }
  TORCH_CHECK_VALUE(prec_chol.sizes() == at::IntArrayRef(expected), op, ": prec_chol must be ", at::IntArrayRef(expected),
                    " for covariance_type='", covariance_type, "', got ", prec_chol.sizes());
  const std::pair<const char*, const at::Tensor*> params[] = {
      {"log_weights", &log_weights}, {"means", &means}, {"prec_chol", &prec_chol}};
  for (const auto& [name, t] : params) {
    TORCH_CHECK_TYPE(t->scalar_type() == x.scalar_type(), op, ": ", name, " must have the dtype of x (",
                     x.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == x.device(), op, ": ", name, " must be on the device of x (", x.device(),
                      "), got ", t->device());
  }
  if (sample_weight.has_value()) {
    const at::Tensor& w = *sample_weight;
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == n, op, ": sample_weight must be [N] = [", n, "], got ", w.sizes());
    TORCH_CHECK_TYPE(w.scalar_type() == x.scalar_type(), op, ": sample_weight must have the dtype of x (",
                     x.scalar_type(), "), got ", w.scalar_type());
    TORCH_CHECK_VALUE(w.device() == x.device(), op, ": sample_weight must be on the device of x (", x.device(),
                      "), got ", w.device());
  }
  return cov;
}

// log det P_k = sum_d log (P_k)_dd as float64 [K], on the device of prec_chol.
at::Tensor gmm_log_det(const at::Tensor& prec_chol, CovType cov, int64_t n_components, int64_t n_features) {
  const at::Tensor p = prec_chol.to(at::kDouble);
  switch (cov) {
    case CovType::kFull: return at::diagonal(p, 0, -2, -1).log().sum(-1);
    case CovType::kTied: return at::diagonal(p).log().sum().expand({n_components}).contiguous();
    case CovType::kDiag: return p.log().sum(-1);
    case CovType::kSpherical: return p.log() * static_cast<double>(n_features);
  }
  return {};
}

// Size of the second-moment statistic sxx for a covariance type.
std::vector<int64_t> gmm_sxx_shape(CovType cov, int64_t k, int64_t d) {
  switch (cov) {
    case CovType::kFull: return {k, d, d};
    case CovType::kTied: return {d, d};
    case CovType::kDiag: return {k, d};
    case CovType::kSpherical: return {k};
  }
  return {};
}

namespace {

// ---------------------------------------------------------------------------------------------
// The ops: chunks of tiles in parallel (gmm_tile.cpp), then a fixed-order sum of the chunks.

using gmm_cpu::chunk_stats;
using gmm_cpu::Plan;
using gmm_cpu::Scratch;
using gmm_cpu::tile_maha;

constexpr int64_t kMaxChunks = 16;  // fixed-order partial sums (a multiple of common thread counts)
constexpr int64_t kChunkBudget = int64_t{256} << 20;  // bytes of float64 chunk accumulators

// x with unit stride along D (a copy only when it has not).
at::Tensor rows_with_unit_stride(const at::Tensor& x) {
  return (x.stride(1) == 1 && x.stride(0) >= x.size(1)) ? x : x.contiguous();
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> em_stats_cpu(const at::Tensor& x_in,
                                                                         const std::optional<at::Tensor>& sample_weight,
                                                                         const at::Tensor& log_weights,
                                                                         const at::Tensor& means,
                                                                         const at::Tensor& prec_chol, CovType cov) {
  const at::Tensor x = rows_with_unit_stride(x_in);
  const Plan<T> plan(cov, log_weights, means, prec_chol);
  const int64_t N = x.size(0), K = plan.K, D = plan.D, tile = plan.tile();
  const at::Tensor sw = sample_weight.has_value() ? sample_weight->contiguous() : at::Tensor();
  const T* swp = sw.defined() ? sw.template data_ptr<T>() : nullptr;
  // Chunks of tiles: boundaries depend only on the problem, never on the thread count.
  const int64_t n_tiles = (N + tile - 1) / tile, size = plan.stats_size();
  const int64_t max_chunks = std::max<int64_t>(1, kChunkBudget / (size * 8));
  int64_t n_chunks = std::max<int64_t>(1, std::min({n_tiles, kMaxChunks, max_chunks}));
  const int64_t per_chunk = std::max<int64_t>(1, (n_tiles + n_chunks - 1) / n_chunks);
  n_chunks = std::max<int64_t>(1, (n_tiles + per_chunk - 1) / per_chunk);
  at::Tensor acc = at::zeros({n_chunks, size}, x.options().dtype(at::kDouble));
  double* accp = acc.data_ptr<double>();
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    Scratch<T> s(plan, x.options());
    for (int64_t c = c0; c < c1; ++c) {
      chunk_stats(plan, x, swp, c * per_chunk, std::min(n_tiles, (c + 1) * per_chunk), s, accp + c * size);
    }
  });
  // Sum the chunks in order (deterministic), in parallel over the statistics' entries.
  at::Tensor total = at::empty({size}, acc.options());
  double* tp = total.data_ptr<double>();
  at::parallel_for(0, size, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) tp[i] = 0.0;
    for (int64_t c = 0; c < n_chunks; ++c)
      for (int64_t i = i0; i < i1; ++i) tp[i] += accp[c * size + i];
  });
  at::Tensor nk = total.narrow(0, 0, K).clone();
  at::Tensor sx = total.narrow(0, K, K * D).view({K, D}).clone();
  at::Tensor sxx = total.narrow(0, K + K * D, plan.sxx_size());
  sxx = cov == CovType::kSpherical ? sxx.view({K, D}).sum(1) : sxx.view(gmm_sxx_shape(cov, K, D)).clone();
  at::Tensor loglik = total.narrow(0, size - 1, 1).squeeze(0).clone();
  return {nk, sx, sxx, loglik};
}

template <typename T>
at::Tensor log_prob_cpu(const at::Tensor& x_in, const at::Tensor& log_weights, const at::Tensor& means,
                        const at::Tensor& prec_chol, CovType cov) {
  const at::Tensor x = rows_with_unit_stride(x_in);
  const Plan<T> plan(cov, log_weights, means, prec_chol);
  const int64_t N = x.size(0), K = plan.K, tile = plan.tile(), ldx = x.stride(0);
  at::Tensor out = at::empty({N, K}, x.options());
  T* op = out.data_ptr<T>();
  const T* xp = x.template data_ptr<T>();
  at::parallel_for(0, (N + tile - 1) / tile, 1, [&](int64_t t0, int64_t t1) {
    Scratch<T> s(plan, x.options());
    const T* maha = s.maha.template data_ptr<T>();
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * tile, rows = std::min(tile, N - n0);
      tile_maha(plan, x.narrow(0, n0, rows), xp + n0 * ldx, ldx, rows, N - n0, s);
      for (int64_t i = 0; i < rows * K; ++i) {
        op[n0 * K + i] = static_cast<T>(joint_log_prob(plan.log_const[i % K], maha[i]));
      }
    }
  });
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_em_stats_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& sample_weight, const at::Tensor& log_weights,
    const at::Tensor& means, const at::Tensor& prec_chol, c10::string_view covariance_type) {
  const CovType cov = gmm_check_inputs("gmm_em_stats", x, sample_weight, log_weights, means, prec_chol,
                                       std::string_view(covariance_type.data(), covariance_type.size()));
  TORCH_CHECK_VALUE(x.device().is_cpu(), "gmm_em_stats: x must be on the CPU, got ", x.device());
  const at::Tensor lw = log_weights.contiguous(), mu = means.contiguous(), pc = prec_chol.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_em_stats_cpu", [&] {
    return em_stats_cpu<scalar_t>(x, sample_weight, lw, mu, pc, cov);
  });
}

at::Tensor gmm_log_prob_cpu(const at::Tensor& x, const at::Tensor& log_weights, const at::Tensor& means,
                            const at::Tensor& prec_chol, c10::string_view covariance_type) {
  const CovType cov = gmm_check_inputs("gmm_log_prob", x, std::nullopt, log_weights, means, prec_chol,
                                       std::string_view(covariance_type.data(), covariance_type.size()));
  TORCH_CHECK_VALUE(x.device().is_cpu(), "gmm_log_prob: x must be on the CPU, got ", x.device());
  const at::Tensor lw = log_weights.contiguous(), mu = means.contiguous(), pc = prec_chol.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_log_prob_cpu",
                                    [&] { return log_prob_cpu<scalar_t>(x, lw, mu, pc, cov); });
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CPU, m) {
  m.impl("gmm_em_stats", &lgm::gmm_em_stats_cpu);
  m.impl("gmm_log_prob", &lgm::gmm_log_prob_cpu);
}
