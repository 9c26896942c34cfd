// Width-generic SIMD kernels of the CPU GMM E-step (gmm_kernels.h), on GCC/Clang vector extensions:
// vector helpers and step 1 (distances) here and in gmm_simd_rows.h (its transposes in
// gmm_simd_transpose.h), step 2 in gmm_simd_softmax.h, step 3 in gmm_simd_em.h. Not normal headers: gmm_simd_<isa>.cpp includes each once, after its
// system headers and its `#pragma GCC target`, with LGM_SIMD_BYTES (vector width) and LGM_SIMD_NS
// (namespace) defined, so every function here is compiled for that instruction set. Everything is in an
// anonymous namespace (one copy per translation unit, never merged across targets by the linker)
// except kernels<T>(), and nothing here calls a function compiled for another target.
// Copies are __builtin_memcpy, never memcpy: with _FORTIFY_SOURCE (Ubuntu's default) memcpy is an
// always_inline glibc wrapper for the build's -march, which GCC refuses to inline into this target.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define LGM_INLINE inline __attribute__((always_inline))

namespace lgm {
namespace gmm_cpu {
namespace LGM_SIMD_NS {
namespace {

constexpr int kBytes = LGM_SIMD_BYTES;

template <typename T, int B>
struct VecOf {
  typedef T type __attribute__((vector_size(B)));
};
template <typename T>
using Vec = typename VecOf<T, kBytes>::type;
using VF = Vec<float>;
using VD = Vec<double>;
using VI = Vec<int32_t>;
using VH = typename VecOf<float, kBytes / 2>::type;  // floats that convert to one VD

template <typename T>
constexpr int64_t width() {
  return kBytes / static_cast<int64_t>(sizeof(T));
}
constexpr int64_t kWD = width<double>();

// Register blocking, sized to the register file: 32 registers with AVX-512, 16 otherwise.
constexpr int kRB = 4;                       // rows per distance block
constexpr int kKB = kBytes == 64 ? 5 : 2;    // components per distance block (RB x KB accumulators)
constexpr int kMB = kBytes == 64 ? 12 : 6;   // components per dense-moment block (2 MB accumulators)

template <typename V, typename T>
LGM_INLINE V load(const T* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}

// One VD of float64 from x: WD values, converted from float32 when T is float.
template <typename T>
LGM_INLINE VD load_double(const T* p) {
  if constexpr (sizeof(T) == 8) {
    return load<VD>(p);
  } else {
    return __builtin_convertvector(load<VH>(p), VD);
  }
}

// Every lane s, as one broadcast: s - 0 folds away (`V{} + s` keeps a scalar add, as s + 0 is not
// s for s = -0, and a loop over lanes compiles to one insert per lane).
template <typename V, typename T>
LGM_INLINE V splat(T s) {
  return s - V{};
}

// Float64 of a half float vector: cvtps2pd (GCC 12 lowers __builtin_convertvector to pieces here).
LGM_INLINE VD to_double(VH h) {
#if defined(__x86_64__) && LGM_SIMD_BYTES == 64
  return (VD)_mm512_cvtps_pd((__m256)h);
#elif defined(__x86_64__) && LGM_SIMD_BYTES == 32
  return (VD)__builtin_ia32_cvtps2pd256((__v4sf)h);  // the builtin: ATen included the intrinsics under -march=native
#else
  return __builtin_convertvector(h, VD);
#endif
}

// The low and high halves of a float vector as float64, and back (shuffles, not memory).
template <std::size_t... I>
LGM_INLINE VH half_of(VF v, std::size_t first, std::index_sequence<I...>) {
  return first == 0 ? __builtin_shufflevector(v, v, I...) : __builtin_shufflevector(v, v, (I + sizeof...(I))...);
}
LGM_INLINE VD lo_double(VF v) { return to_double(half_of(v, 0, std::make_index_sequence<kBytes / 8>())); }
LGM_INLINE VD hi_double(VF v) { return to_double(half_of(v, 1, std::make_index_sequence<kBytes / 8>())); }
template <std::size_t... I>
LGM_INLINE VF concat(VH a, VH b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, I...);
}
LGM_INLINE VF to_float(VD lo, VD hi) {
#if defined(__x86_64__) && LGM_SIMD_BYTES == 64
  // one insert: the generic concat compiles to it plus a vmovaps per half (zeroing upper bits)
  const __m256d a = _mm256_castps_pd(_mm512_cvtpd_ps((__m512d)lo)), b = _mm256_castps_pd(_mm512_cvtpd_ps((__m512d)hi));
  return (VF)_mm512_insertf64x4(_mm512_castpd256_pd512(a), b, 1);
#endif
  return concat(__builtin_convertvector(lo, VH), __builtin_convertvector(hi, VH),
                std::make_index_sequence<kBytes / 4>());
}

// Keeps v in a register: stops the compiler from re-reading a table entry from memory for every
// use (with AVX-512 it otherwise spends a load per FMA and becomes load-bound).
template <typename V>
LGM_INLINE void pin(V& v) {
  if constexpr (kBytes == 64) __asm__("" : "+v"(v));
}

// The same on 16 registers (32- and 16-byte vectors), for the small-D kernel's few table vectors:
// unpinned, AVX2 reloads them for every row (diag K = 10, D = 50: 14% slower).
template <typename V>
LGM_INLINE void pin_narrow(V& v) {
#if defined(__x86_64__)
  if constexpr (kBytes <= 32) __asm__("" : "+x"(v));
#endif
}

// Sum of a vector's lanes by halving (log2 of the width shuffles and adds).
template <typename T, int B>
LGM_INLINE T hsum_bytes(typename VecOf<T, B>::type v) {
  if constexpr (B == 16) {
    if constexpr (sizeof(T) == 8) {
      return v[0] + v[1];
    } else {
      return (v[0] + v[2]) + (v[1] + v[3]);
    }
  } else {
    typename VecOf<T, B / 2>::type lo, hi;
    __builtin_memcpy(&lo, &v, B / 2);
    __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
    return hsum_bytes<T, B / 2>(lo + hi);
  }
}
template <typename T>
LGM_INLINE T hsum(Vec<T> v) {
  return hsum_bytes<T, kBytes>(v);
}

// Whether every lane of v is above -inf (none NaN or -inf): one compare and a lane sum, not a
// scalar test per lane (the softmaxes' per-block check).
LGM_INLINE bool all_above_minus_inf(VF v) {
  return hsum<int32_t>((VI)(v > (VF{} - INFINITY))) == -static_cast<int32_t>(width<float>());
}

// The lanes of a float32 vector summed as one float64 (the halves added in float64, then across).
LGM_INLINE double sum_as_double(VF v) { return hsum<double>(lo_double(v) + hi_double(v)); }

// f(std::integral_constant<int, M>{}) for the tail width m = M in 0 .. W / 2 of float32 vectors
// (Plan::tail_d), each a separate instantiation; false (f not called) for any other m.
template <int M = 0, typename F>
LGM_INLINE bool with_tail_width(int64_t m, F&& f) {
  if (m == M) {
    f(std::integral_constant<int, M>{});
    return true;
  }
  if constexpr (M < width<float>() / 2) return with_tail_width<M + 1>(m, f);
  return false;
}

template <typename T>
LGM_INLINE T min_of(T a, T b) {
  return a < b ? a : b;
}

// p^2 s for spherical distances, as two products by the exact p (Plan::scale: a rounded p^2 would
// move every distance to a component alike); s a scalar or a vector.
template <typename S, typename V>
LGM_INLINE V times_p_squared(S p, V s) {
  return p * (p * s);
}

// All-ones bits in the lanes below D % W (the last, partial vector of a row), zeros above.
template <typename T>
LGM_INLINE Vec<T> tail_mask_of(int64_t D) {
  constexpr int64_t W = width<T>();
  Vec<T> mask;
  T ones;
  __builtin_memset(&ones, 0xFF, sizeof(T));
  for (int64_t j = 0; j < W; ++j) mask[j] = j < D % W ? ones : T(0);
  return mask;
}

// dst[j] += v[j] for j < min(n, width): float64 sums, and float32 partial sums folded into float64.
LGM_INLINE void flush(double* dst, VD v, int64_t n) {
  if (n >= kWD) {
    VD d = load<VD>(dst) + v;
    __builtin_memcpy(dst, &d, sizeof(VD));
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] += v[j];
  }
}
template <typename V>
LGM_INLINE void flush(double* dst, V v, int64_t n) {  // any other vector (half vectors)
  constexpr int64_t lanes = sizeof(V) / sizeof(v[0]);
  for (int64_t j = 0; j < n && j < lanes; ++j) dst[j] += static_cast<double>(v[j]);
}
LGM_INLINE void flush(double* dst, VF v, int64_t n) {
  if (n >= 2 * kWD) {
    flush(dst, lo_double(v), kWD);
    flush(dst + kWD, hi_double(v), kWD);
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] += static_cast<double>(v[j]);
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Squared distances for RB rows and KB components: out[k, r] = sum_d t^2 (component-major) with the whitened
// residual t = x_rd p_kd - nu_kd (kScaled; common/gmm.h whitened_residual) or x_rd - nu_kd. Rows of x
// are read in whole vectors (up to D rounded up; the caller guarantees they are readable) and the
// lanes past D masked to 0; table rows are zero past D.

template <typename T, int RB, int KB, bool kScaled>
LGM_INLINE void maha_block(const T* x, int64_t ldx, int64_t D, const T* p, const T* nu, int64_t ldt, T* out,
                           int64_t ldo, Vec<T> tail_mask, const T* scale) {
  using V = Vec<T>;
  using VM = typename VecOf<int64_t, kBytes>::type;  // lane masks as bits (any lane size)
  constexpr int64_t W = width<T>();
  V acc[RB][KB] = {};
  auto step = [&](const V (&xv)[RB], int64_t d) __attribute__((always_inline)) {
    for (int k = 0; k < KB; ++k) {
      V nv = load<V>(nu + k * ldt + d);
      pin(nv);
      if constexpr (kScaled) {
        V pv = load<V>(p + k * ldt + d);
        pin(pv);
        for (int r = 0; r < RB; ++r) {
          const V t = xv[r] * pv - nv;
          acc[r][k] += t * t;
        }
      } else {
        for (int r = 0; r < RB; ++r) {
          const V t = xv[r] - nv;
          acc[r][k] += t * t;
        }
      }
    }
  };
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    V xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = load<V>(x + r * ldx + d);
    step(xv, d);
  }
  if (d < D) {  // the last partial vector: lanes past D are cleared bit by bit (they may hold anything)
    V xv[RB];
    for (int r = 0; r < RB; ++r) xv[r] = (V)((VM)load<V>(x + r * ldx + d) & (VM)tail_mask);
    step(xv, d);
  }
  for (int k = 0; k < KB; ++k) {
    const T c = scale ? scale[k] : T(1);
    for (int r = 0; r < RB; ++r) out[k * ldo + r] = scale ? times_p_squared(c, hsum<T>(acc[r][k])) : hsum<T>(acc[r][k]);
  }
}

template <typename T, int KB, bool kScaled>
void maha_rows(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, T* out,
               int64_t ldo, const T* scale) {
  const Vec<T> tail_mask = tail_mask_of<T>(D);
  int64_t n = 0;
  for (; n + kRB <= rows; n += kRB)
    maha_block<T, kRB, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n, ldo, tail_mask, scale);
  for (; n < rows; ++n) maha_block<T, 1, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n, ldo, tail_mask, scale);
}

template <typename T, bool kScaled>
void maha_blocks(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, int64_t K,
                 T* out, int64_t ldo, const T* scale) {
  // Blocks of at most kKB components, sizes as equal as possible.
  const int64_t blocks = (K + kKB - 1) / kKB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    const T* pb = kScaled ? p + k0 * ldt : nullptr;
    const T* nb = nu + k0 * ldt;
    T* ob = out + k0 * ldo;
    const T* sb = scale ? scale + k0 : nullptr;
    switch (kb) {
      case 1: maha_rows<T, 1, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo, sb); break;
      case 2: maha_rows<T, 2, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo, sb); break;
      case 3: if constexpr (kKB >= 3) maha_rows<T, 3, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo, sb); break;
      case 4: if constexpr (kKB >= 4) maha_rows<T, 4, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo, sb); break;
      case 5: if constexpr (kKB >= 5) maha_rows<T, 5, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo, sb); break;
      default: break;
    }
  }
}

// Few features (D <= kSmallD): vectors run along components instead, so no horizontal sums.
// Tables transposed, pT, nuT [D, ldk] (ldk = K rounded up to the width, zeros past K); RB rows and
// KV vectors of components per block; x_rd broadcast.
constexpr int kRBK = kBytes == 64 ? 8 : 4;

template <typename T, int RB, int KV, bool kScaled>
LGM_INLINE void maha_kvec_block(const T* x, int64_t ldx, int64_t D, const T* pT, const T* nuT, int64_t ldk, T* out,
                                int64_t ldo, int64_t kcount, const T* scale) {
  using V = Vec<T>;
  constexpr int64_t W = width<T>();
  V acc[RB][KV] = {};
  for (int64_t d = 0; d < D; ++d) {
    V pv[KV], nv[KV];
    for (int j = 0; j < KV; ++j) {
      nv[j] = load<V>(nuT + d * ldk + j * W);
      if constexpr (kScaled) pv[j] = load<V>(pT + d * ldk + j * W);
      pin_narrow(nv[j]);
      if constexpr (kScaled) pin_narrow(pv[j]);
    }
    for (int r = 0; r < RB; ++r) {
      const V xb = splat<V>(x[r * ldx + d]);
      for (int j = 0; j < KV; ++j) {
        // mu - x, not x - mu: the broadcast of x is then the memory operand of the subtraction.
        const V t = kScaled ? xb * pv[j] - nv[j] : nv[j] - xb;
        acc[r][j] += t * t;
      }
    }
  }
  if (scale) {
    for (int j = 0; j < KV; ++j) {
      const V c = load<V>(scale + j * W);
      for (int r = 0; r < RB; ++r) acc[r][j] = times_p_squared(c, acc[r][j]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    for (int j = 0; j < KV; ++j) {
      T lanes[W];
      __builtin_memcpy(lanes, &acc[r][j], sizeof(V));
      for (int64_t l = 0; l < W && j * W + l < kcount; ++l) out[(j * W + l) * ldo + r] = lanes[l];
    }
  }
}

template <typename T, int KV, bool kScaled>
void maha_kvec_rows(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* pT, const T* nuT, int64_t ldk, T* out,
                    int64_t ldo, int64_t kcount, const T* scale) {
  int64_t n = 0;
  for (; n + kRBK <= rows; n += kRBK)
    maha_kvec_block<T, kRBK, KV, kScaled>(x + n * ldx, ldx, D, pT, nuT, ldk, out + n, ldo, kcount, scale);
  for (; n < rows; ++n)
    maha_kvec_block<T, 1, KV, kScaled>(x + n * ldx, ldx, D, pT, nuT, ldk, out + n, ldo, kcount, scale);
}

template <typename T, bool kScaled>
void maha_kvec(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* pT, const T* nuT, int64_t ldk, int64_t K,
               T* out, int64_t ldo, const T* scale) {
  constexpr int64_t W = width<T>();
  for (int64_t k0 = 0; k0 < K; k0 += 2 * W) {
    const int64_t kc = min_of<int64_t>(K - k0, 2 * W);
    const T* pb = kScaled ? pT + k0 : nullptr;
    const T* sb = scale ? scale + k0 : nullptr;
    if (kc > W) {
      maha_kvec_rows<T, 2, kScaled>(x, ldx, rows, D, pb, nuT + k0, ldk, out + k0 * ldo, ldo, kc, sb);
    } else {
      maha_kvec_rows<T, 1, kScaled>(x, ldx, rows, D, pb, nuT + k0, ldk, out + k0 * ldo, ldo, kc, sb);
    }
  }
}

// The dot form's joint log-probability in float64 from the float32 dot y.m_k, the row's norm
// ||y||^2 and Plan::sph's a, b, c, cap: c dot + (b norm + a), capped at cap (NaN stays NaN).
LGM_INLINE VD dot_joint(VD dot, VD a, VD b, VD c, VD cap, VD norm) {
  const VD j = c * dot + (b * norm + a);
  return j > cap ? cap : j;
}

}  // namespace
}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm
