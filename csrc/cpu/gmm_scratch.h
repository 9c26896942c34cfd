// Per-thread scratch of the CPU GMM kernels (gmm_kernels.h): the tiles' buffers, sized by a Plan,
// and the calling thread's kept copy.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "cpu/gmm_kernels.h"

namespace lgm {
namespace gmm_cpu {

// Scratch owned by one thread.
template <typename T>
struct Scratch {
  at::Tensor maha, xpad, ypad, y, xr, xg, s;  // [K, tile], [tile, ldt] x2, [tile, D] x3, [D, D]
  std::vector<T> resp;                   // [K, tile] responsibilities, in x's dtype
  std::vector<double> joint, rd, rowbuf;  // [K] x2, [3 tile + 8 K]
  std::vector<double> norms;              // [tile] ||x_n||^2 of the tile (spherical; dot_form: ||y_n||^2)
  std::vector<float> work;                // [K, tile]
  std::vector<T> xtail;                   // [Plan::tail_d, tile] the tile's last features, transposed
  std::vector<int64_t> idx;
  std::vector<T> val;
  // Pruned distances (gmm_prune.cpp): dropped flags [K, tile]; per row, its partial components
  // [tile, K] and their count, the best-looking component, its best full joint; per component, the
  // rows of a pass [K, tile] and their count; float32 bounds and log_const.
  std::vector<uint8_t> dropped;
  std::vector<int32_t> alive, alive_n, arg, comp_rows, comp_n;
  std::vector<double> best;
  std::vector<float> topf, lcf;
  std::vector<T> xfirst;  // [tile, Plan::first_ld] the tile's first-stage features, packed
  // Sparse moments held over tiles (gmm_tile.cpp defer_moments): each (component, row of x, r) and,
  // at the flush, the same sorted by component with the components' offsets [K + 1].
  std::vector<int32_t> pend_k;
  std::vector<int64_t> pend_idx, sort_idx, pend_off;
  std::vector<T> pend_val, sort_val;

  Scratch(const Plan<T>& plan, const at::TensorOptions& opts) {
    const int64_t t = plan.tile();
    maha = at::empty({plan.K, t}, opts);
    xpad = at::zeros({t, plan.ldt}, opts);
    if (plan.gemm_form()) {
      ypad = at::zeros({t, plan.ldt}, opts);
      y = at::empty({t, plan.D}, opts);
      xr = at::empty({t, plan.D}, opts);
      xg = at::empty({t, plan.D}, opts);
      s = at::empty({plan.D, plan.D}, opts);
    }
    resp.resize(t * plan.K);
    joint.resize(plan.K);
    rd.resize(plan.K);
    rowbuf.resize(3 * t + 8 * plan.K);
    if (plan.cov() == CovType::kSpherical) norms.resize(t);
    work.resize(t * plan.K);
    xtail.resize(plan.tail_d() * t);
    idx.resize(t);
    val.resize(t);
    if (!plan.vec_order.empty()) {
      dropped.resize(plan.K * t);
      alive.resize(t * plan.K);
      alive_n.resize(t);
      arg.resize(t);
      comp_rows.resize(plan.K * t);
      comp_n.resize(plan.K);
      best.resize(t);
      topf.resize(t);
      lcf.resize(plan.K);
      xfirst.resize(t * plan.first_ld);
    }
  }
};

// The calling thread's Scratch for plan. Kept between calls (at::parallel_for's threads live on)
// while the shapes stay the same and its tiles are small (K * tile up to kKeptScratch); else a fresh
// one in own. A fresh one allocates and zeroes a dozen arrays per thread per call (about 5 us of a
// 16-row call's 55). Nothing read from a Scratch outlives its tile but xpad's zeros past D, which the
// key's D and ldt keep valid.
constexpr int64_t kKeptScratch = int64_t{1} << 18;
template <typename T>
Scratch<T>& thread_scratch(const Plan<T>& plan, const at::TensorOptions& opts, std::optional<Scratch<T>>& own) {
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int, bool, int64_t>;
  if (plan.K * plan.tile() > kKeptScratch) return own.emplace(plan, opts);
  thread_local std::unique_ptr<Scratch<T>> kept;
  thread_local Key key{};
  const Key want{plan.K, plan.D, plan.ldt, plan.tile(), plan.tail_d(), static_cast<int>(plan.cov()),
                 !plan.vec_order.empty(), plan.first_ld};
  if (!kept || key != want) {
    kept.reset();
    kept = std::make_unique<Scratch<T>>(plan, opts);
    key = want;
  }
  return *kept;
}

}  // namespace gmm_cpu
}  // namespace lgm
