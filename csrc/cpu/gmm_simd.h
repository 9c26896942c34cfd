// Width-generic SIMD kernels of the CPU GMM E-step (gmm_kernels.h, steps 1-3), on GCC/Clang vector
// extensions. Not a normal header: gmm_simd_<isa>.cpp includes it once, after its system headers
// and its `#pragma GCC target`, with LGM_SIMD_BYTES (vector width) and LGM_SIMD_NS (namespace)
// defined, so every function here is compiled for that instruction set. Everything is in an
// anonymous namespace (one copy per translation unit, never merged across targets by the linker)
// except kernels<T>(), and nothing here calls a function compiled for another target.
#include <cmath>
#include <cstdint>
#include <cstring>

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
  std::memcpy(&v, p, sizeof(V));
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

// Keeps v in a register: stops the compiler from re-reading a table entry from memory for every
// use (with AVX-512 it otherwise spends a load per FMA and becomes load-bound).
template <typename V>
LGM_INLINE void pin(V& v) {
  if constexpr (kBytes == 64) __asm__("" : "+v"(v));
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
    std::memcpy(&lo, &v, B / 2);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + B / 2, B / 2);
    return hsum_bytes<T, B / 2>(lo + hi);
  }
}
template <typename T>
LGM_INLINE T hsum(Vec<T> v) {
  return hsum_bytes<T, kBytes>(v);
}

template <typename T>
LGM_INLINE T min_of(T a, T b) {
  return a < b ? a : b;
}

// dst[j] += v[j] for j < min(n, WD).
LGM_INLINE void flush(double* dst, VD v, int64_t n) {
  if (n >= kWD) {
    VD d = load<VD>(dst) + v;
    std::memcpy(dst, &d, sizeof(VD));
  } else {
    for (int64_t j = 0; j < n; ++j) dst[j] += v[j];
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Squared distances for RB rows and KB components: out[k, r] = sum_d t^2 (component-major) with the whitened
// residual t = x_rd p_kd - nu_kd (kScaled; common/gmm.h whitened_residual) or x_rd - nu_kd. Rows of x
// are read in whole vectors (up to D rounded up; the caller guarantees they are readable) and the
// lanes past D masked to 0; table rows are zero past D.

template <typename T, int RB, int KB, bool kScaled>
LGM_INLINE void maha_block(const T* x, int64_t ldx, int64_t D, const T* p, const T* nu, int64_t ldt, T* out,
                           int64_t ldo, Vec<T> tail_mask) {
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
  for (int k = 0; k < KB; ++k)
    for (int r = 0; r < RB; ++r) out[k * ldo + r] = hsum<T>(acc[r][k]);
}

template <typename T, int KB, bool kScaled>
void maha_rows(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, T* out,
               int64_t ldo) {
  using VM = typename VecOf<int64_t, kBytes>::type;
  constexpr int64_t W = width<T>();
  Vec<T> tail_mask;  // all-ones bits in the lanes below D % W
  T ones;
  std::memset(&ones, 0xFF, sizeof(T));
  for (int64_t j = 0; j < W; ++j) tail_mask[j] = j < D % W ? ones : T(0);
  int64_t n = 0;
  for (; n + kRB <= rows; n += kRB)
    maha_block<T, kRB, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n, ldo, tail_mask);
  for (; n < rows; ++n) maha_block<T, 1, KB, kScaled>(x + n * ldx, ldx, D, p, nu, ldt, out + n, ldo, tail_mask);
  (void)sizeof(VM);
}

template <typename T, bool kScaled>
void maha_blocks(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, int64_t K,
                 T* out, int64_t ldo) {
  // Blocks of at most kKB components, sizes as equal as possible.
  const int64_t blocks = (K + kKB - 1) / kKB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    const T* pb = kScaled ? p + k0 * ldt : nullptr;
    const T* nb = nu + k0 * ldt;
    T* ob = out + k0 * ldo;
    switch (kb) {
      case 1: maha_rows<T, 1, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo); break;
      case 2: maha_rows<T, 2, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo); break;
      case 3: if constexpr (kKB >= 3) maha_rows<T, 3, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo); break;
      case 4: if constexpr (kKB >= 4) maha_rows<T, 4, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo); break;
      case 5: if constexpr (kKB >= 5) maha_rows<T, 5, kScaled>(x, ldx, rows, D, pb, nb, ldt, ob, ldo); break;
      default: break;
    }
  }
}

// Few features (D <= kSmallD): vectors run along components instead, so no horizontal sums.
// Tables transposed, pT, nuT [D, ldk] (ldk = K rounded up to the width, zeros past K); RB rows and
// KV vectors of components per block; x_rd broadcast.
constexpr int64_t kSmallD = 64;
constexpr int kRBK = kBytes == 64 ? 8 : 4;

template <typename T, int RB, int KV, bool kScaled>
LGM_INLINE void maha_kvec_block(const T* x, int64_t ldx, int64_t D, const T* pT, const T* nuT, int64_t ldk, T* out,
                                int64_t ldo, int64_t kcount) {
  using V = Vec<T>;
  constexpr int64_t W = width<T>();
  V acc[RB][KV] = {};
  for (int64_t d = 0; d < D; ++d) {
    V pv[KV], nv[KV];
    for (int j = 0; j < KV; ++j) {
      nv[j] = load<V>(nuT + d * ldk + j * W);
      if constexpr (kScaled) pv[j] = load<V>(pT + d * ldk + j * W);
    }
    for (int r = 0; r < RB; ++r) {
      const V xb = V{} + x[r * ldx + d];
      for (int j = 0; j < KV; ++j) {
        const V t = kScaled ? xb * pv[j] - nv[j] : xb - nv[j];
        acc[r][j] += t * t;
      }
    }
  }
  for (int r = 0; r < RB; ++r) {
    for (int j = 0; j < KV; ++j) {
      T lanes[W];
      std::memcpy(lanes, &acc[r][j], sizeof(V));
      for (int64_t l = 0; l < W && j * W + l < kcount; ++l) out[(j * W + l) * ldo + r] = lanes[l];
    }
  }
}

template <typename T, int KV, bool kScaled>
void maha_kvec_rows(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* pT, const T* nuT, int64_t ldk, T* out,
                    int64_t ldo, int64_t kcount) {
  int64_t n = 0;
  for (; n + kRBK <= rows; n += kRBK)
    maha_kvec_block<T, kRBK, KV, kScaled>(x + n * ldx, ldx, D, pT, nuT, ldk, out + n, ldo, kcount);
  for (; n < rows; ++n) maha_kvec_block<T, 1, KV, kScaled>(x + n * ldx, ldx, D, pT, nuT, ldk, out + n, ldo, kcount);
}

template <typename T, bool kScaled>
void maha_kvec(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* pT, const T* nuT, int64_t ldk, int64_t K,
               T* out, int64_t ldo) {
  constexpr int64_t W = width<T>();
  for (int64_t k0 = 0; k0 < K; k0 += 2 * W) {
    const int64_t kc = min_of<int64_t>(K - k0, 2 * W);
    const T* pb = kScaled ? pT + k0 : nullptr;
    if (kc > W) {
      maha_kvec_rows<T, 2, kScaled>(x, ldx, rows, D, pb, nuT + k0, ldk, out + k0 * ldo, ldo, kc);
    } else {
      maha_kvec_rows<T, 1, kScaled>(x, ldx, rows, D, pb, nuT + k0, ldk, out + k0 * ldo, ldo, kc);
    }
  }
}

template <typename T>
void maha(const T* x, int64_t ldx, int64_t rows, int64_t D, const T* p, const T* nu, int64_t ldt, const T* pT,
          const T* nuT, int64_t ldk, int64_t K, T* out, int64_t ldo) {
  if (nuT && D <= kSmallD) {
    if (pT) {
      maha_kvec<T, true>(x, ldx, rows, D, pT, nuT, ldk, K, out, ldo);
    } else {
      maha_kvec<T, false>(x, ldx, rows, D, nullptr, nuT, ldk, K, out, ldo);
    }
    return;
  }
  if (p) {
    maha_blocks<T, true>(x, ldx, rows, D, p, nu, ldt, K, out, ldo);
  } else {
    maha_blocks<T, false>(x, ldx, rows, D, nullptr, nu, ldt, K, out, ldo);
  }
}

// ---------------------------------------------------------------------------------------------
// 2. Responsibilities of float32 x.

// exp(v) for v <= 0 in float32 (Cephes expf: Cody-Waite reduction by ln 2, degree-6 polynomial,
// within 2 ulp); exactly 0 below -87 (where e^v < 2^-125: such a responsibility is dropped).
LGM_INLINE VF exp_nonpositive(VF v) {
  const VF x = v < -87.0f ? VF{} - 87.0f : v;
  const VF shifter = VF{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const VF t = x * 1.44269504088896341f + shifter;
  const VF n = t - shifter;
  VF r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  VF q = VF{} + 1.9875691500e-4f;
  q = q * r + 1.3981999507e-3f;
  q = q * r + 8.3334519073e-3f;
  q = q * r + 4.1665795894e-2f;
  q = q * r + 1.6666665459e-1f;
  q = q * r + 5.0000001201e-1f;
  const VF e = q * (r * r) + r + 1.0f;
  // 2^n from the integer in t's low mantissa bits, placed in the exponent field.
  const VI two_n = (((VI)t - (VI)shifter) + 127) << 23;
  const VF out = e * (VF)two_n;
  return (VF)((VI)out & ~(VI)(v < -87.0f));
}

// Component-major tiles [K, ld] (columns: the tile's rows), so every loop runs along rows.
double softmax_f32(const float* maha, int64_t rows, int64_t K, int64_t ld, const double* log_const, const float* sw,
                   float* work, double* rowbuf, double* resp, double* nk) {
  constexpr int64_t W = width<float>();
  double* top = rowbuf;           // [rows] max_k joint_nk (common/gmm.h joint_log_prob, float64)
  double* scale = rowbuf + ld;    // [rows] w_n / sum_k e_nk
  double* special = rowbuf + 2 * ld;  // [rows] 0 normally; 1: weight 0 -> resp 0; 2: no finite joint -> NaN
  for (int64_t n = 0; n < rows; ++n) top[n] = -INFINITY;
  for (int64_t k = 0; k < K; ++k) {
    const float* m = maha + k * ld;
    for (int64_t n = 0; n < rows; ++n) {
      const double j = log_const[k] - 0.5 * static_cast<double>(m[n]);
      top[n] = j > top[n] ? j : top[n];
    }
  }
  // a. work = joint - top in float32, then one vectorised exp over the whole tile.
  for (int64_t k = 0; k < K; ++k) {
    const float* m = maha + k * ld;
    float* wk = work + k * ld;
    for (int64_t n = 0; n < rows; ++n) {
      wk[n] = static_cast<float>((log_const[k] - 0.5 * static_cast<double>(m[n])) - top[n]);
    }
    for (int64_t n = rows; n < (rows + W - 1) / W * W; ++n) wk[n] = -100.0f;
    for (int64_t n = 0; n < rows; n += W) {
      const VF e = exp_nonpositive(load<VF>(wk + n));
      std::memcpy(wk + n, &e, sizeof(VF));
    }
  }
  // b. per row: sum, log-sum-exp, the scale w / sum; rows of weight 0 give 0 (common/gmm.h row_softmax).
  for (int64_t n = 0; n < rows; ++n) scale[n] = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = work + k * ld;
    for (int64_t n = 0; n < rows; ++n) scale[n] += static_cast<double>(wk[n]);
  }
  double loglik = 0.0;
  for (int64_t n = 0; n < rows; ++n) {
    const double w = sw ? static_cast<double>(sw[n]) : 1.0, sum = scale[n];
    special[n] = w == 0.0 ? 1.0 : (top[n] > -INFINITY ? 0.0 : 2.0);
    scale[n] = w / sum;
    if (w != 0.0) loglik += w * (top[n] > -INFINITY ? top[n] + std::log(sum) : -INFINITY);
  }
  // c. resp = e * scale (float64), nk += its sums.
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = work + k * ld;
    double* rk = resp + k * ld;
    double total = 0.0;
    for (int64_t n = 0; n < rows; ++n) {
      const double r = special[n] == 0.0 ? static_cast<double>(wk[n]) * scale[n] : (special[n] == 1.0 ? 0.0 : NAN);
      rk[n] = r;
      total += r;
    }
    nk[k] += total;
  }
  return loglik;
}

// ---------------------------------------------------------------------------------------------
// 3. Moments in float64: sx[k, d] += sum_n r_nk x_nd, (kSquares) sxx[k, d] += sum_n r_nk x_nd^2.

// Dense: all rows, MB components (r component-major [MB, ldr]); one VD of d at a time, 2 MB accumulators.
template <typename T, int MB, bool kSquares>
void moments_dense_block(const T* x, int64_t ldx, int64_t rows, int64_t D, const double* r, int64_t ldr, double* sx,
                         double* sxx) {
  for (int64_t d = 0; d < D; d += kWD) {
    VD a1[MB] = {}, a2[MB] = {};
    for (int64_t n = 0; n < rows; ++n) {
      const VD xv = load_double(x + n * ldx + d);
      const VD x2 = xv * xv;
      for (int k = 0; k < MB; ++k) {
        const double rk = r[k * ldr + n];
        a1[k] += rk * xv;
        if constexpr (kSquares) a2[k] += rk * x2;
      }
    }
    for (int k = 0; k < MB; ++k) {
      flush(sx + k * D + d, a1[k], D - d);
      if constexpr (kSquares) flush(sxx + k * D + d, a2[k], D - d);
    }
  }
}

template <typename T, bool kSquares>
void moments_dense_sq(const T* x, int64_t ldx, int64_t rows, int64_t D, const double* r, int64_t ldr, int64_t K,
                      double* sx, double* sxx) {
  const int64_t blocks = (K + kMB - 1) / kMB;
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t k0 = b * K / blocks, kb = (b + 1) * K / blocks - k0;
    double* sxb = sx + k0 * D;
    double* sxxb = kSquares ? sxx + k0 * D : nullptr;
    switch (kb) {
#define LGM_MOMENT_CASE(MB) \
  case MB: if constexpr (kMB >= MB) moments_dense_block<T, MB, kSquares>(x, ldx, rows, D, r + k0 * ldr, ldr, sxb, sxxb); break;
      LGM_MOMENT_CASE(1) LGM_MOMENT_CASE(2) LGM_MOMENT_CASE(3) LGM_MOMENT_CASE(4) LGM_MOMENT_CASE(5)
      LGM_MOMENT_CASE(6) LGM_MOMENT_CASE(7) LGM_MOMENT_CASE(8) LGM_MOMENT_CASE(9) LGM_MOMENT_CASE(10)
      LGM_MOMENT_CASE(11) LGM_MOMENT_CASE(12)
#undef LGM_MOMENT_CASE
      default: break;
    }
  }
}

template <typename T>
void moments_dense(const T* x, int64_t ldx, int64_t rows, int64_t D, const double* r, int64_t ldr, int64_t K,
                   double* sx, double* sxx) {
  if (sxx) {
    moments_dense_sq<T, true>(x, ldx, rows, D, r, ldr, K, sx, sxx);
  } else {
    moments_dense_sq<T, false>(x, ldx, rows, D, r, ldr, K, sx, nullptr);
  }
}

// Sparse: one component over the m rows idx with responsibilities val; NV VDs of d per pass.
template <typename T, int NV, bool kSquares>
LGM_INLINE void moments_sparse_block(const T* x, int64_t ldx, int64_t d, int64_t D, const int64_t* idx,
                                     const double* val, int64_t m, double* sx, double* sxx) {
  VD a1[NV] = {}, a2[NV] = {};
  for (int64_t i = 0; i < m; ++i) {
    const T* row = x + idx[i] * ldx + d;
    const double v = val[i];
    for (int j = 0; j < NV; ++j) {
      const VD xv = load_double(row + j * kWD);
      const VD rx = v * xv;
      a1[j] += rx;
      if constexpr (kSquares) a2[j] += rx * xv;
    }
  }
  for (int j = 0; j < NV; ++j) {
    flush(sx + d + j * kWD, a1[j], D - d - j * kWD);
    if constexpr (kSquares) flush(sxx + d + j * kWD, a2[j], D - d - j * kWD);
  }
}

template <typename T, bool kSquares>
void moments_sparse_sq(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const double* val, int64_t m,
                       double* sx, double* sxx) {
  constexpr int NV = kBytes == 64 ? 6 : 4;
  int64_t d = 0;
  for (; d + NV * kWD <= D; d += NV * kWD) moments_sparse_block<T, NV, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
  for (; d < D; d += kWD) moments_sparse_block<T, 1, kSquares>(x, ldx, d, D, idx, val, m, sx, sxx);
}

template <typename T>
void moments_sparse(const T* x, int64_t ldx, int64_t D, const int64_t* idx, const double* val, int64_t m, double* sx,
                    double* sxx) {
  if (sxx) {
    moments_sparse_sq<T, true>(x, ldx, D, idx, val, m, sx, sxx);
  } else {
    moments_sparse_sq<T, false>(x, ldx, D, idx, val, m, sx, nullptr);
  }
}

// out[n] = ||x_n||^2 in float64 (spherical second moments).
template <typename T>
void sq_norms(const T* x, int64_t ldx, int64_t rows, int64_t D, double* out) {
  for (int64_t n = 0; n < rows; ++n) {
    const T* row = x + n * ldx;
    VD a0 = {}, a1 = {};
    int64_t d = 0;
    for (; d + 2 * kWD <= D; d += 2 * kWD) {
      const VD v0 = load_double(row + d), v1 = load_double(row + d + kWD);
      a0 += v0 * v0;
      a1 += v1 * v1;
    }
    double total = hsum<double>(a0 + a1);
    for (; d < D; ++d) total += static_cast<double>(row[d]) * static_cast<double>(row[d]);
    out[n] = total;
  }
}

}  // namespace

template <>
const SimdKernels<float>& kernels<float>() {
  static const SimdKernels<float> k{kBytes, &maha<float>, &softmax_f32, &moments_dense<float>, &moments_sparse<float>,
                                    &sq_norms<float>};
  return k;
}

template <>
const SimdKernels<double>& kernels<double>() {
  static const SimdKernels<double> k{kBytes, &maha<double>, nullptr, &moments_dense<double>, &moments_sparse<double>,
                                     &sq_norms<double>};
  return k;
}

}  // namespace LGM_SIMD_NS
}  // namespace gmm_cpu
}  // namespace lgm

#undef LGM_INLINE
