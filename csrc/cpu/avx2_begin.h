// Opens an AVX2 + FMA + F16C region of a CPU kernel file (csrc/cpu/sinkhorn.cpp, soft_ce.cpp); close it with
// avx2_end.h. Use only inside `#ifdef AUGCL_AVX2_REGION_OK` (vec_utils.h), and call what is compiled in the region
// only after cpu::cpu_has_avx2_fma().
//
// The extension is compiled for baseline x86-64; this region compiles its functions for AVX2 (a GCC / clang target
// pragma) with ATen's vec headers in their AVX2 flavour (CPU_CAPABILITY = AVX2, namespace at::vec::AVX2, as in
// libtorch's own AVX2 kernels). Included once per translation unit, so no include guard; the file including it
// then includes <ATen/cpu/vec/vec.h> and vec_avx2.h (the vector helpers the kernels share) and writes its kernels.
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// GCC does not apply the target pragma to lambdas: ATen's BFloat16 / Half vector operators, defined with
// __m256 lambdas, warn about the AVX ABI here. The kernels never use them (unused inline functions are not
// emitted), and a use in an AVX2 caller would fail to compile (always_inline mismatch), not misbehave.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// sleef.h declares its 256-bit functions (which Vectorized<float/double>::exp calls; libtorch exports them) only
// #ifdef __AVX__, and the target pragma does not define that macro: define it for this one include.
#ifndef __AVX__
#define __AVX__ 1
#define AUGCL_UNDEF_AVX
#endif
#include <sleef.h>
#ifdef AUGCL_UNDEF_AVX
#undef __AVX__
#undef AUGCL_UNDEF_AVX
#endif
