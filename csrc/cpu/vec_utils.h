// Small helpers shared by the CPU kernels (csrc/cpu/*.cpp): the logsumexp shift rule and the runtime choice of
// the vectorised code paths.
//
// The extension is compiled for baseline x86-64 (setup.py passes no -m flags), so at::vec::Vectorized in an
// ordinary translation unit is ATen's generic scalar fallback, and std::exp loops are not vectorised. Two ways
// around that are used here:
//   * contrastive.cpp prepares exp2 arguments in loops without transcendental calls and runs ATen's exp2_ on a
//     whole buffer: libtorch dispatches that op at runtime to its own AVX2 / AVX-512 kernels;
//   * sinkhorn.cpp and soft_ce.cpp compile their kernels with AVX2 + FMA + F16C enabled for that code only
//     (avx2_begin.h / avx2_end.h: a GCC / clang target pragma around ATen's vec headers, CPU_CAPABILITY = AVX2)
//     and call them only when the CPU has those features (cpu_has_avx2_fma below); otherwise a portable scalar
//     kernel runs.
// Either way nothing compiled for AVX2 runs on a CPU without it.
#pragma once

// Where an AVX2 region (avx2_begin.h / avx2_end.h) can be compiled: x86 with GCC or clang, outside one of
// libtorch's own per-capability builds.
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(CPU_CAPABILITY)
#define AUGCL_AVX2_REGION_OK 1
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace augcl {
namespace cpu {

// Least number of cells (elements) of work an at::parallel_for task gets: below that, handing work to another
// thread costs more than it saves.
constexpr int64_t kGrainCells = int64_t(1) << 14;

// The grain of an at::parallel_for over items (rows, columns, row blocks) of `cells_per_item` cells each: the
// fewest items that hold `min_cells` cells, and at least 1.
inline int64_t grain(int64_t cells_per_item, int64_t min_cells = kGrainCells) {
  return std::max<int64_t>(1, min_cells / std::max<int64_t>(cells_per_item, 1));
}

// The shift of a logsumexp: the maximum, or 0 where that maximum is infinite (as torch.logsumexp does). An
// all -inf slice then sums exp(-inf - 0) = 0 and gets log(0) = -inf, and a slice with a +inf gets +inf,
// instead of inf - inf = NaN.
template <typename T>
inline T lse_shift(T max_value) {
  return std::isinf(max_value) ? T(0) : max_value;
}

// True when this CPU can run code compiled for AVX2 + FMA + F16C (the set ATen's AVX2 capability uses). Checked
// through the compiler's cpuid wrapper; false on other architectures / compilers.
inline bool cpu_has_avx2_fma() {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

// AUGCL_CPU_VEC=0 forces the portable scalar kernels where a kernel has both (read on every call: tests switch it
// in-process; also a way to compare the two paths). Any other value, or unset, lets the CPU decide.
inline bool vec_kernels_allowed() {
  const char* env = std::getenv("AUGCL_CPU_VEC");
  return !(env != nullptr && std::strcmp(env, "0") == 0);
}

}  // namespace cpu
}  // namespace augcl
