// The SIMD kernels of the CPU GMM E-step with 16-byte vectors and the build's own target flags:
// the path for any host (SSE, NEON, ...) and for a forced LGM_GMM_CPU_ISA=generic.
#include "cpu/gmm_kernels.h"

#define LGM_SIMD_BYTES 16
#define LGM_SIMD_NS generic
#include "cpu/gmm_simd.h"
#include "cpu/gmm_simd_transpose.h"
#include "cpu/gmm_simd_rows.h"
#include "cpu/gmm_simd_prune.h"
#include "cpu/gmm_simd_softmax.h"
#include "cpu/gmm_simd_fused.h"
#include "cpu/gmm_simd_em.h"
