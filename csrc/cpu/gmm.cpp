// CPU kernels of gmm_em_stats and gmm_log_prob: one pass over x in tiles of rows.
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
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "common/gmm.h"

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

constexpr int64_t kTile = 128;        // rows per tile: x tile + tables stay in L2
constexpr int64_t kFullTile = 512;    // full: larger tiles amortise the float64 D x D adds
constexpr int64_t kMaxChunks = 16;    // fixed-order partial sums (a multiple of common thread counts)
constexpr int64_t kChunkBudget = int64_t{256} << 20;  // bytes of float64 chunk accumulators
constexpr int kMahaKB = 5;            // components per block in the distance kernel (4 x 5 accumulators)
constexpr int kMomentKB = 10;         // components per block in the dense moment kernel

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

template <typename T>
inline __attribute__((always_inline)) Vec<T> vload(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// The first n (clamped to [0, width]) values of p, zeros after.
template <typename T>
inline __attribute__((always_inline)) Vec<T> vload_partial(const T* p, int64_t n) {
  Vec<T> v = {};
  for (int64_t i = 0; i < std::min<int64_t>(n, Simd<T>::kWidth); ++i) v[i] = p[i];
  return v;
}

// Keeps v in a register: stops the compiler from re-reading a table entry from memory for every
// use (on AVX-512 it otherwise spends a load per FMA and becomes load-bound).
template <typename T>
inline __attribute__((always_inline)) void pin(Vec<T>& v) {
#if defined(__AVX512F__)
  __asm__("" : "+v"(v));
#endif
}

template <typename T>
inline __attribute__((always_inline)) T hsum(const Vec<T>& v) {
  T s = 0;
  for (int i = 0; i < Simd<T>::kWidth; ++i) s += v[i];
  return s;
}

// dst[j] += v[j] for j < min(n, width), in float64.
template <typename T>
inline __attribute__((always_inline)) void flush(double* dst, const Vec<T>& v, int64_t n) {
  for (int64_t j = 0; j < std::min<int64_t>(n, Simd<T>::kWidth); ++j) dst[j] += static_cast<double>(v[j]);
}

// ---------------------------------------------------------------------------------------------
// 1. Squared distances: out[r, k] = sum_d (x_rd p_kd - nu_kd)^2 (kScaled) or (x_rd - nu_kd)^2,
// for RB rows and KB components. Tables p, nu are [*, ldt] with ldt >= D a multiple of the
// vector width and zeros past D, so the zero-filled tail of x adds nothing.

// `ahead` (may be null): RB rows to prefetch into L2 as they will be read next, a line per vector.
template <typename T, int RB, int KB, bool kScaled>
void maha_block(const T* x, int64_t ldx, int64_t D, const T* p, const T* nu, int64_t ldt, T* out, int64_t ldo,
                const T* ahead) {
  constexpr int W = Simd<T>::kWidth;
  Vec<T> acc[RB][KB] = {};
  auto step = [&](const Vec<T> (&xv)[RB], int64_t d) __attribute__((always_inline)) {
    for (int k = 0; k < KB; ++k) {
      Vec<T> nv = vload(nu + k * ldt + d);
      pin<T>(nv);
      if constexpr (kScaled) {
        Vec<T> pv = vload(p + k * ldt + d);
        pin<T>(pv);
        for (int r = 0; r < RB; ++r) {
          const Vec<T> t = whitened_residual(xv[r], pv, nv);
          acc[r][k] += t * t;
        }
      } else {
        for (int r = 0; r < RB; ++r) {
          const Vec<T> t = xv[r] - nv;
          acc[r][k] += t * t;
        }
      }
    }
  };
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    Vec<T> xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = vload(x + r * ldx + d);
    if (ahead) {
      for (int r = 0; r < RB; ++r) __builtin_prefetch(ahead + r * ldx + d, 0, 2);
    }
    step(xv, d);
  }
  if (d < D) {
    Vec<T> xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = vload_partial(x + r * ldx + d, D - d);
    step(xv, d);
  }
  for (int r = 0; r < RB; ++r)
    for (int k = 0; k < KB; ++k) out[r * ldo + k] = hsum<T>(acc[r][k]);
}

template <typename T, int KB, bool kScaled>
void maha_rows(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, T* out,
               int64_t ldo, int64_t prefetch_rows) {
  int64_t n = 0;
  for (; n + 4 <= rows; n += 4) {
    const T* ahead = n + 8 <= prefetch_rows ? x + (n + 4) * ldx : nullptr;
    maha_block<T, 4, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n * ldo, ldo, ahead);
  }
  for (; n < rows; ++n) maha_block<T, 1, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n * ldo, ldo, nullptr);
}

// out [rows, ldo]: columns 0..K-1 for table rows 0..K-1, in blocks of at most kMahaKB components.
// The first block prefetches rows ahead, up to row `readable` of x (past the tile where there are).
template <typename T, bool kScaled>
void maha_tile(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, int64_t K,
               T* out, int64_t ldo, int64_t readable) {
  const int64_t blocks = (K + kMahaKB - 1) / kMahaKB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    const T* pb = kScaled ? p + k0 * ldt : nullptr;
    const T* nb = nu + k0 * ldt;
    T* ob = out + k0;
    switch (kb) {
#define LGM_MAHA_CASE(KB) \
  case KB: maha_rows<T, KB, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo, b == 0 ? readable : 0); break;
      LGM_MAHA_CASE(1) LGM_MAHA_CASE(2) LGM_MAHA_CASE(3) LGM_MAHA_CASE(4) LGM_MAHA_CASE(5)
#undef LGM_MAHA_CASE
      default: TORCH_INTERNAL_ASSERT(false, "gmm: component block of ", kb);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Moments: sx[k, d] += sum_n r[n, k] x[n, d] and (kSquares) sxx[k, d] += sum_n r[n, k] x[n, d]^2.

// Dense: all rows, KB components; one vector of d at a time with 2 KB accumulators.
template <typename T, int KB, bool kSquares>
void moments_dense_block(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* r, int64_t ldr, double* sx,
                         double* sxx) {
  constexpr int W = Simd<T>::kWidth;
  for (int64_t d = 0; d < D; d += W) {
    const int64_t len = D - d;
    Vec<T> a1[KB] = {}, a2[KB] = {};
    auto step = [&](const Vec<T>& xv, const T* rn) __attribute__((always_inline)) {
      const Vec<T> x2 = xv * xv;
      for (int k = 0; k < KB; ++k) {
        a1[k] += rn[k] * xv;
        if constexpr (kSquares) a2[k] += rn[k] * x2;
      }
    };
    if (len >= W) {
      for (int64_t n = 0; n < rows; ++n) step(vload(x + n * ldx + d), r + n * ldr);
    } else {
      for (int64_t n = 0; n < rows; ++n) step(vload_partial(x + n * ldx + d, len), r + n * ldr);
    }
    for (int k = 0; k < KB; ++k) {
      flush<T>(sx + k * D + d, a1[k], len);
      if constexpr (kSquares) flush<T>(sxx + k * D + d, a2[k], len);
    }
  }
}

template <typename T, bool kSquares>
void moments_dense(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* r, int64_t K, double* sx, double* sxx) {
  const int64_t blocks = (K + kMomentKB - 1) / kMomentKB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    double* sxb = sx + k0 * D;
    double* sxxb = kSquares ? sxx + k0 * D : nullptr;
    switch (kb) {
#define LGM_MOMENT_CASE(KB) \
  case KB: moments_dense_block<T, KB, kSquares>(x, ldx, rows, D, r + k0, K, sxb, sxxb); break;
      LGM_MOMENT_CASE(1) LGM_MOMENT_CASE(2) LGM_MOMENT_CASE(3) LGM_MOMENT_CASE(4) LGM_MOMENT_CASE(5)
      LGM_MOMENT_CASE(6) LGM_MOMENT_CASE(7) LGM_MOMENT_CASE(8) LGM_MOMENT_CASE(9) LGM_MOMENT_CASE(10)
#undef LGM_MOMENT_CASE
      default: TORCH_INTERNAL_ASSERT(false, "gmm: component block of ", kb);
    }
  }
}

// Sparse: one component, the m rows idx with weights val (its non-zero responsibilities).
// Blocks of NV vectors of d (2 NV independent accumulators), then the last few vectors one by one.
template <typename T, int NV, bool kSquares>
inline __attribute__((always_inline)) void moments_sparse_block(const T* x, int64_t ldx, int64_t d, int64_t D,
                                                                const int64_t* idx, const T* val, int64_t m,
                                                                double* sx, double* sxx) {
  constexpr int W = Simd<T>::kWidth;
  const bool full = d + NV * W <= D;
  Vec<T> a1[NV] = {}, a2[NV] = {};
  for (int64_t i = 0; i < m; ++i) {
    const T* row = x + idx[i] * ldx + d;
    for (int v = 0; v < NV; ++v) {
      const Vec<T> xv = full ? vload(row + v * W) : vload_partial(row + v * W, D - d - v * W);
      const Vec<T> rx = val[i] * xv;
      a1[v] += rx;
      if constexpr (kSquares) a2[v] += rx * xv;
    }
  }
  for (int v = 0; v < NV; ++v) {
    flush<T>(sx + d + v * W, a1[v], D - d - v * W);
    if constexpr (kSquares) flush<T>(sxx + d + v * W, a2[v], D - d - v * W);
  }
}

template <typename T, bool kSquares>
void moments_sparse(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const T* val, int64_t m, double* sx,
                    double* sxx) {
  constexpr int W = Simd<T>::kWidth, NV = 4;
  int64_t d = 0;
  for (; d + NV * W <= D; d += NV * W) moments_sparse_block<T, NV, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
  for (; d < D; d += W) moments_sparse_block<T, 1, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
}

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

// maha [rows, K] for the tile x_tile = rows n0 .. n0 + rows of x (pointer xt, row stride ldx);
// `readable` rows of x start at xt (for prefetching past the tile).
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

// One chunk of tiles [t0, t1) accumulated into acc (layout of Plan::stats_size).
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
