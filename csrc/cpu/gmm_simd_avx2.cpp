// The SIMD kernels of the CPU GMM E-step compiled for avx2 (32-byte vectors), whatever the
// build's -march: chosen at run time only where the host supports it (gmm_isa.cpp).
#include "cpu/gmm_kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,no-avx512f")
#endif

#define LGM_SIMD_BYTES 32
#define LGM_SIMD_NS avx2
#include "cpu/gmm_simd.h"
#include "cpu/gmm_simd_transpose.h"
#include "cpu/gmm_simd_rows.h"
#include "cpu/gmm_simd_prune.h"
#include "cpu/gmm_simd_softmax.h"
#include "cpu/gmm_simd_fused.h"
#include "cpu/gmm_simd_em.h"

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
