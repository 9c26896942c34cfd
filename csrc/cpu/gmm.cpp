// CPU kernels of gmm_em_stats and gmm_log_prob: the schedule of chunks of tiles, and registration.
// Checks and tables are shared with cuda/gmm.cu (common/gmm_host.h); the per-tile work is in
// gmm_tile.cpp and gmm_simd.h; gmm_kernels.h describes the algorithm.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string_view>
#include <vector>

#include "cpu/gmm_kernels.h"
#include "cpu/gmm_scratch.h"

namespace lgm {

namespace {

// ---------------------------------------------------------------------------------------------
// The ops: chunks of tiles in parallel (gmm_tile.cpp), then a fixed-order sum of the chunks.

using gmm_cpu::chunk_stats;
using gmm_cpu::Plan;
using gmm_cpu::Scratch;
using gmm_cpu::tile_maha;
using gmm_cpu::tile_rows;

// The kernels of the instruction set for this call (LGM_GMM_CPU_ISA, else the host's widest).
template <typename T>
const gmm_cpu::SimdKernels<T>& call_kernels() {
  return gmm_cpu::simd_kernels<T>(gmm_cpu::resolve_isa(""));
}

constexpr int64_t kMaxChunks = 16;  // fixed-order partial sums (a multiple of common thread counts)
constexpr int64_t kChunkBudget = int64_t{256} << 20;  // bytes of float64 chunk accumulators
constexpr int64_t kKeptDoubles = int64_t{4} << 20;    // accumulators up to 32 MiB are reused

// x with unit stride along D (a copy only when it has not).
at::Tensor rows_with_unit_stride(const at::Tensor& x) {
  return (x.stride(1) == 1 && x.stride(0) >= x.size(1)) ? x : x.contiguous();
}

using Stats = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // nk, sx, sxx, loglik

template <typename T>
Stats em_stats_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& sample_weight,
                   const at::Tensor& log_weights, const at::Tensor& means, const at::Tensor& prec_chol, CovType cov) {
  const at::Tensor x = rows_with_unit_stride(x_in);
  Plan<T> plan(call_kernels<T>(), cov, log_weights, means, prec_chol);
  plan_pruning(plan);
  const int64_t N = x.size(0), K = plan.K, D = plan.D, tile = plan.tile();
  const at::Tensor sw = sample_weight.has_value() ? sample_weight->contiguous() : at::Tensor();
  const T* swp = sw.defined() ? sw.template data_ptr<T>() : nullptr;
  for (int64_t n = 0; swp && n < N; ++n) {  // as the Python wrapper checks (not under torch.compile)
    TORCH_CHECK_VALUE(swp[n] >= T(0) && swp[n] < std::numeric_limits<T>::infinity(),
                      "gmm_em_stats: sample_weight must be finite and >= 0, got ", swp[n], " at row ", n);
  }
  // Chunks of tiles: boundaries depend only on the problem, never on the thread count.
  const int64_t n_tiles = (N + tile - 1) / tile, size = plan.stats_size();
  const int64_t max_chunks = std::max<int64_t>(1, kChunkBudget / (size * 8));
  const int64_t n_chunks = std::max<int64_t>(1, std::min({n_tiles, kMaxChunks, max_chunks}));
  // Chunk c starts at tile c + (n_tiles - n_chunks) (1 - (1 - c / n_chunks)^2): chunks shrink, so
  // the thread that takes the last one leaves the other less to wait for (the op 0.977-0.992x at
  // K = 100 on the MNIST pixels, AMD Zen 3, 2 threads, in-process A/B, three runs).
  auto first_tile = [&](int64_t c) {
    const double f = 1.0 - static_cast<double>(c) / static_cast<double>(n_chunks);
    return c + static_cast<int64_t>(std::llround(static_cast<double>(n_tiles - n_chunks) * (1.0 - f * f)));
  };
  // Small accumulators live on in this thread between calls (a fresh allocation costs page faults
  // on every call: ~10% of a call over 8192 rows at K = 100, D = 784).
  thread_local std::vector<double> kept;
  std::vector<double> own;
  std::vector<double>& buf = n_chunks * size <= kKeptDoubles ? kept : own;
  buf.resize(n_chunks * size);
  double* accp = buf.data();
  // Threads take chunks in turn (tiles cost more or less: pruned distances); which thread runs a
  // chunk does not change its sums.
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(n_chunks, at::get_num_threads()), 1, [&](int64_t, int64_t) {
    const gmm_cpu::FlushSubnormals flush;
    std::optional<Scratch<T>> own;
    Scratch<T>& s = gmm_cpu::thread_scratch(plan, x.options(), own);
    for (int64_t c = next++; c < n_chunks; c = next++) {
      std::fill(accp + c * size, accp + (c + 1) * size, 0.0);  // here: in parallel, and warm in cache
      chunk_stats(plan, x, swp, first_tile(c), first_tile(c + 1), s, accp + c * size);
    }
  });
  // Sum the chunks in order (deterministic), in parallel over the statistics' entries.
  at::Tensor total = at::empty({size}, x.options().dtype(at::kDouble));
  double* tp = total.data_ptr<double>();
  at::parallel_for(0, size, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) tp[i] = 0.0;
    for (int64_t c = 0; c < n_chunks; ++c)
      for (int64_t i = i0; i < i1; ++i) tp[i] += accp[c * size + i];
  });
  gmm_cpu::finish_centred_sxx(plan, tp);
  // Four tensors of their own (not views of total), filled by copies rather than ATen calls.
  const at::TensorOptions f64 = x.options().dtype(at::kDouble);
  at::Tensor nk = at::empty({K}, f64), sx = at::empty({K, D}, f64);
  at::Tensor sxx = at::empty(gmm_param_shape(cov, K, D), f64), loglik = at::empty({}, f64);
  std::copy(tp, tp + K, nk.data_ptr<double>());
  std::copy(tp + K, tp + K + K * D, sx.data_ptr<double>());
  std::copy(tp + K + K * D, tp + size - 1, sxx.data_ptr<double>());
  *loglik.data_ptr<double>() = tp[size - 1];
  return {nk, sx, sxx, loglik};
}

// float32 diag, spherical and tied sum raw second moments (float32 within a tile, then float64),
// so a variance sxx / nk - mean^2 is off by about eps32 / 4 of sxx / nk (two blobs of 20,000 rows,
// measured): 1.5e-8 (mean / spread)^2 of itself. Where this call's sxx, at eps32 of it, could be
// off by 2^-10 of the variance it feeds, the call is redone in float64. That variance is the
// parameters' at the component's expected share of these rows (so a component that this batch
// barely touches, whose own spread here may be 0, adds too little to matter); tied: the rows' pooled.
constexpr double kCancelRatio = 8192.0;  // 2^-10 / eps32

bool raw_moments_cancel(CovType cov, const Stats& st, const at::Tensor& log_weights, const at::Tensor& prec_chol) {
  const double* nk = std::get<0>(st).data_ptr<double>();
  const double* sx = std::get<1>(st).data_ptr<double>();
  const double* sxx = std::get<2>(st).data_ptr<double>();
  const int64_t K = std::get<1>(st).size(0), D = std::get<1>(st).size(1);
  if (cov == CovType::kTied) {  // sxx_dd against the within-component sum sxx_dd - sum_k sx_kd^2 / nk
    for (int64_t d = 0; d < D; ++d) {
      double within = sxx[d * D + d];
      for (int64_t k = 0; k < K; ++k)
        if (nk[k] > 0.0) within -= sx[k * D + d] * sx[k * D + d] / nk[k];
      if (sxx[d * D + d] > kCancelRatio * within) return true;
    }
    return false;
  }
  const float* lwp = log_weights.data_ptr<float>();  // contiguous float32, as x
  const float* pcp = prec_chol.data_ptr<float>();    // [K, D] or [K]: 1 / sigma
  double rows = 0.0;
  for (int64_t k = 0; k < K; ++k) rows += nk[k];
  for (int64_t k = 0; k < K; ++k) {
    const double share = std::max(nk[k], std::exp(static_cast<double>(lwp[k])) * rows);
    if (cov == CovType::kDiag) {
      for (int64_t d = 0; d < D; ++d) {
        const double p = pcp[k * D + d];
        if (sxx[k * D + d] * p * p > kCancelRatio * share) return true;
      }
    } else if (sxx[k] * static_cast<double>(pcp[k]) * pcp[k] > kCancelRatio * static_cast<double>(D) * share) {
      return true;
    }
  }
  return false;
}

// The float64 kernel over blocks of x converted (at most 8 Mi values at a time), summed in order.
Stats em_stats_float64(const at::Tensor& x, const std::optional<at::Tensor>& sample_weight, const at::Tensor& lw,
                       const at::Tensor& mu, const at::Tensor& pc, CovType cov) {
  const int64_t N = x.size(0), block = std::max<int64_t>(1, (int64_t{8} << 20) / std::max<int64_t>(1, x.size(1)));
  const at::Tensor lw64 = lw.to(at::kDouble), mu64 = mu.to(at::kDouble), pc64 = pc.to(at::kDouble);
  Stats total;
  for (int64_t n0 = 0; n0 < N; n0 += block) {
    const int64_t rows = std::min(block, N - n0);
    std::optional<at::Tensor> swb;
    if (sample_weight.has_value()) swb = sample_weight->narrow(0, n0, rows).to(at::kDouble);
    Stats part = em_stats_cpu<double>(x.narrow(0, n0, rows).to(at::kDouble), swb, lw64, mu64, pc64, cov);
    if (n0 == 0) {
      total = part;
    } else {
      std::get<0>(total).add_(std::get<0>(part));
      std::get<1>(total).add_(std::get<1>(part));
      std::get<2>(total).add_(std::get<2>(part));
      std::get<3>(total).add_(std::get<3>(part));
    }
  }
  return total;
}

template <typename T>
at::Tensor log_prob_cpu(const at::Tensor& x_in, const at::Tensor& log_weights, const at::Tensor& means,
                        const at::Tensor& prec_chol, CovType cov, bool prune) {
  const at::Tensor x = rows_with_unit_stride(x_in);
  Plan<T> plan(call_kernels<T>(), cov, log_weights, means, prec_chol);
  if (prune) plan_pruning(plan);  // the inspection op: as the E-step prunes
  const int64_t N = x.size(0), K = plan.K, tile = plan.tile(), ldx = x.stride(0);
  at::Tensor out = at::empty({N, K}, x.options());
  T* op = out.data_ptr<T>();
  const T* xp = x.template data_ptr<T>();
  at::parallel_for(0, (N + tile - 1) / tile, 1, [&](int64_t t0, int64_t t1) {
    std::optional<Scratch<T>> own;
    Scratch<T>& s = gmm_cpu::thread_scratch(plan, x.options(), own);
    const T* maha = s.maha.template data_ptr<T>();  // [K, tile]
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * tile, rows = std::min(tile, N - n0);
      int64_t lds = 0;
      const T* xs = tile_rows(plan, xp, ldx, N, n0, rows, s, &lds);
      if (plan.vec_order.empty()) {
        tile_maha(plan, plan.gemm_form() ? x.narrow(0, n0, rows) : at::Tensor(), xs, lds, rows, s);
      } else {
        tile_maha_pruned(plan, xs, lds, rows, s);
      }
      const bool joint = plan.dot_form();  // the tile holds joint log-probabilities already
      for (int64_t n = 0; n < rows; ++n) {
        for (int64_t k = 0; k < K; ++k) {
          const T m = maha[k * tile + n];
          op[(n0 + n) * K + k] = joint ? m : static_cast<T>(joint_log_prob(plan.log_const[k], m));
        }
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
  if (x.scalar_type() != at::kFloat) {
    return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_em_stats_cpu", [&] {
      return em_stats_cpu<scalar_t>(x, sample_weight, lw, mu, pc, cov);
    });
  }
  Stats out = em_stats_cpu<float>(x, sample_weight, lw, mu, pc, cov);
  if (cov == CovType::kFull || !raw_moments_cancel(cov, out, lw, pc)) return out;  // full: about the means
  return em_stats_float64(x, sample_weight, lw, mu, pc, cov);
}

static at::Tensor log_prob_op(const at::Tensor& x, const at::Tensor& log_weights, const at::Tensor& means,
                              const at::Tensor& prec_chol, c10::string_view covariance_type, bool prune) {
  const CovType cov = gmm_check_inputs("gmm_log_prob", x, std::nullopt, log_weights, means, prec_chol,
                                       std::string_view(covariance_type.data(), covariance_type.size()));
  TORCH_CHECK_VALUE(x.device().is_cpu(), "gmm_log_prob: x must be on the CPU, got ", x.device());
  const at::Tensor lw = log_weights.contiguous(), mu = means.contiguous(), pc = prec_chol.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_log_prob_cpu",
                                    [&] { return log_prob_cpu<scalar_t>(x, lw, mu, pc, cov, prune); });
}

at::Tensor gmm_log_prob_cpu(const at::Tensor& x, const at::Tensor& log_weights, const at::Tensor& means,
                            const at::Tensor& prec_chol, c10::string_view covariance_type) {
  return log_prob_op(x, log_weights, means, prec_chol, covariance_type, false);
}

at::Tensor gmm_pruned_log_prob_cpu(const at::Tensor& x, const at::Tensor& log_weights, const at::Tensor& means,
                                   const at::Tensor& prec_chol, c10::string_view covariance_type) {
  return log_prob_op(x, log_weights, means, prec_chol, covariance_type, true);
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CPU, m) {
  m.impl("gmm_em_stats", &lgm::gmm_em_stats_cpu);
  m.impl("gmm_log_prob", &lgm::gmm_log_prob_cpu);
  m.impl("_gmm_pruned_log_prob", &lgm::gmm_pruned_log_prob_cpu);
}
