// Run-time choice of the CPU GMM kernels' instruction set (gmm_kernels.h): the widest the host
// runs, or the one named by LGM_GMM_CPU_ISA (tests run every path the host can execute; the
// benchmark measures the AVX2 path on an AVX-512 host). A path the host cannot run is an error,
// never a silent fallback.
#include <torch/library.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include "cpu/gmm_kernels.h"

namespace lgm {
namespace gmm_cpu {

std::atomic<int64_t> fused_tile_count{0};

namespace {

bool host_supports(Isa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (isa) {
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kGeneric: return true;
  }
  return false;
#else
  return isa == Isa::kGeneric;
#endif
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    case Isa::kGeneric: return "generic";
  }
  return "?";
}

Isa resolve_isa(const std::string& request_in) {
  std::string request = request_in;
  if (request.empty()) {
    const char* env = std::getenv("LGM_GMM_CPU_ISA");
    request = env && *env ? env : "auto";
  }
  if (request == "auto") {
    for (Isa isa : {Isa::kAvx512, Isa::kAvx2}) {
      if (host_supports(isa)) return isa;
    }
    return Isa::kGeneric;
  }
  for (Isa isa : {Isa::kAvx512, Isa::kAvx2, Isa::kGeneric}) {
    if (request == isa_name(isa)) {
      TORCH_CHECK_VALUE(host_supports(isa), "gmm: this CPU cannot run the ", request,
                        " kernels (LGM_GMM_CPU_ISA or cpu_isa='", request, "')");
      return isa;
    }
  }
  TORCH_CHECK_VALUE(false, "gmm: CPU instruction set must be one of 'auto', 'avx512', 'avx2', 'generic', got '",
                    request, "' (LGM_GMM_CPU_ISA)");
  return Isa::kGeneric;  // unreachable
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = [] {
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long b = sysconf(_SC_LEVEL2_CACHE_SIZE);  // glibc: from cpuid; 0 or -1 where unknown
    return b > 0 ? static_cast<int64_t>(b) : int64_t{0};
#else
    return int64_t{0};
#endif
  }();
  return bytes;
}

template <typename T>
const SimdKernels<T>& simd_kernels(Isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(__i386__)
    case Isa::kAvx512: return avx512::kernels<T>();
    case Isa::kAvx2: return avx2::kernels<T>();
#endif
    default: return generic::kernels<T>();
  }
}

template const SimdKernels<float>& simd_kernels<float>(Isa);
template const SimdKernels<double>& simd_kernels<double>(Isa);

namespace {

// The op gmm_cpu_isa: the instruction set a CPU call would use for `isa` ("" = LGM_GMM_CPU_ISA).
std::string gmm_cpu_isa(c10::string_view isa) { return isa_name(resolve_isa(std::string(isa.data(), isa.size()))); }

int64_t fused_tiles() { return fused_tile_count.load(); }

}  // namespace
}  // namespace gmm_cpu
}  // namespace lgm

TORCH_LIBRARY_IMPL(lightning_genmodels, CompositeExplicitAutograd, m) {
  m.impl("gmm_cpu_isa", &lgm::gmm_cpu::gmm_cpu_isa);
  m.impl("_gmm_cpu_fused_tiles", &lgm::gmm_cpu::fused_tiles);
}
