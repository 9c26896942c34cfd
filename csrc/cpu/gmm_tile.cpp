// The three steps of one tile of the CPU GMM E-step (gmm_kernels.h), and a chunk of tiles. The
// vector work goes through plan.simd, the kernels of the instruction set chosen for the call.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/gmm_kernels.h"
#include "cpu/gmm_scratch.h"

namespace lgm {
namespace gmm_cpu {

template <typename T>
const T* tile_rows(const Plan<T>& plan, const T* x, int64_t ldx, int64_t N, int64_t n0, int64_t rows, Scratch<T>& s,
                   int64_t* ld) {
  const T* xt = x + n0 * ldx;
  if ((n0 + rows - 1) * ldx + plan.ldt <= (N - 1) * ldx + plan.D) {
    *ld = ldx;
    return xt;
  }
  T* xp = s.xpad.template data_ptr<T>();  // zeros past D since allocation
  for (int64_t n = 0; n < rows; ++n) std::memcpy(xp + n * plan.ldt, xt + n * ldx, plan.D * sizeof(T));
  *ld = plan.ldt;
  return xp;
}

// 1. Squared distances of a tile: the SIMD kernel, after a GEMM y = x P for tied/full.
template <typename T>
void tile_maha(const Plan<T>& plan, const at::Tensor& x_tile, const T* xs, int64_t lds, int64_t rows, Scratch<T>& s) {
  T* maha = s.maha.template data_ptr<T>();  // [K, tile]
  const T* nu = plan.tab.nu.template data_ptr<T>();
  const int64_t K = plan.K, D = plan.D, ldt = plan.ldt, ldm = plan.tile(), ldk = plan.ldk;
  const T* nu_t = plan.nu_t.template data_ptr<T>();
  const T* p_t = plan.p_t.defined() ? plan.p_t.template data_ptr<T>() : nullptr;
  if (plan.rows_form()) {  // float32 diag, or the dot form's joints and the tile's norms
    const bool dot = plan.dot_form();
    const T* c = dot ? plan.centre.template data_ptr<T>() : nullptr;
    const double* sph = dot ? plan.sph.template data_ptr<double>() : nullptr;
    plan.simd.maha_rows(xs, lds, rows, D, p_t, nu_t, ldk, K, maha, ldm, c, dot ? s.norms.data() : nullptr, sph,
                        plan.tail_d() ? s.xtail.data() : nullptr);
    return;
  }
  T* yp = plan.gemm_form() ? s.ypad.template data_ptr<T>() : nullptr;
  auto pad_y = [&](const at::Tensor& y) {  // y [rows, D] -> ypad [rows, ldt], zeros past D
    const T* src = y.template data_ptr<T>();
    for (int64_t n = 0; n < rows; ++n) std::memcpy(yp + n * ldt, src + n * D, D * sizeof(T));
  };
  switch (plan.cov()) {
    case CovType::kDiag:
      plan.simd.maha(xs, lds, rows, D, plan.tab.p.template data_ptr<T>(), nu, ldt, p_t, nu_t, ldk, K, maha, ldm,
                     nullptr);
      break;
    case CovType::kSpherical:
      plan.simd.maha(xs, lds, rows, D, nullptr, plan.mu.template data_ptr<T>(), ldt, nullptr, nu_t, ldk, K, maha,
                     ldm, plan.scale.template data_ptr<T>());
      break;
    case CovType::kTied: {
      at::Tensor y = s.y.narrow(0, 0, rows);
      at::mm_out(y, x_tile, plan.tab.prec);
      pad_y(y);
      plan.simd.maha(yp, ldt, rows, D, nullptr, nu, ldt, nullptr, nu_t, ldk, K, maha, ldm, nullptr);
      break;
    }
    case CovType::kFull: {
      at::Tensor y = s.y.narrow(0, 0, rows);
      for (int64_t k = 0; k < K; ++k) {
        at::mm_out(y, x_tile, plan.tab.prec[k]);
        pad_y(y);
        plan.simd.maha(yp, ldt, rows, D, nullptr, nu + k * ldt, ldt, nullptr, nullptr, 0, 1, maha + k * ldm, ldm,
                       nullptr);
      }
      break;
    }
  }
}

namespace {

// 2. Joint log-probabilities -> log-sum-exp, responsibilities s.resp [K, tile] (x's dtype, times the
// sample weight), nk += their sums, and (float32) the sums of fused on the way. Returns the tile's
// weighted log-likelihood.
template <typename T>
double tile_responsibilities(const Plan<T>& plan, const T* sw, int64_t rows, Scratch<T>& s, double* nk,
                             FusedSums* fused) {
  const int64_t K = plan.K, ld = plan.tile();
  T* maha = s.maha.template data_ptr<T>();
  if constexpr (std::is_same_v<T, float>) {
    if (plan.dot_form()) {  // the tile holds joint log-probabilities
      return plan.simd.softmax_joint(maha, rows, K, ld, sw, s.work.data(), s.rowbuf.data(), s.resp.data(), nk,
                                     fused);
    }
    return plan.simd.softmax(maha, rows, K, ld, plan.log_const.data(), sw, s.work.data(), s.rowbuf.data(),
                             s.resp.data(), nk, fused);
  }
  double loglik = 0.0;  // float64 x: libm's exp, as the CUDA kernel
  for (int64_t n = 0; n < rows; ++n) {
    for (int64_t k = 0; k < K; ++k) s.joint[k] = joint_log_prob(plan.log_const[k], maha[k * ld + n]);
    const double w = sw ? static_cast<double>(sw[n]) : 1.0;
    loglik += weighted_loglik(row_softmax(s.joint.data(), K, w, s.rd.data()), w);
    for (int64_t k = 0; k < K; ++k) {
      s.resp[k * ld + n] = s.rd[k];
      nk[k] += s.rd[k];
    }
  }
  return loglik;
}

// What the float32 softmax can add for step 3 (FusedSums): the tail features' moments and the dot
// form's norm moments, from step 1's tile.
template <typename T>
FusedSums fused_sums(const Plan<T>& plan, Scratch<T>& s, double* sx, double* sxx) {
  FusedSums f;
  if constexpr (std::is_same_v<T, float>) {
    if (const int64_t tail = plan.tail_d()) {
      f.xt = s.xtail.data();
      f.m = tail;
      f.D = plan.D;
      f.d0 = plan.D - tail;
      f.sx = sx;
      f.sxx = plan.cov() == CovType::kDiag ? sxx : nullptr;
    }
    if (plan.dot_form()) {
      f.norms = s.norms.data();
      f.sxx_norms = sxx;
    }
  }
  return f;
}

// 3. sx (and diag sxx when sxx is not null) from the tile's responsibilities, but for the last
// `done` features (the softmax's fused sums); nnz: the count of non-zero responsibilities, or -1
// to count them here.
template <typename T>
void tile_moments(const Plan<T>& plan, const T* xs, int64_t lds, int64_t rows, Scratch<T>& s, double* sx,
                  double* sxx, int64_t done, int64_t nnz) {
  const int64_t K = plan.K, ld = plan.tile(), D = plan.D, d_end = D - done;
  const T* resp = s.resp.data();
  if (nnz < 0) {  // counted in 32-bit lanes per component (64-bit lanes: 3.6% of spherical K = 100, D = 50)
    nnz = 0;
    for (int64_t k = 0; k < K; ++k) {
      int32_t count = 0;
      for (int64_t n = 0; n < rows; ++n) count += resp[k * ld + n] != T(0);
      nnz += count;
    }
  }
  if (2 * nnz >= rows * K) {  // dense enough: register-blocked over components
    const int64_t tail = done ? 0 : plan.tail_d();
    for (int64_t r0 = 0; r0 < rows; r0 += kSumRows) {
      const int64_t part = std::min(kSumRows, rows - r0);
      plan.simd.moments_dense(xs + r0 * lds, lds, part, D, d_end - tail, resp + r0, ld, K, sx, sxx);
      if (tail) plan.simd.moments_tail(s.xtail.data() + r0, ld, tail, part, resp + r0, ld, K, D, D - tail, sx, sxx);
    }
    return;
  }
  for (int64_t k = 0; k < K; ++k) {  // sparse: per component, its rows with r != 0 (exact)
    const T* rk = resp + k * ld;
    int64_t m = 0;
    for (int64_t n = 0; n < rows; ++n) {
      if (rk[n] != T(0)) {
        s.idx[m] = n;
        s.val[m++] = rk[n];
      }
    }
    for (int64_t i = 0; i < m && d_end > 0; i += kSumRows)
      plan.simd.moments_sparse(xs, lds, d_end, s.idx.data() + i, s.val.data() + i, std::min(kSumRows, m - i),
                               sx + k * D, sxx ? sxx + k * D : nullptr);
  }
}

// 3 for pruned plans, sparse tiles: the tile's non-zero responsibilities join the pending list,
// to be added by flush_moments per component over several tiles. Per tile, each component's rows
// were one flush of D float64 sums (sx and sxx: 12.5 KB at D = 784) into [K, D] accumulators that
// outgrow the L2 at K = 100. False (nothing held) for a dense tile.
template <typename T>
bool defer_moments(const Plan<T>& plan, int64_t n0, int64_t rows, Scratch<T>& s) {
  const int64_t K = plan.K, ld = plan.tile();
  const T* resp = s.resp.data();
  const std::size_t before = s.pend_k.size();
  for (int64_t k = 0; k < K; ++k) {
    const T* rk = resp + k * ld;
    for (int64_t n = 0; n < rows; ++n) {
      if (rk[n] != T(0)) {
        s.pend_k.push_back(static_cast<int32_t>(k));
        s.pend_idx.push_back(n0 + n);
        s.pend_val.push_back(rk[n]);
      }
    }
  }
  if (2 * static_cast<int64_t>(s.pend_k.size() - before) < rows * K) return true;
  s.pend_k.resize(before);  // dense: tile_moments' register-blocked path
  s.pend_idx.resize(before);
  s.pend_val.resize(before);
  return false;
}

// The pending sparse moments, per component in row order, in float32 sums of at most a tile's rows
// (as tile_moments) added to the float64 sx and diag sxx.
template <typename T>
void flush_moments(const Plan<T>& plan, const T* x, int64_t ldx, Scratch<T>& s, double* sx, double* sxx) {
  const int64_t K = plan.K, D = plan.D, m = static_cast<int64_t>(s.pend_k.size());
  const int64_t part = std::min(plan.tile(), kSumRows);
  if (m == 0) return;
  s.pend_off.assign(K + 1, 0);
  for (int64_t i = 0; i < m; ++i) ++s.pend_off[s.pend_k[i] + 1];
  for (int64_t k = 0; k < K; ++k) s.pend_off[k + 1] += s.pend_off[k];
  s.sort_idx.resize(m);
  s.sort_val.resize(m);
  std::vector<int64_t> pos(s.pend_off.begin(), s.pend_off.end() - 1);
  for (int64_t i = 0; i < m; ++i) {  // a stable counting sort: rows stay in order
    const int64_t j = pos[s.pend_k[i]]++;
    s.sort_idx[j] = s.pend_idx[i];
    s.sort_val[j] = s.pend_val[i];
  }
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t i = s.pend_off[k]; i < s.pend_off[k + 1]; i += part) {
      const int64_t c = std::min(part, s.pend_off[k + 1] - i);
      plan.simd.moments_sparse(x, ldx, D, s.sort_idx.data() + i, s.sort_val.data() + i, c, sx + k * D,
                               sxx ? sxx + k * D : nullptr);
    }
  }
  s.pend_k.clear();
  s.pend_idx.clear();
  s.pend_val.clear();
}

// 1 and 2 in one pass where the plan allows (fused_softmax): true when done, with *nnz the count of
// non-zero responsibilities; false (nothing added) to run them apart.
template <typename T>
bool tile_fused(const Plan<T>& plan, const T* xs, int64_t lds, int64_t rows, const T* sw, Scratch<T>& s, double* nk,
                FusedSums* fused, double* loglik, int64_t* nnz) {
  if constexpr (std::is_same_v<T, float>) {
    if (!plan.fused_softmax(sw)) return false;
    double ll = 0.0;
    const bool dot = plan.dot_form();
    if (!plan.simd.rows_softmax(xs, lds, rows, plan.D, dot ? nullptr : plan.p_t.template data_ptr<T>(),
                                plan.nu_t.template data_ptr<T>(), plan.ldk, plan.K,
                                dot ? plan.centre.template data_ptr<T>() : nullptr, dot ? s.norms.data() : nullptr,
                                dot ? plan.sph.template data_ptr<double>() : nullptr, plan.log_const.data(),
                                plan.tail_d() ? s.xtail.data() : nullptr, s.resp.data(), plan.tile(), nk, fused, &ll,
                                nnz)) {
      return false;
    }
    *loglik += ll;
    fused_tile_count.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

// spherical: sxx[k] += sum_n r_kn ||x_n||^2, squared norms in float64 (the dot form's, from step 1).
template <typename T>
void tile_norm_moments(const Plan<T>& plan, const T* xt, int64_t ldx, int64_t rows, Scratch<T>& s, double* sxx) {
  double* norms = s.norms.data();
  if (!plan.dot_form()) plan.simd.sq_norms(xt, ldx, rows, plan.D, norms);
  plan.simd.resp_dot(s.resp.data(), plan.tile(), plan.K, rows, norms, sxx);
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

// Second moments by GEMM over the tile in x's dtype, added in float64. tied: sum_n w_n x_n x_n^T;
// full: per k, over the rows with r != 0, about the component's mean mu (Plan::full_means):
// sxx += C = sum r (x - mu)(x - mu)^T by GEMM, and csum += c = sum r (x - mu) (float64 over tiles);
// finish_full_moments then adds the raw terms once per chunk. So the M-step's
// sxx / nk - mean mean^T keeps C's digits (raw float32 sums lost them: a component at 1e3 of
// spread 1e-2 had negative variances; 500 rows of D = 784 a covariance that failed Cholesky).
template <typename T>
void tile_second_moments(const Plan<T>& plan, const at::Tensor& x_tile, const T* sw, int64_t rows, Scratch<T>& s,
                         double* csum, double* sxx) {
  const int64_t K = plan.K, D = plan.D;
  const T* xt = x_tile.template data_ptr<T>();
  const int64_t ldx = x_tile.stride(0);
  if (plan.cov() == CovType::kTied) {
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
  const T* resp = s.resp.data();
  const int64_t ld = plan.tile();
  T* xr = s.xr.template data_ptr<T>();
  T* xg = s.xg.template data_ptr<T>();
  std::vector<T> ct(D);  // the tile's sum r (x - mu) in x's dtype: of the spread's size, no cancellation
  for (int64_t k = 0; k < K; ++k) {
    const T* mu = plan.full_means.template data_ptr<T>() + k * D;
    std::fill(ct.begin(), ct.end(), T(0));
    int64_t m = 0;
    for (int64_t n = 0; n < rows; ++n) {
      const T r = static_cast<T>(resp[k * ld + n]);
      if (r == T(0)) continue;
      for (int64_t d = 0; d < D; ++d) {
        const T v = xt[n * ldx + d] - mu[d];
        xg[m * D + d] = v;
        xr[m * D + d] = r * v;
        ct[d] += r * v;
      }
      ++m;
    }
    if (m == 0) continue;
    for (int64_t d = 0; d < D; ++d) csum[k * D + d] += ct[d];
    at::mm_out(s.s, s.xr.narrow(0, 0, m).t(), s.xg.narrow(0, 0, m));
    add_to(sxx + k * D * D, s.s);
  }
}

// full, after a chunk's tiles: sx += c + n mu and sxx += mu c^T + c mu^T + n mu mu^T (float64), from
// the chunk's csum = sum r (x - mu) [K, D] and its nk increment n [K].
template <typename T>
void finish_full_moments(const Plan<T>& plan, const double* csum, const double* dnk, double* sx, double* sxx) {
  const int64_t K = plan.K, D = plan.D;
  for (int64_t k = 0; k < K; ++k) {
    const T* mu = plan.full_means.template data_ptr<T>() + k * D;
    const double* c = csum + k * D;
    double* o = sxx + k * D * D;
    for (int64_t i = 0; i < D; ++i) {
      const double mi = mu[i], ci = c[i], nmi = dnk[k] * mi;
      for (int64_t j = 0; j < D; ++j) o[i * D + j] += mi * c[j] + (ci + nmi) * mu[j];
      sx[k * D + i] += ci + nmi;
    }
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
  const CovType cov = plan.cov();
  // Pruned plans hold sparse moments over pairs of tiles: diag K = 100 on the MNIST pixels mid-fit,
  // the op 0.91-0.95x and the whole fit 0.97x (AMD Zen 3, in-process A/B); 4 tiles: 0.95-0.98x
  // mid-fit but 1.09-1.11x at the start and spherical; a whole chunk: 1.16x (rows re-read from DRAM).
  constexpr int64_t kGroup = 2;
  const bool defer = !plan.vec_order.empty();
  s.pend_k.clear();
  s.pend_idx.clear();
  s.pend_val.clear();
  const bool full = cov == CovType::kFull;
  std::vector<double> nk0(nk, nk + (full ? K : 0)), csum(full ? K * D : 0);  // finish_full_moments'
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t n0 = t * tile, rows = std::min(tile, N - n0);
    const at::Tensor x_tile = plan.gemm_form() ? x.narrow(0, n0, rows) : at::Tensor();  // a view costs ~1 us
    const T* swt = sw ? sw + n0 : nullptr;
    int64_t lds = 0;
    const T* xs = tile_rows(plan, xp, ldx, N, n0, rows, s, &lds);
    FusedSums fused = fused_sums(plan, s, sx, sxx);
    int64_t nnz = -1;
    if (!tile_fused(plan, xs, lds, rows, swt, s, nk, &fused, loglik, &nnz)) {
      fused.nnz = &nnz;  // the block softmax counts them; the row-at-a-time one leaves -1
      if (plan.vec_order.empty()) {
        tile_maha(plan, x_tile, xs, lds, rows, s);
      } else {
        tile_maha_pruned(plan, xs, lds, rows, s);
      }
      *loglik += tile_responsibilities(plan, swt, rows, s, nk, &fused);
    }
    double* dsxx = cov == CovType::kDiag ? sxx : nullptr;
    if (!full && !(defer && xs == xp + n0 * ldx && !fused.done && defer_moments(plan, n0, rows, s)))
      tile_moments(plan, xs, lds, rows, s, sx, dsxx, fused.done ? fused.m : 0, nnz);
    if (defer && ((t - t0 + 1) % kGroup == 0 || t + 1 == t1)) flush_moments(plan, xp, ldx, s, sx, dsxx);
    if (cov == CovType::kSpherical && !(fused.done && fused.norms))
      tile_norm_moments(plan, xp + n0 * ldx, ldx, rows, s, sxx);
    if (plan.gemm_form()) tile_second_moments(plan, x_tile, swt, rows, s, csum.data(), sxx);
  }
  if (full) {
    for (int64_t k = 0; k < K; ++k) nk0[k] = nk[k] - nk0[k];
    finish_full_moments(plan, csum.data(), nk0.data(), sx, sxx);
  }
}

template <typename T>
void finish_centred_sxx(const Plan<T>& plan, double* stats) {
  if (!plan.dot_form()) return;
  const int64_t K = plan.K, D = plan.D;
  const T* c = plan.centre.template data_ptr<T>();
  const double* nk = stats;
  const double* sx = nk + K;
  double* sxx = stats + K + K * D;
  double cc = 0.0;
  for (int64_t d = 0; d < D; ++d) cc += static_cast<double>(c[d]) * c[d];
  std::vector<double> dot(K, 0.0);  // each in order along d, side by side (Plan's sums)
  for (int64_t d = 0; d < D; ++d)
    for (int64_t k = 0; k < K; ++k) dot[k] += static_cast<double>(c[d]) * sx[k * D + d];
  for (int64_t k = 0; k < K; ++k) sxx[k] += 2.0 * dot[k] - nk[k] * cc;
}

#define LGM_TILE_INSTANTIATE(T)                                                                                      \
  template const T* tile_rows<T>(const Plan<T>&, const T*, int64_t, int64_t, int64_t, int64_t, Scratch<T>&, int64_t*); \
  template void tile_maha<T>(const Plan<T>&, const at::Tensor&, const T*, int64_t, int64_t, Scratch<T>&);            \
  template void chunk_stats<T>(const Plan<T>&, const at::Tensor&, const T*, int64_t, int64_t, Scratch<T>&, double*); \
  template void finish_centred_sxx<T>(const Plan<T>&, double*);
LGM_TILE_INSTANTIATE(float)
LGM_TILE_INSTANTIATE(double)
#undef LGM_TILE_INSTANTIATE

}  // namespace gmm_cpu
}  // namespace lgm
