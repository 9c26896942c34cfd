// Pruned distances for the float32 E-step (gmm_kernels.h tile_maha_pruned).
//
// Every term (x_d p_kd - nu_kd)^2 (spherical: p_k^2 (x_d - mu_kd)^2) is >= 0, so a partial sum over
// some d bounds the distance from below and the joint log-probability j_kn = log_const_k - maha_kn / 2
// from above. The vectors of d are visited most discriminating first (the spread of nu_kd over
// components), in stages; after each stage a row's best-looking component gets its full distance,
// and every component whose bound lies more than 88 below that row's best full joint is dropped:
// its float32 responsibility exp(j - max_k j) is exactly 0 (softmax_f32 flushes below e^-87), so
// it needs no more terms.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <type_traits>

#include "cpu/gmm_kernels.h"
#include "cpu/gmm_scratch.h"

namespace lgm {
namespace gmm_cpu {

namespace {

constexpr int64_t kPruneMinK = 32;     // fewer: the bookkeeping costs more than it saves (K = 10: 0.8x)
constexpr int64_t kStage = 256;        // features per stage
constexpr int64_t kPruneMinD = 384;    // fewer features: one stage would do all the work
constexpr double kDropGap = 88.0;      // e^-87 flushes to 0; one more for rounding
constexpr double kBoundSlack = 1e-4;   // relative rounding of float32 partial sums, over-allowed
constexpr int64_t kPackAhead = 4;      // rows prefetched ahead of the first stage's packing (2: 0.91x, 8: 0.92x, 4: 0.86x)

bool pruning_disabled() {
  const char* env = std::getenv("LGM_GMM_PRUNE");
  return env != nullptr && std::strcmp(env, "0") == 0;
}

// Per row n, the components k (ascending) neither dropped nor arg[n]: alive[n K ..], alive_n[n].
// Most pairs are dropped, so 8 flags are tested as one word and only the kept pairs visited: the
// flag-by-flag loop took a quarter of tile_maha_pruned (perf, K = 100 on the MNIST pixels); without
// it the op 0.965-0.987x mid-fit, diag and spherical (AMD Zen 3, in-process A/B, three runs).
void list_alive(const uint8_t* dropped, const int32_t* arg, int64_t rows, int64_t K, int64_t ld, int32_t* alive,
                int32_t* alive_n) {
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "row n0 + i is byte i of the word");
  constexpr uint64_t kOnes = 0x0101010101010101ULL;  // flags are 0 or 1
  std::fill(alive_n, alive_n + rows, 0);
  for (int64_t k = 0; k < K; ++k) {
    const uint8_t* dk = dropped + k * ld;
    auto keep = [&](int64_t n) {
      if (arg[n] != k) alive[n * K + alive_n[n]++] = static_cast<int32_t>(k);
    };
    int64_t n0 = 0;
    for (; n0 + 8 <= rows; n0 += 8) {
      uint64_t word;
      std::memcpy(&word, dk + n0, 8);
      for (uint64_t kept = word ^ kOnes; kept; kept &= kept - 1) keep(n0 + __builtin_ctzll(kept) / 8);
    }
    for (int64_t n = n0; n < rows; ++n) {
      if (!dk[n]) keep(n);
    }
  }
}

}  // namespace

template <typename T>
void plan_pruning(Plan<T>& plan) {
  plan.vec_order.clear();
  plan.stage_ends.clear();
  if (!std::is_same_v<T, float> || (plan.cov() != CovType::kDiag && plan.cov() != CovType::kSpherical) ||
      plan.D < kPruneMinD || plan.K < kPruneMinK || pruning_disabled()) {
    return;
  }
  // Spherical with 64-byte vectors prunes too since the pruned kernels' bookkeeping got cheaper
  // (Xeon 207, MNIST pixels mid-fit: op 0.85x at K = 100, 0.94x at K = 50, 0.98x at K = 32; at
  // the initial parameters 1.09-1.16x; whole 200-iteration fits at K = 100 0.81-0.85x).
  const int64_t W = plan.simd.bytes / static_cast<int64_t>(sizeof(T)), K = plan.K, D = plan.D;
  const int64_t nvec = (D + W - 1) / W;
  const T* nu = plan.tab.nu.template data_ptr<T>();
  std::vector<double> score(nvec, 0.0);
  for (int64_t d = 0; d < D; ++d) {
    double mean = 0.0, sq = 0.0;
    for (int64_t k = 0; k < K; ++k) mean += nu[k * plan.ldt + d];
    mean /= static_cast<double>(K);
    for (int64_t k = 0; k < K; ++k) {
      const double c = nu[k * plan.ldt + d] - mean;
      sq += c * c;
    }
    score[d / W] += sq == sq ? sq : 0.0;  // NaN means: any order will do, but a valid one
  }
  std::vector<int32_t> order(nvec);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return score[a] > score[b]; });
  for (int32_t v : order) plan.vec_order.push_back(static_cast<int32_t>(v * W));
  // Stages of 256 features (tuned on MNIST pixels, K = 10 .. 100: fewer stages cost less bookkeeping
  // than they save in distances).
  for (int64_t f = kStage; f / W < nvec; f += kStage) plan.stage_ends.push_back(f / W);
  plan.stage_ends.push_back(nvec);
  if (!plan.simd.maha_vecs) return;
  // Packed first-stage tables (Plan::first_ld): zeros past D come along from the padded tables.
  const int64_t n1 = plan.stage_ends.front(), ld = n1 * W;
  const T* src_nu = plan.cov() == CovType::kSpherical ? plan.mu.template data_ptr<T>() : nu;
  const T* src_p = plan.cov() == CovType::kDiag ? plan.tab.p.template data_ptr<T>() : nullptr;
  plan.first_ld = ld;
  plan.first_nu.assign(K * ld, T(0));
  plan.first_p.assign(src_p ? K * ld : 0, T(0));
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t c = 0; c < n1; ++c) {
      const int64_t from = k * plan.ldt + plan.vec_order[c], to = k * ld + c * W;
      std::copy(src_nu + from, src_nu + from + W, plan.first_nu.data() + to);
      if (src_p) std::copy(src_p + from, src_p + from + W, plan.first_p.data() + to);
    }
  }
  plan.first_order.resize(n1);
  for (int64_t c = 0; c < n1; ++c) plan.first_order[c] = static_cast<int32_t>(c * W);
}

template <typename T>
void tile_maha_pruned(const Plan<T>& plan, const T* xs, int64_t lds, int64_t rows, Scratch<T>& s) {
  const int64_t K = plan.K, D = plan.D, ld = plan.tile(), ldt = plan.ldt;
  const int64_t nvec = static_cast<int64_t>(plan.vec_order.size());
  // spherical: the means and c = p_k (Plan::scale), a subtraction per term instead of an FMA
  const bool sph = plan.cov() == CovType::kSpherical;
  const T* p = sph ? nullptr : plan.tab.p.template data_ptr<T>();
  const T* nu = sph ? plan.mu.template data_ptr<T>() : plan.tab.nu.template data_ptr<T>();
  const T* scale = sph ? plan.scale.template data_ptr<T>() : nullptr;
  const int32_t* order = plan.vec_order.data();
  const double* lc = plan.log_const.data();
  T* maha = s.maha.template data_ptr<T>();
  int32_t* alive = s.alive.data();  // row n: alive[n K, n K + alive_n[n]) its partial components
  int32_t* alive_n = s.alive_n.data();
  int32_t* arg = s.arg.data();
  int32_t* comp_rows = s.comp_rows.data();
  int32_t* comp_n = s.comp_n.data();
  double* best = s.best.data();
  // The vectors [v0, v1) of `order` for the pairs listed in comp_rows.
  auto pass = [&](int64_t v0, int64_t v1) {
    for (int64_t k = 0; k < K; ++k) {
      if (comp_n[k] > 0)
        plan.simd.maha_gather(xs, lds, comp_rows + k * ld, comp_n[k], D, p ? p + k * ldt : nullptr, nu + k * ldt,
                              order + v0, v1 - v0, maha + k * ld, scale ? scale[k] : T(1));
    }
  };
  // Finishes the pairs (arg[n], n) listed in comp_rows; best[n] takes the larger full joint.
  auto finish = [&](int64_t from) {
    pass(from, nvec);
    for (int64_t n = 0; n < rows; ++n) {
      if (arg[n] >= 0) best[n] = std::max(best[n], lc[arg[n]] - 0.5 * static_cast<double>(maha[arg[n] * ld + n]));
    }
  };
  // The joint log-probability may lie below floor(n) only for pairs whose responsibility is 0.
  auto floor_of = [&](int64_t n) {
    return best[n] > -INFINITY ? best[n] - kDropGap - kBoundSlack * std::fabs(best[n]) : -INFINITY;
  };

  // Stage 1, every pair: float32 passes over [K, rows] that vectorise.
  const int64_t end1 = plan.stage_ends.front();
  // The tile's first-stage features packed as the tables (Plan::first_ld), the rows ahead
  // prefetched: with 32-byte vectors the op 0.87x at diag K = 100 on the MNIST pixels, 0.89x
  // spherical (AMD Zen 3, in-process A/B; packing alone 0.97x). Unpacked, the stage's scattered
  // vectors (half a line each) of the tile and tables outgrew a 512 KB L2, and the rows came from
  // DRAM with nothing prefetched.
  if (plan.first_ld > 0) {
    const int64_t W = plan.simd.bytes / static_cast<int64_t>(sizeof(T)), fl = plan.first_ld;
    T* xf = s.xfirst.data();
    for (int64_t n = 0; n < rows; ++n) {
      if (n + kPackAhead < rows) {  // every line of the row: the later stages read the rest
        const char* next = reinterpret_cast<const char*>(xs + (n + kPackAhead) * lds);
        for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(T)); b += 64) __builtin_prefetch(next + b);
      }
      for (int64_t c = 0; c < end1; ++c) {
        const T* from = xs + n * lds + order[c];
        T* to = xf + n * fl + c * W;
        if (order[c] + W <= D) {
          std::memcpy(to, from, 32);  // one vector (maha_vecs: 32-byte vectors only)
        } else {
          const int64_t m = D - order[c];  // lanes past D: 0
          std::copy(from, from + m, to);
          std::fill(to + m, to + W, T(0));
        }
      }
    }
    plan.simd.maha_vecs(xf, fl, rows, fl, p ? plan.first_p.data() : nullptr, plan.first_nu.data(), fl, K,
                        plan.first_order.data(), end1, maha, ld, scale);
  } else {
    for (int64_t k = 0; k < K; ++k) {
      std::fill(maha + k * ld, maha + k * ld + rows, T(0));
      std::iota(comp_rows + k * ld, comp_rows + k * ld + rows, 0);
      comp_n[k] = static_cast<int32_t>(rows);
    }
    pass(0, end1);
  }
  if (end1 == nvec) return;
  float* topf = s.topf.data();
  float* lcf = s.lcf.data();
  for (int64_t k = 0; k < K; ++k) lcf[k] = static_cast<float>(lc[k]);
  std::fill(topf, topf + rows, -INFINITY);
  std::fill(arg, arg + rows, -1);
  for (int64_t k = 0; k < K; ++k) {  // the best-looking pair of each row
    const T* mk = maha + k * ld;
    for (int64_t n = 0; n < rows; ++n) {
      const float bound = lcf[k] - 0.5f * static_cast<float>(mk[n]);
      const bool up = bound > topf[n];
      topf[n] = up ? bound : topf[n];
      arg[n] = up ? static_cast<int32_t>(k) : arg[n];
    }
  }
  std::fill(comp_n, comp_n + K, 0);
  for (int64_t n = 0; n < rows; ++n) {
    best[n] = -INFINITY;
    if (arg[n] >= 0) comp_rows[arg[n] * ld + comp_n[arg[n]]++] = static_cast<int32_t>(n);
  }
  finish(end1);
  for (int64_t n = 0; n < rows; ++n) topf[n] = static_cast<float>(floor_of(n));
  uint8_t* dropped = s.dropped.data();
  for (int64_t k = 0; k < K; ++k) {  // a finished pair is never dropped: its bound is the row's best
    T* mk = maha + k * ld;
    uint8_t* dk = dropped + k * ld;
    const float c = lcf[k], h = 0.5f * static_cast<float>(1.0 - kBoundSlack);
    for (int64_t n = 0; n < rows; ++n) {
      const bool drop = c - h * static_cast<float>(mk[n]) < topf[n];
      dk[n] = drop;
      mk[n] = drop ? static_cast<T>(INFINITY) : mk[n];
    }
  }
  list_alive(dropped, arg, rows, K, ld, alive, alive_n);

  // Later stages, over the short per-row lists.
  int64_t done = end1;
  for (std::size_t st = 1; st < plan.stage_ends.size(); ++st) {
    const int64_t end = plan.stage_ends[st];
    std::fill(comp_n, comp_n + K, 0);
    for (int64_t n = 0; n < rows; ++n) {
      for (int32_t i = 0; i < alive_n[n]; ++i) {
        const int32_t k = alive[n * K + i];
        comp_rows[k * ld + comp_n[k]++] = static_cast<int32_t>(n);
      }
    }
    pass(done, end);
    done = end;
    if (end == nvec) break;
    std::fill(comp_n, comp_n + K, 0);
    for (int64_t n = 0; n < rows; ++n) {  // the partial pair with the highest bound, if above the best
      int32_t* an = alive + n * K;
      int32_t at = -1;
      double top = best[n];
      for (int32_t i = 0; i < alive_n[n]; ++i) {
        const double bound = lc[an[i]] - 0.5 * static_cast<double>(maha[an[i] * ld + n]);
        if (bound > top) {
          top = bound;
          at = i;
        }
      }
      arg[n] = at >= 0 ? an[at] : -1;
      if (at >= 0) {
        comp_rows[arg[n] * ld + comp_n[arg[n]]++] = static_cast<int32_t>(n);
        an[at] = an[--alive_n[n]];
      }
    }
    finish(end);
    for (int64_t n = 0; n < rows; ++n) {
      int32_t* an = alive + n * K;
      const double floor = floor_of(n);
      int32_t kept = 0;
      for (int32_t i = 0; i < alive_n[n]; ++i) {
        const int32_t k = an[i];
        if (lc[k] - 0.5 * (1.0 - kBoundSlack) * static_cast<double>(maha[k * ld + n]) < floor) {
          maha[k * ld + n] = static_cast<T>(INFINITY);
        } else {
          an[kept++] = k;
        }
      }
      alive_n[n] = kept;
    }
  }
}

template void plan_pruning<float>(Plan<float>&);
template void plan_pruning<double>(Plan<double>&);
template void tile_maha_pruned<float>(const Plan<float>&, const float*, int64_t, int64_t, Scratch<float>&);
template void tile_maha_pruned<double>(const Plan<double>&, const double*, int64_t, int64_t, Scratch<double>&);

}  // namespace gmm_cpu
}  // namespace lgm
