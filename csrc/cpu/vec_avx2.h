// Vector helpers shared by the AVX2 regions of the CPU kernels (csrc/cpu/sinkhorn.cpp, soft_ce.cpp).
//
// Include it inside such a region, after avx2_begin.h and <ATen/cpu/vec/vec.h>: its functions are then compiled
// for AVX2 + FMA + F16C like the kernels that call them, and run only where cpu::cpu_has_avx2_fma() (vec_utils.h)
// said so. Every translation unit that includes it compiles it with the same target, so the inline definitions
// are identical wherever the linker takes them from.
#pragma once

#ifndef CPU_CAPABILITY_AVX2
#error "vec_avx2.h is compiled for AVX2 only: include it between avx2_begin.h and avx2_end.h"
#endif

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>

namespace augcl {
namespace cpu {
namespace avx2 {

// Operations on ATen's AVX2 vectors of T (float: 8 lanes, double: 4).
template <typename T>
struct VecOps {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int64_t W = Vec::size();

  // n <= W elements from p, the other lanes = fill (no read past p + n).
  static Vec load(const T* p, int64_t n, T fill) {
    if (n == W) return Vec::loadu(p);
    return Vec::set(Vec(fill), Vec::loadu(p, n), n);
  }
  // fp32: ATen's exp_u20 (a polynomial, no Sleef call; results below FLT_MIN become 0); fp64: Sleef's exp (1 ulp).
  static Vec exp(const Vec& x);
  static T hsum(const Vec& v) {  // lanes added in lane order
    alignas(64) T a[W];
    v.store(a);
    T s = a[0];
    for (int64_t i = 1; i < W; ++i) s += a[i];
    return s;
  }
  static T hmax(const Vec& v) {  // NaN-propagating
    alignas(64) T a[W];
    v.store(a);
    T m = a[0];
    for (int64_t i = 1; i < W; ++i) m = (std::isnan(m) || m >= a[i]) ? m : a[i];
    return m;
  }
};
template <>
inline at::vec::Vectorized<float> VecOps<float>::exp(const at::vec::Vectorized<float>& x) {
  return x.exp_u20();
}
template <>
inline at::vec::Vectorized<double> VecOps<double>::exp(const at::vec::Vectorized<double>& x) {
  return x.exp();
}

// Eight values as fp32 (exact for fp16 / bf16: a bf16 is the high half of its fp32).
inline __m256 load8f(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8f(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load8f(const c10::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// Eight fp32 values stored as float / fp16 / bf16, each rounded to nearest even (bf16 through c10's conversion).
inline void store8f(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
inline void store8f(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}
inline void store8f(c10::BFloat16* p, __m256 v) {
  alignas(32) float a[8];
  _mm256_store_ps(a, v);
  for (int i = 0; i < 8; ++i) p[i] = static_cast<c10::BFloat16>(a[i]);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace augcl
