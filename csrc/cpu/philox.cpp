// CPU kernel of philox_normal: out[i] = stream(seed)[offset + i], four normals per Philox block.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "common/philox.h"
#include "cpu/philox_batch.h"

namespace lgm {

// TORCH_CHECK that values offset .. offset + numel - 1 lie in the stream [0, 2^62) (ops/philox.py).
void check_stream_range(const char* op, int64_t offset, int64_t numel) {
  constexpr int64_t kStreamLength = int64_t{1} << 62;
  TORCH_CHECK(offset >= 0 && offset <= kStreamLength - numel, op, ": offset must be in [0, 2**62 - numel] (numel = ",
              numel, "), got ", offset);
}

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
  at::Tensor out = at::empty(C10_AS_INTARRAYREF_SLOW(size), so.options().dtype(at::kFloat));
  const int64_t n = out.numel();
  check_stream_range("philox_normal", so.data_ptr<int64_t>()[1], n);
  const uint64_t offset = static_cast<uint64_t>(so.data_ptr<int64_t>()[1]);
  if (n == 0) return out;
  float* data = out.data_ptr<float>();
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    float* dst = data + begin;
    for_philox_normals(seed, offset + static_cast<uint64_t>(begin), end - begin,
                       [dst](int64_t i, float value) { dst[i] = value; });
  });
  return out;
}

}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CPU, m) {
  m.impl("philox_normal", &lgm::philox_normal_cpu);
}
