// The W x W transposes of the rows kernels (gmm_simd_rows.h): a block of W rows of x becomes yT
// [D, W], one vector per feature over the W rows, centred and with the rows' squared norms on the
// way. Not a normal header: gmm_simd_<isa>.cpp includes it once, after gmm_simd.h (same rules).
namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

constexpr int64_t kWF = width<float>();

// One butterfly stage of a W x W transpose: swaps the off-diagonal H x H blocks of each 2H x 2H block.
template <int H, std::size_t... I>
LGM_INLINE VF swap_lo(VF a, VF b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, static_cast<int>((I & H) == 0 ? I : kWF + I - H)...);
}
template <int H, std::size_t... I>
LGM_INLINE VF swap_hi(VF a, VF b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, static_cast<int>((I & H) == 0 ? I + H : kWF + I)...);
}
// Stages H, H/2 .. 1 of the transpose, for its first M outputs only (M a power of two): stage H
// leaves a[0 .. max(M, H)) final for the next stages, M * log2(W) shuffles instead of W log2(W) (a
// row's last M <= W / 2 features: D = 50, AVX-512: 16 of 64).
template <int H, int M = kWF>
LGM_INLINE void transpose(VF (&a)[kWF]) {
  constexpr int P = M > H ? M : H;
  for (int i = 0; i < kWF; ++i) {
    if ((i & H) || i >= P) continue;
    const VF lo = swap_lo<H>(a[i], a[i + H], std::make_index_sequence<kWF>());
    if (i + H < P) a[i + H] = swap_hi<H>(a[i], a[i + H], std::make_index_sequence<kWF>());
    a[i] = lo;
  }
  if constexpr (H > 1) transpose<H / 2, M>(a);
}

// (lo, hi) as one vector: on AVX2 one vinsertf128, which takes hi from memory.
LGM_INLINE VF halves(VH lo, VH hi) {
#if defined(__x86_64__) && LGM_SIMD_BYTES == 32
  return (VF)__builtin_ia32_vinsertf128_ps256(__builtin_ia32_ps256_ps((__v4sf)lo), (__v4sf)hi, 1);
#else
  return concat(lo, hi, std::make_index_sequence<kBytes / 4>());
#endif
}

// The first stage of the transpose (swapping the W/2 x W/2 blocks) done by half-width loads:
// a[i] = features [c0, c0 + W/2) of rows i and i + W/2, a[i + W/2] the next W/2, centred by c. Only
// a[0 .. max(M, W/2)) are needed, as in transpose<W/2, M>. On AVX2 the inserts run on the load
// ports and any ALU, where the stage's shuffles all wait for port 5: the op 0.97-0.98x (spherical
// and diag K = 10, D = 50); with 64-byte vectors no gain (1.01x), so not used there.
template <int M>
LGM_INLINE void load_swapped(const float* x, int64_t ldx, int64_t c0, const float* c, VF (&a)[kWF]) {
  constexpr int H = kWF / 2, P = M > H ? M : H;
  for (int i = 0; i < H; ++i) {
    const float* lo = x + i * ldx + c0;
    a[i] = halves(load<VH>(lo), load<VH>(lo + H * ldx));
    if (i + H < P) a[i + H] = halves(load<VH>(lo + H), load<VH>(lo + H * ldx + H));
  }
  if (c && M == kWF) {
    const VH c_lo = load<VH>(c + c0), c_hi = load<VH>(c + c0 + H);
    const VF lo = halves(c_lo, c_lo), hi = halves(c_hi, c_hi);
    for (int i = 0; i < kWF; ++i) a[i] -= i < H ? lo : hi;
  }
}

// The 8 x 8 transpose after load_swapped (a[i]: features 0-3 of rows i and i + 4, a[i + 4]: features
// 4-7) by unpacks and shufps, one instruction each, for the first M outputs: transpose<2, M>'s last
// stage took a permute and a blend per output. With chunk_out, the op 0.89-0.97x at spherical K = 10,
// D = 50 on the AMD EPYC (AVX2; in-process A/B, three runs), 1.0x at K = 100; the same bits.
#if LGM_SIMD_BYTES == 32
template <int M>
LGM_INLINE void transpose_quads(VF (&a)[kWF]) {
#pragma GCC unroll 2
  for (int g = 0; g < (M > 4 ? 8 : 4); g += 4) {
    const VF u0 = __builtin_shufflevector(a[g], a[g + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    const VF u2 = __builtin_shufflevector(a[g + 2], a[g + 3], 0, 8, 1, 9, 4, 12, 5, 13);
    if (M > 2 || g > 0) {
      const VF u1 = __builtin_shufflevector(a[g], a[g + 1], 2, 10, 3, 11, 6, 14, 7, 15);
      const VF u3 = __builtin_shufflevector(a[g + 2], a[g + 3], 2, 10, 3, 11, 6, 14, 7, 15);
      a[g + 2] = __builtin_shufflevector(u1, u3, 0, 1, 8, 9, 4, 5, 12, 13);
      a[g + 3] = __builtin_shufflevector(u1, u3, 2, 3, 10, 11, 6, 7, 14, 15);
    }
    a[g] = __builtin_shufflevector(u0, u2, 0, 1, 8, 9, 4, 5, 12, 13);
    a[g + 1] = __builtin_shufflevector(u0, u2, 2, 3, 10, 11, 6, 7, 14, 15);
  }
}
#endif

// chunk_transposed's outputs for j < m, every index a constant: the tail features, centring, yT and
// the norms' sums. Loops bounded by m alone spilled a to the stack and copied it to yT.
template <int M>
LGM_INLINE void chunk_out(VF (&a)[kWF], int64_t c0, int64_t m, const float* c, float* yT, VF& even, VF& odd,
                          bool norms, float* xtail, int64_t ldtail) {
#pragma GCC unroll 16
  for (int j = 0; j < M; ++j) {
    if (j >= m) break;
    if (M < kWF && xtail) __builtin_memcpy(xtail + j * ldtail, &a[j], sizeof(VF));
    if (c && M < kWF) a[j] -= splat<VF>(c[c0 + j]);
    __builtin_memcpy(yT + (c0 + j) * kWF, &a[j], sizeof(VF));
    if (norms) {
      if (j & 1) {
        odd += a[j] * a[j];
      } else {
        even += a[j] * a[j];
      }
    }
  }
}

// One chunk of W features from c0 (m of them kept): the W x W transpose's first M >= m outputs.
template <int M>
LGM_INLINE void chunk_transposed(const float* x, int64_t ldx, int64_t c0, int64_t m, const float* c, float* yT,
                                 VF& even, VF& odd, bool norms, float* xtail, int64_t ldtail) {
  VF a[kWF];
#if LGM_SIMD_BYTES == 32
  load_swapped<M>(x, ldx, c0, c, a);
  transpose_quads<M>(a);
#else
  for (int i = 0; i < kWF; ++i) a[i] = load<VF>(x + i * ldx + c0);
  if (c && M == kWF) {
    const VF cv = load<VF>(c + c0);
    for (int i = 0; i < kWF; ++i) a[i] -= cv;
  }
  transpose<kWF / 2, M>(a);
#endif
  chunk_out<M>(a, c0, m, c, yT, even, odd, norms, xtail, ldtail);
}

// yT [D, W]: the W rows at x (stride ldx, readable to D rounded up) transposed,
// minus c when c is not null (c [D rounded up], zeros past D), and then norms [W] = sum_d yT_d^2
// (not null only with c): summed in float32 from the transposed registers, in two chains (even and
// odd d), as the moments' products and tile sums are, and stored as float64. A float64 sum of the
// squares cost a conversion and a float64 FMA per half vector, 6% of the op at K = 10 (AVX-512); 1e6
// rows at D = 50 keep every statistic within 8e-8 of the float64 reference either way.
LGM_INLINE void rows_transposed(const float* x, int64_t ldx, int64_t D, const float* c, float* yT, double* norms,
                                float* xtail, int64_t ldtail) {
  VF even = {}, odd = {};
  for (int64_t c0 = 0; c0 < D; c0 += kWF) {
    const int64_t m = min_of<int64_t>(kWF, D - c0);
    if (m <= 2) {
      chunk_transposed<2>(x, ldx, c0, m, c, yT, even, odd, norms, xtail, ldtail);
    } else if (m <= 4) {
      chunk_transposed<4>(x, ldx, c0, m, c, yT, even, odd, norms, xtail, ldtail);
    } else if (kWF > 8 && m <= 8) {
      chunk_transposed<(kWF > 8 ? 8 : kWF)>(x, ldx, c0, m, c, yT, even, odd, norms, xtail, ldtail);
    } else {
      chunk_transposed<kWF>(x, ldx, c0, m, c, yT, even, odd, norms, xtail, ldtail);
    }
  }
  if (!norms) return;
  const VF sum = even + odd;
  const VD lo = lo_double(sum), hi = hi_double(sum);
  __builtin_memcpy(norms, &lo, sizeof(VD));
  __builtin_memcpy(norms + kWD, &hi, sizeof(VD));
}

}  // namespace
}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm
