// CUDA kernels of gmm_em_stats and gmm_log_prob, over chunks of rows:
//   1. maha [rows, K]: tied/full first apply P by GEMM (y = x P); a kernel then sums the
//      whitened residuals ((x - mu) P)_d^2 per (row, component), one warp per row, in the centred
//      form (no cancellation); common/gmm.h holds the arithmetic the CPU kernel also runs.
//   2. a kernel turns each row into weighted responsibilities (float64, log space) and reduces
//      its block's log-likelihood in shared memory to one partial per block.
//   3. the statistics are float64 GEMMs of the responsibilities with the chunk (cuBLAS via ATen),
//      accumulated into float64 outputs; the block partials are summed by one block in a fixed
//      order. No float atomics, no host synchronisation, everything on the current stream.
// Diag/spherical with 64 <= K <= 1024 take a GEMM design instead (em_stats_cuda_gemm, below).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <vector>

#include "common/gmm.h"
#include "common/gmm_host.h"

namespace lgm {

namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kChunkBytes = int64_t{256} << 20;  // float64 chunk of x and its responsibilities

// maha[n, k] = sum_d whitened_residual(x_nd, p_kd, nu_kd)^2; p == nullptr means p = 1.
template <typename T>
__global__ void maha_kernel(const T* __restrict__ x, int64_t ldx, int64_t rows, int64_t D, const T* __restrict__ p,
                            const T* __restrict__ nu, int64_t K, T* __restrict__ maha, int64_t ldo) {
  const int lane = threadIdx.x % 32;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t n_warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  for (int64_t n = warp; n < rows; n += n_warps) {
    const T* xn = x + n * ldx;
    for (int64_t k = 0; k < K; ++k) {
      T acc = 0;
      for (int64_t d = lane; d < D; d += 32) {
        const T t = whitened_residual(xn[d], p ? p[k * D + d] : T(1), nu[k * D + d]);
        acc += t * t;
      }
      for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
      if (lane == 0) maha[n * ldo + k] = acc;
    }
  }
}

// Sum of a block's values in shared memory, fixed tree order; the result is in lane 0 of thread 0.
__device__ double block_sum(double value, double* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  return shared[0];
}

// One thread per row: resp[n, :] = sample weight * softmax_k(joint log-probabilities) (float64);
// partial[block] = sum over the block's rows of weight * log-sum-exp.
template <typename T>
__global__ void softmax_kernel(const T* __restrict__ maha, int64_t rows, int64_t K, const double* __restrict__ log_const,
                               const T* __restrict__ sample_weight, double* __restrict__ resp,
                               double* __restrict__ partial) {
  __shared__ double shared[kThreads];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  double loglik = 0.0;
  if (n < rows) {
    double* row = resp + n * K;
    for (int64_t k = 0; k < K; ++k) {
      row[k] = joint_log_prob(log_const[k], static_cast<double>(maha[n * K + k]));
    }
    const double w = sample_weight ? static_cast<double>(sample_weight[n]) : 1.0;
    loglik = weighted_loglik(row_softmax(row, K, w, row), w);
  }
  const double total = block_sum(loglik, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// out[n, k] = log w_k + log N(x_n | k) in x's dtype.
template <typename T>
__global__ void joint_kernel(const T* __restrict__ maha, int64_t rows, int64_t K, const double* __restrict__ log_const,
                             T* __restrict__ out) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * K;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t k = i % K;
    out[i] = static_cast<T>(joint_log_prob(log_const[k], static_cast<double>(maha[i])));
  }
}

// out[0] = sum of values[0 .. n) by one block, in a fixed order.
__global__ void sum_kernel(const double* __restrict__ values, int64_t n, double* __restrict__ out) {
  __shared__ double shared[kThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += values[i];
  const double total = block_sum(acc, shared);
  if (threadIdx.x == 0) out[0] = total;
}

int blocks_for(int64_t work, int64_t per_block) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + per_block - 1) / per_block, 65535)));
}

// a @ b never in TF32 (which Lightning users often enable): float32 goes through float64,
// rounded once, so y = x P keeps full float32 accuracy before y - mu P cancels.
at::Tensor exact_mm(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() == at::kDouble) return at::mm(a, b);
  return at::mm(a.to(at::kDouble), b.to(at::kDouble)).to(a.scalar_type());
}

// Parameters prepared once per call by the host function the CPU kernels also use
// (common/gmm_host.h): p, nu [K, D] (ld = D), prec, log_const; nu of tied/full formed in float64.
using Params = GmmTables;

// maha [rows, K] of the chunk xc (rows with unit stride along D).
template <typename T>
at::Tensor chunk_maha(const Params& prm, const at::Tensor& xc) {
  const int64_t rows = xc.size(0), K = prm.K, D = prm.D;
  at::Tensor maha = at::empty({rows, K}, xc.options());
  if (rows == 0) return maha;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const int blocks = blocks_for(rows, kWarps);
  const T* nu = prm.nu.data_ptr<T>();
  if (prm.cov == CovType::kDiag || prm.cov == CovType::kSpherical) {
    maha_kernel<T><<<blocks, kThreads, 0, stream>>>(xc.data_ptr<T>(), xc.stride(0), rows, D, prm.p.data_ptr<T>(), nu,
                                                    K, maha.data_ptr<T>(), K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else if (prm.cov == CovType::kTied) {
    const at::Tensor y = exact_mm(xc, prm.prec);
    maha_kernel<T><<<blocks, kThreads, 0, stream>>>(y.data_ptr<T>(), D, rows, D, nullptr, nu, K, maha.data_ptr<T>(), K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const at::Tensor y = exact_mm(xc, prm.prec[k]);
      maha_kernel<T><<<blocks, kThreads, 0, stream>>>(y.data_ptr<T>(), D, rows, D, nullptr, nu + k * D, 1,
                                                      maha.data_ptr<T>() + k, K);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  return maha;
}

// Rows per chunk: the chunk's float64 copy [rows, D] and responsibilities [rows, K] within
// kChunkBytes (maha [rows, K] and y [rows, D] are no larger), one softmax thread per row in one grid.
// LGM_GMM_CUDA_CHUNK_ROWS caps it (tests use it to run the multi-chunk path on small inputs).
int64_t chunk_rows(int64_t N, int64_t D, int64_t K) {
  int64_t rows = std::min({N, kChunkBytes / ((D + K) * 8), int64_t{65535} * kThreads});
  if (const char* cap = std::getenv("LGM_GMM_CUDA_CHUNK_ROWS")) {
    const long long value = std::atoll(cap);
    if (value > 0) rows = std::min<int64_t>(rows, value);
  }
  return std::max<int64_t>(1, rows);
}

at::Tensor rows_with_unit_stride(const at::Tensor& x) {
  return (x.stride(1) == 1 && x.stride(0) >= x.size(1)) ? x : x.contiguous();
}

// ---------------------------------------------------------------------------------------------
// Many components (diag/spherical, kGemmMinK <= K <= kGemmMaxK): the design for --large (N = 1e6,
// D = 128, K = 1024). Run on an H200 (benchmarks/results/*_h200_*; tests/ops: test_cuda_many_components_*).
//   1. joint [rows, K] = log_const - maha / 2 as ONE float64 GEMM of [x, x^2] with
//      [p nu ; -p^2 / 2] (the expanded form, safe in float64), plus a constant per component;
//   2. a warp per row reads its joint row once into registers and writes w * softmax once;
//   3. [sx | sxx | nk] = R^T [x, x^2, 1] as ONE float64 GEMM.

constexpr int64_t kGemmMinK = 64;
constexpr int kPerLane = 32;                       // K <= 32 * 32 values in registers
constexpr int64_t kGemmMaxK = 32 * kPerLane;

// Rows of joint [rows, K] -> w * softmax in place (common/gmm.h row_softmax semantics);
// partial[block] = sum over the block's rows of w * lse.
template <typename T>
__global__ void softmax_warp_kernel(double* __restrict__ joint, int64_t rows, int64_t K,
                                    const T* __restrict__ sample_weight, double* __restrict__ partial) {
  __shared__ double shared[kThreads];
  const int lane = threadIdx.x % 32;
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  double loglik = 0.0;
  if (n < rows) {  // uniform across the warp
    double* row = joint + n * K;
    double v[kPerLane];
    double top = -INFINITY;
    bool nan = false;  // a NaN joint (NaN in x): lse NaN, as row_softmax
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t k = lane + 32 * i;
      v[i] = k < K ? row[k] : -INFINITY;
      nan = nan || v[i] != v[i];
      top = fmax(top, v[i]);
    }
    for (int o = 16; o > 0; o /= 2) top = fmax(top, __shfl_xor_sync(0xffffffffu, top, o));
    nan = __any_sync(0xffffffffu, nan);
    const bool none = nan || top == -INFINITY;  // no softmax: NaN responsibilities
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      v[i] = none ? 0.0 : exp_nonpositive(v[i] - top);
      sum += v[i];
    }
    for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const double w = sample_weight ? static_cast<double>(sample_weight[n]) : 1.0;
    const double scale = w == 0.0 ? 0.0 : w / sum;
    const bool no_finite = none && w != 0.0;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t k = lane + 32 * i;
      if (k < K) row[k] = no_finite ? NAN : v[i] * scale;
    }
    if (lane == 0) loglik = weighted_loglik(nan ? NAN : (top == -INFINITY ? top : top + log(sum)), w);
  }
  const double total = block_sum(loglik, shared);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> em_stats_cuda_gemm(const at::Tensor& x, const at::Tensor& sw,
                                                                               const Params& prm) {
  const int64_t N = x.size(0), K = prm.K, D = prm.D;
  const int64_t C = std::min<int64_t>(chunk_rows(N, 2 * D + 1, K), int64_t{65535} * kWarps);
  // lhs [rows, L] = [x, x^2, 1, 0 ...]: L a multiple of 8, so every GEMM operand starts and
  // strides on 64 bytes (an odd stride, as [1, x, x^2] had, keeps cuBLAS off its fastest kernels).
  const int64_t L = (2 * D + 1 + 7) / 8 * 8;
  const auto f64 = x.options().dtype(at::kDouble);
  const auto stream = at::cuda::getCurrentCUDAStream();
  // maha = sum_d (x p - nu)^2 = sum_d x^2 p^2 - 2 x p nu + nu^2 (nu = mu p).
  const at::Tensor p = prm.p.narrow(1, 0, D).to(at::kDouble), nu = prm.nu.narrow(1, 0, D).to(at::kDouble);
  const at::Tensor weights = at::cat({p * nu, -0.5 * p.square()}, 1).t().contiguous();  // [2D, K]
  const at::Tensor constant = (prm.log_const - 0.5 * nu.square().sum(1)).unsqueeze(0);  // [1, K]
  at::Tensor moments = at::zeros({K, L}, f64);                                           // [sx | sxx | nk | 0]
  at::Tensor lhs_all = at::zeros({std::min(C, N), L}, f64);  // reused by every chunk (one stream)
  lhs_all.select(1, 2 * D).fill_(1.0);
  int64_t n_partials = 0;
  for (int64_t n0 = 0; n0 < N; n0 += C) n_partials += blocks_for(std::min(C, N - n0), kWarps);
  at::Tensor partial = at::zeros({std::max<int64_t>(1, n_partials)}, f64);
  int64_t offset = 0;
  for (int64_t n0 = 0; n0 < N; n0 += C) {
    const int64_t rows = std::min(C, N - n0);
    const at::Tensor lhs = lhs_all.narrow(0, 0, rows);
    at::Tensor xd = lhs.narrow(1, 0, D), xsq = lhs.narrow(1, D, D);
    xd.copy_(x.narrow(0, n0, rows));
    at::mul_out(xsq, xd, xd);
    at::Tensor joint = at::addmm(constant, lhs.narrow(1, 0, 2 * D), weights);  // 1.
    const int blocks = blocks_for(rows, kWarps);
    TORCH_INTERNAL_ASSERT(static_cast<int64_t>(blocks) * kWarps >= rows, "gmm_em_stats: chunk too large");
    softmax_warp_kernel<T><<<blocks, kThreads, 0, stream>>>(joint.data_ptr<double>(), rows, K,  // 2.
                                                           sw.defined() ? sw.data_ptr<T>() + n0 : nullptr,
                                                           partial.data_ptr<double>() + offset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    offset += blocks;
    moments.addmm_(joint.t(), lhs);  // 3.
  }
  at::Tensor loglik = at::empty({}, f64);
  sum_kernel<<<1, kThreads, 0, stream>>>(partial.data_ptr<double>(), n_partials, loglik.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor sxx = moments.narrow(1, D, D);
  sxx = prm.cov == CovType::kSpherical ? sxx.sum(1) : sxx.contiguous();
  return {moments.select(1, 2 * D).contiguous(), moments.narrow(1, 0, D).contiguous(), sxx, loglik};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> em_stats_cuda(const at::Tensor& x_in,
                                                                          const std::optional<at::Tensor>& sample_weight,
                                                                          const Params& prm) {
  const at::Tensor x = rows_with_unit_stride(x_in);
  const int64_t N = x.size(0), K = prm.K, D = prm.D, C = chunk_rows(N, D, K);
  const auto f64 = x.options().dtype(at::kDouble);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor sw = sample_weight.has_value() ? sample_weight->contiguous() : at::Tensor();
  if ((prm.cov == CovType::kDiag || prm.cov == CovType::kSpherical) && K >= kGemmMinK && K <= kGemmMaxK) {
    return em_stats_cuda_gemm<T>(x, sw, prm);
  }
  at::Tensor nk = at::zeros({K}, f64), sx = at::zeros({K, D}, f64);
  at::Tensor sxx = at::zeros(gmm_param_shape(prm.cov, K, D), f64);
  // Block partials of the log-likelihood: every chunk writes its own slice.
  int64_t n_partials = 0;
  for (int64_t n0 = 0; n0 < N; n0 += C) n_partials += blocks_for(std::min(C, N - n0), kThreads);
  at::Tensor partial = at::zeros({std::max<int64_t>(1, n_partials)}, f64);
  int64_t offset = 0;
  for (int64_t n0 = 0; n0 < N; n0 += C) {
    const int64_t rows = std::min(C, N - n0);
    const at::Tensor xc = x.narrow(0, n0, rows);
    const at::Tensor maha = chunk_maha<T>(prm, xc);
    at::Tensor resp = at::empty({rows, K}, f64);
    const int blocks = blocks_for(rows, kThreads);
    TORCH_INTERNAL_ASSERT(static_cast<int64_t>(blocks) * kThreads >= rows, "gmm_em_stats: chunk too large");
    softmax_kernel<T><<<blocks, kThreads, 0, stream>>>(
        maha.data_ptr<T>(), rows, K, prm.log_const.data_ptr<double>(), sw.defined() ? sw.data_ptr<T>() + n0 : nullptr, resp.data_ptr<double>(), partial.data_ptr<double>() + offset);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    offset += blocks;
    // Statistics as float64 GEMMs (PRML eqs. 9.24-9.27 before normalisation).
    const at::Tensor xd = xc.to(at::kDouble);
    nk.addmv_(resp.t(), at::ones({rows}, f64));
    sx.addmm_(resp.t(), xd);
    switch (prm.cov) {
      case CovType::kDiag: sxx.addmm_(resp.t(), xd.square()); break;
      case CovType::kSpherical: sxx.addmv_(resp.t(), xd.square().sum(1)); break;
      case CovType::kTied: sxx.addmm_(sw.defined() ? (xd * sw.narrow(0, n0, rows).to(at::kDouble).unsqueeze(1)).t() : xd.t(), xd); break;
      case CovType::kFull:
        for (int64_t k = 0; k < K; ++k) sxx[k].addmm_((xd * resp.narrow(1, k, 1)).t(), xd);
        break;
    }
  }
  at::Tensor loglik = at::empty({}, f64);
  sum_kernel<<<1, kThreads, 0, stream>>>(partial.data_ptr<double>(), n_partials, loglik.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {nk, sx, sxx, loglik};
}

template <typename T>
at::Tensor log_prob_cuda(const at::Tensor& x_in, const Params& prm) {
  const at::Tensor x = rows_with_unit_stride(x_in);
  const int64_t N = x.size(0), K = prm.K, D = prm.D, C = chunk_rows(N, D, K);
  at::Tensor out = at::empty({N, K}, x.options());
  const auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t n0 = 0; n0 < N; n0 += C) {
    const int64_t rows = std::min(C, N - n0);
    const at::Tensor maha = chunk_maha<T>(prm, x.narrow(0, n0, rows));
    joint_kernel<T><<<blocks_for(rows * K, kThreads), kThreads, 0, stream>>>(
        maha.data_ptr<T>(), rows, K, prm.log_const.data_ptr<double>(), out.data_ptr<T>() + n0 * K);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gmm_em_stats_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& sample_weight, const at::Tensor& log_weights,
    const at::Tensor& means, const at::Tensor& prec_chol, c10::string_view covariance_type) {
  const CovType cov = gmm_check_inputs("gmm_em_stats", x, sample_weight, log_weights, means, prec_chol,
                                       std::string_view(covariance_type.data(), covariance_type.size()));
  TORCH_CHECK_VALUE(x.is_cuda(), "gmm_em_stats: x must be on a CUDA device, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_em_stats_cuda", [&] {
    return em_stats_cuda<scalar_t>(x, sample_weight, gmm_tables(cov, log_weights, means, prec_chol, means.size(1)));
  });
}

at::Tensor gmm_log_prob_cuda(const at::Tensor& x, const at::Tensor& log_weights, const at::Tensor& means,
                             const at::Tensor& prec_chol, c10::string_view covariance_type) {
  const CovType cov = gmm_check_inputs("gmm_log_prob", x, std::nullopt, log_weights, means, prec_chol,
                                       std::string_view(covariance_type.data(), covariance_type.size()));
  TORCH_CHECK_VALUE(x.is_cuda(), "gmm_log_prob: x must be on a CUDA device, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  return AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gmm_log_prob_cuda", [&] {
    return log_prob_cuda<scalar_t>(x, gmm_tables(cov, log_weights, means, prec_chol, means.size(1)));
  });
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CUDA, m) {
  m.impl("gmm_em_stats", &lgm::gmm_em_stats_cuda);
  m.impl("gmm_log_prob", &lgm::gmm_log_prob_cuda);
}
