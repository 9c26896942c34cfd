// CPU kernel of philox_normal: out[i] = stream(seed)[offset + i], four normals per Philox block.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "common/philox.h"

namespace lgm {

void check_seed_offset(const at::Tensor& seed_offset, c10::SymIntArrayRef size) {
  TORCH_CHECK(seed_offset.scalar_type() == at::kLong && seed_offset.numel() == 2,
              "philox_normal: seed_offset must be an int64 tensor of 2 elements (seed, offset), got ",
              seed_offset.scalar_type(), " with ", seed_offset.numel(), " elements");
  for (const auto& s : size) {
    TORCH_CHECK(s >= 0, "philox_normal: size must be non-negative, got ", size);
  }
}

at::Tensor philox_normal_cpu(const at::Tensor& seed_offset, c10::SymIntArrayRef size) {
  check_seed_offset(seed_offset, size);
  TORCH_CHECK(seed_offset.device().is_cpu(), "philox_normal: seed_offset must be on the CPU");
  const auto so = seed_offset.contiguous();
  const uint64_t seed = static_cast<uint64_t>(so.data_ptr<int64_t>()[0]);
  const uint64_t offset = static_cast<uint64_t>(so.data_ptr<int64_t>()[1]);
  at::Tensor out = at::empty(C10_AS_INTARRAYREF_SLOW(size), so.options().dtype(at::kFloat));
  const int64_t n = out.numel();
  if (n == 0) return out;
  float* data = out.data_ptr<float>();
  // Blocks of the stream touched: [first, last]; the ends may be partial.
  const uint64_t first = offset / 4;
  const uint64_t last = (offset + n - 1) / 4;
  at::parallel_for(0, static_cast<int64_t>(last - first + 1), 4096, [&](int64_t begin, int64_t end) {
    float values[4];
    for (int64_t b = begin; b < end; ++b) {
      const uint64_t block = first + b;
      philox_normal4(seed, block, values);
      for (int lane = 0; lane < 4; ++lane) {
        const int64_t i = static_cast<int64_t>(block * 4 + lane - offset);
        if (block * 4 + lane >= offset && i < n) data[i] = values[lane];
      }
    }
  });
  return out;
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CPU, m) {
  m.impl("philox_normal", &lgm::philox_normal_cpu);
}
