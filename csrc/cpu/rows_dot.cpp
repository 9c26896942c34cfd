// rows_dot: x [N, D] times c [C, D] transposed, float64 [N, C], for few centres C (the k-means++
// candidates, gmm/kmeans.py): one read of x with C dot products per row, where a GEMM library's
// skinny-matrix path ran at 10 GFLOP/s per core (MKL on an AMD EPYC: 31 ms for N = 60000, D = 784,
// C = 7 on two cores, 8 ms to read x).
// seeding_distances: the same dot products turned into squared distances and the candidates'
// potentials in the same pass; sq_norms: the rows' squared norms that the distances start from.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "cpu/gmm_kernels.h"

namespace lgm {
namespace {

void check_rows(const char* op, const at::Tensor& x_in, const at::Tensor& c_in) {
  TORCH_CHECK_VALUE(x_in.dim() == 2 && c_in.dim() == 2, op, ": x [N, D] and c [C, D] must be 2-D, got ",
                    x_in.sizes(), " and ", c_in.sizes());
  TORCH_CHECK_VALUE(x_in.size(1) == c_in.size(1), op, ": x has ", x_in.size(1), " features, c has ", c_in.size(1));
  TORCH_CHECK_VALUE(x_in.scalar_type() == c_in.scalar_type(), op, ": x is ", x_in.scalar_type(), ", c is ",
                    c_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble, op,
                    ": x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.device().is_cpu() && c_in.device().is_cpu(), op, ": x and c must be on the CPU");
}

at::Tensor rows_dot_cpu(const at::Tensor& x_in, const at::Tensor& c_in) {
  check_rows("rows_dot", x_in, c_in);
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous(), c = c_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1), C = c.size(0);
  at::Tensor out = at::empty({N, C}, x.options().dtype(at::kDouble));
  if (N == 0 || C == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rows_dot_cpu", [&] {
    const auto& k = gmm_cpu::simd_kernels<scalar_t>(gmm_cpu::resolve_isa(""));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* cp = c.data_ptr<scalar_t>();
    double* op = out.data_ptr<double>();
    const int64_t ldx = x.stride(0);
    at::parallel_for(0, N, 256, [&](int64_t n0, int64_t n1) {
      k.rows_dot(xp + n0 * ldx, ldx, n1 - n0, D, cp, C, op + n0 * C);
    });
  });
  return out;
}

// ||x_n||^2 [N] in float64 from float64 squares (a reduction in ATen took 0.35 s for the MNIST
// pixels, 40x the read of x).
at::Tensor sq_norms_cpu(const at::Tensor& x_in) {
  TORCH_CHECK_VALUE(x_in.dim() == 2, "sq_norms: x must be 2-D [N, D], got ", x_in.sizes());
  TORCH_CHECK_VALUE(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kDouble,
                    "sq_norms: x must be float32 or float64, got ", x_in.scalar_type());
  TORCH_CHECK_VALUE(x_in.device().is_cpu(), "sq_norms: x must be on the CPU");
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous();
  const int64_t N = x.size(0), D = x.size(1);
  at::Tensor out = at::empty({N}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sq_norms_cpu", [&] {
    const auto& k = gmm_cpu::simd_kernels<scalar_t>(gmm_cpu::resolve_isa(""));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    double* op = out.data_ptr<double>();
    const int64_t ldx = x.stride(0);
    at::parallel_for(0, N, 256, [&](int64_t n0, int64_t n1) { k.sq_norms(xp + n0 * ldx, ldx, n1 - n0, D, op + n0); });
  });
  return out;
}

// dist [N, C] = max(0, (c_sq_j - 2 x_n . c_j) + x_sq_n) and potential [C] = sum_n min(closest_n,
// dist_nj), in the reference's (rows_dot.py) order of operations, x . c from float64 products
// (rows_dot_wide); the sums by blocks of 256 rows, then over the blocks in order, so the same for
// any thread count.
std::tuple<at::Tensor, at::Tensor> seeding_distances_cpu(const at::Tensor& x_in, const at::Tensor& c_in,
                                                         const at::Tensor& c_sq_in, const at::Tensor& x_sq_in,
                                                         const at::Tensor& closest_in) {
  check_rows("seeding_distances", x_in, c_in);
  const int64_t N = x_in.size(0), D = x_in.size(1), C = c_in.size(0);
  for (const auto* t : {&c_sq_in, &x_sq_in, &closest_in}) {
    TORCH_CHECK_VALUE(t->scalar_type() == at::kDouble && t->dim() == 1 && t->device().is_cpu(),
                      "seeding_distances: c_sq, x_sq and closest must be 1-D float64 CPU tensors, got ",
                      t->scalar_type(), " ", t->sizes());
  }
  TORCH_CHECK_VALUE(c_sq_in.size(0) == C && x_sq_in.size(0) == N && closest_in.size(0) == N,
                    "seeding_distances: c_sq [C], x_sq [N] and closest [N] must match x [N, D] and c [C, D], got ",
                    c_sq_in.sizes(), ", ", x_sq_in.sizes(), ", ", closest_in.sizes(), " for N = ", N, ", C = ", C);
  const at::Tensor x = x_in.stride(1) == 1 ? x_in : x_in.contiguous(), c = c_in.to(at::kDouble).contiguous();
  const at::Tensor c_sq = c_sq_in.contiguous(), x_sq = x_sq_in.contiguous(), closest = closest_in.contiguous();
  at::Tensor dist = at::empty({N, C}, x.options().dtype(at::kDouble));
  at::Tensor potential = at::zeros({C}, x.options().dtype(at::kDouble));
  if (N == 0 || C == 0) return {dist, potential};
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks * C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "seeding_distances_cpu", [&] {
    const auto& k = gmm_cpu::simd_kernels<scalar_t>(gmm_cpu::resolve_isa(""));
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const double* cp = c.data_ptr<double>();
    const double* csq = c_sq.data_ptr<double>();
    const double* xsq = x_sq.data_ptr<double>();
    const double* near = closest.data_ptr<double>();
    double* dp = dist.data_ptr<double>();
    const int64_t ldx = x.stride(0);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * kBlock, n1 = std::min(N, n0 + kBlock);
        k.rows_dot_wide(xp + n0 * ldx, ldx, n1 - n0, D, cp, C, dp + n0 * C);
        double* pb = partial.data() + b * C;
        for (int64_t n = n0; n < n1; ++n) {
          double* dn = dp + n * C;
          for (int64_t j = 0; j < C; ++j) {
            double v = (csq[j] - 2.0 * dn[j]) + xsq[n];
            v = v < 0.0 ? 0.0 : v;  // NaN stays NaN, as clamp_min
            dn[j] = v;
            pb[j] += near[n] < v || near[n] != near[n] ? near[n] : v;  // torch.minimum, NaN too
          }
        }
      }
    });
  });
  double* pot = potential.data_ptr<double>();
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t j = 0; j < C; ++j) pot[j] += partial[b * C + j];
  return {dist, potential};
}

}  // namespace
}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CPU, m) {
  m.impl("rows_dot", &lgm::rows_dot_cpu);
  m.impl("seeding_distances", &lgm::seeding_distances_cpu);
  m.impl("sq_norms", &lgm::sq_norms_cpu);
}
