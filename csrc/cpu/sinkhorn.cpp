// CPU kernel of augcl::sinkhorn: SwAV's single-process Sinkhorn-Knopp, computed in the log domain.
//
// Math: scores S [B, K], eps > 0, T = iterations >= 0. SwAV's algorithm
//   Q = exp(S / eps)^T [K, B];  Q /= sum(Q);
//   T times: Q /= Q.sum(dim=1, keepdim=True); Q /= K;  Q /= Q.sum(dim=0, keepdim=True); Q /= B;
//   codes = (Q * B)^T [B, K]
// overflows for small eps, so the same math runs on L = log(Q)^T [B, K]:
//   L = S / eps;  L -= logsumexp(L);
//   T times: L[:, k] -= logsumexp_b L[:, k] + log K;   L[b, :] -= logsumexp_k L[b, :] + log B;
//   codes = exp(L) * B  (computed as exp(L + log B)).
//
// Vectorised kernel (sinkhorn_vec; used when the CPU has AVX2 + FMA, see csrc/cpu/vec_utils.h). Every step
// above subtracts a per-column or a per-row vector from L, so L = L0 - u[k] - w[b] at all times, with L0 = S / eps
// and two potentials (the dual form of Sinkhorn). Substituting that into the steps,
//   start:       u = 0,   w = c := logsumexp(L0)
//   column step: u[k] = logsumexp_b (L0[b, k] - w[b]) + log K       (the old u cancels)
//   row step:    w[b] = logsumexp_k (L0[b, k] - u[k]) + log B       (the old w cancels)
//   codes = exp(L0 - u - w + log B) = exp((L0 - u) - r),   r := w - log B,
// so L0 is never rewritten until the final pass overwrites it with the codes: each column / row step is one
// read-only sweep over the [B, K] buffer (instead of reading and writing L), and the subtraction of every
// normalisation is fused into the read of the next logsumexp. r is what the kernel stores (the column step
// uses L0 - w = (L0 - r) - log B and folds - log B + log K into u as one constant), so the final exponent is
// (L0 - u) - r, rounded the same way as the row step's read. Per pass:
//   P1 (rows):      row max and sum exp(x - max) of L0 -> c (row partials added serially in double); and
//                   column maxima of L0 (for the first column step; max(L0 - r) = max(L0) - r exactly, as
//                   rounding is monotone and r is uniform here).
//   column step:    read-only row-major sweeps: each task owns a range of columns (a multiple of 16 wide) and
//                   runs over all rows in order, vectorised over its columns, accumulating exp(L0 - r - cmax)
//                   into per-task column sums. cmax, the column maxima of L0 - r, was computed by the sweep
//                   before, so there is no online rescaling and one exp per cell. The sums are two-level (rows
//                   in blocks of kColBlockRows, then the blocks), so the fp32 error grows ~ (64 + B / 64) ulps,
//                   not ~ B.
//   row step:       per row (in L1 after the first read): max of L0 - u, sum of exp(L0 - u - max), r; then,
//                   if a column step follows, the column maxima of L0 - r in per-task buffers, combined with
//                   max afterwards (exact, so independent of the split).
//   final:          L0 <- exp((L0 - u) - r) in place (u = 0, r = c - log B when iterations == 0).
// exp: fp32 uses ATen's Vectorized<float>::exp_u20 (AVX2 polynomial, no Sleef call; inputs below ln(FLT_MIN)
// give 0). Its error is a relative ~1e-7..1e-6 (20 ulp bound) per term; every exponent here is a difference of
// numbers of magnitude |S| / eps + log(B K) (20-30 for eps = 0.05, ~110 for eps = 0.01), whose fp32 rounding
// alone is 2e-6..8e-6 absolute, i.e. the same relative error in the term, so exp_u20 adds less than the
// arithmetic already does (tests: fp32 within rtol 1e-5 of the float64 oracle elementwise, fp16 / eps 0.01 within
// 1e-4). A term that would be a subnormal becomes 0: below FLT_MIN relative to the largest term (1) of a
// logsumexp, and below the tests' atol for a code. fp64 uses Vectorized<double>::exp (Sleef, 1 ulp).
// Maxima use at::vec::maximum (NaN propagates). Tails (K not a multiple of the vector width, K < width) are
// loaded as partial vectors padded with -inf, which adds exp(-inf) = 0 and cannot raise a max.
//
// Scalar kernel (sinkhorn_scalar; other CPUs, other architectures, or AUGCL_CPU_VEC=0): the previous version,
// which rewrites L in place with scalar std::exp / std::log: a column step is two sweeps over column ranges
// (max, then sum), a row step subtracts the column lse, takes the row lse and subtracts it.
//
// Memory: one [B, K] work buffer in the accumulation dtype (fp32; fp64 for fp64 scores), which becomes the
// output; plus O(K + B) potentials / statistics and, in the vectorised kernel, O(K) per task.
//
// Parallelism and determinism: row passes go to at::parallel_for over contiguous row ranges, column steps over
// column ranges. Every sum runs in an order fixed by the data layout (a row's lanes and their fixed-order
// horizontal sum; a column's rows in index order with block boundaries at fixed rows; the global logsumexp's row
// partials serially in double), and maxima are exact, so results are bitwise identical for any thread count
// (tests/test_sinkhorn_kernels.py checks 1, 2 and 3 threads). logsumexps shift by their max, with an infinite max
// replaced by 0 (cpu::lse_shift, as torch.logsumexp does), so an all -inf slice gives -inf, not NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "vec_utils.h"

namespace augcl {
namespace {

constexpr int64_t kGrainCells = int64_t(1) << 14;  // min cells per parallel_for task

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of tasks for `items` rows (columns) of `cells_per_item` cells each: one per thread, at least
// kGrainCells cells each, at most one per item.
int64_t num_tasks(int64_t items, int64_t cells_per_item) {
  const int64_t by_work = div_up(items * std::max<int64_t>(cells_per_item, 1), kGrainCells);
  return std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), by_work, items}));
}

}  // namespace
}  // namespace augcl

// ------------------------------------------------------------------------------------------------------------
// Vectorised kernel: compiled for AVX2 + FMA + F16C only here (the rest of the extension is baseline x86-64),
// with ATen's vec headers in their AVX2 flavour (namespace at::vec::AVX2, as in libtorch's own AVX2 kernels).
// Only called after cpu::cpu_has_avx2_fma().
// ------------------------------------------------------------------------------------------------------------
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(CPU_CAPABILITY)
#define AUGCL_SINKHORN_VEC 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// GCC does not apply the target pragma to lambdas: ATen's BFloat16 / Half vector operators, defined with
// __m256 lambdas, warn about the AVX ABI here. This kernel never uses them (unused inline functions are not
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
#include <ATen/cpu/vec/vec.h>

namespace augcl {
namespace {

constexpr int64_t kColBlockRows = 64;  // rows per inner block of the two-level column sums
constexpr int64_t kColAlign = 16;      // column ranges of the column step are multiples of this (>= the width)

template <typename T>
struct VecOps {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int64_t W = Vec::size();
  static_assert(kColAlign % W == 0, "column ranges must hold whole vectors");

  // n <= W elements from p, the other lanes = fill (no read past p + n).
  static Vec load(const T* p, int64_t n, T fill) {
    if (n == W) return Vec::loadu(p);
    return Vec::set(Vec(fill), Vec::loadu(p, n), n);
  }
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

constexpr double kInf = std::numeric_limits<double>::infinity();

// max_k x[k]; and cm[k] = max(cm[k], x[k]) when cm is given.
template <typename T>
T row_max(const T* x, int64_t K, T* cm) {
  using O = VecOps<T>;
  using Vec = typename O::Vec;
  const T ninf = static_cast<T>(-kInf);
  Vec m(ninf);
  for (int64_t k = 0; k < K; k += O::W) {
    const int64_t n = std::min<int64_t>(O::W, K - k);
    const Vec v = O::load(x + k, n, ninf);
    m = at::vec::maximum(m, v);
    if (cm != nullptr) at::vec::maximum(O::load(cm + k, n, ninf), v).store(cm + k, n);
  }
  return O::hmax(m);
}

// max_k (x[k] - u[k]).
template <typename T>
T row_max_minus(const T* x, const T* u, int64_t K) {
  using O = VecOps<T>;
  using Vec = typename O::Vec;
  const T ninf = static_cast<T>(-kInf);
  Vec m(ninf);
  for (int64_t k = 0; k < K; k += O::W) {
    const int64_t n = std::min<int64_t>(O::W, K - k);
    m = at::vec::maximum(m, O::load(x + k, n, ninf) - O::load(u + k, n, T(0)));
  }
  return O::hmax(m);
}

// sum_k exp((x[k] - u[k]) - shift), two accumulators (even / odd vectors) added at the end.
template <typename T>
T row_sum_exp(const T* x, const T* u, T shift, int64_t K) {
  using O = VecOps<T>;
  using Vec = typename O::Vec;
  const T ninf = static_cast<T>(-kInf);
  const Vec sh(shift);
  Vec s0(T(0)), s1(T(0));
  int64_t k = 0;
  for (; k + 2 * O::W <= K; k += 2 * O::W) {
    s0 = s0 + O::exp(Vec::loadu(x + k) - Vec::loadu(u + k) - sh);
    s1 = s1 + O::exp(Vec::loadu(x + k + O::W) - Vec::loadu(u + k + O::W) - sh);
  }
  for (; k < K; k += O::W) {
    const int64_t n = std::min<int64_t>(O::W, K - k);
    s0 = s0 + O::exp(O::load(x + k, n, ninf) - O::load(u + k, n, T(0)) - sh);
  }
  return O::hsum(s0 + s1);
}

// cm[k] = max(cm[k], x[k] - r).
template <typename T>
void col_max_update(const T* x, T r, int64_t K, T* cm) {
  using O = VecOps<T>;
  using Vec = typename O::Vec;
  const T ninf = static_cast<T>(-kInf);
  const Vec rv(r);
  for (int64_t k = 0; k < K; k += O::W) {
    const int64_t n = std::min<int64_t>(O::W, K - k);
    at::vec::maximum(O::load(cm + k, n, ninf), O::load(x + k, n, ninf) - rv).store(cm + k, n);
  }
}

// x[k] = exp((x[k] - u[k]) - r), in place.
template <typename T>
void row_exp_inplace(T* x, const T* u, T r, int64_t K) {
  using O = VecOps<T>;
  using Vec = typename O::Vec;
  const Vec rv(r);
  for (int64_t k = 0; k < K; k += O::W) {
    const int64_t n = std::min<int64_t>(O::W, K - k);
    O::exp(O::load(x + k, n, T(0)) - O::load(u + k, n, T(0)) - rv).store(x + k, n);
  }
}

// Column step over columns [k0, k1): sum[k - k0] = sum_b exp((L[b, k] - r[b]) - cms[k]), rows in index order,
// two-level (blocks of kColBlockRows rows). inner / sum: scratch of k1 - k0 elements.
template <typename T>
void col_sums(const T* L, const T* r, const T* cms, int64_t B, int64_t K, int64_t k0, int64_t k1, T* inner,
              T* sum) {
  using O = VecOps<T>;
  using Vec = typename O::Vec;
  const T ninf = static_cast<T>(-kInf);
  const int64_t n_cols = k1 - k0;
  std::fill(inner, inner + n_cols, T(0));
  std::fill(sum, sum + n_cols, T(0));
  for (int64_t b = 0; b < B; ++b) {
    const T* x = L + b * K + k0;
    const Vec rv(r[b]);
    int64_t j = 0;
    for (; j + O::W <= n_cols; j += O::W) {
      const Vec e = O::exp(Vec::loadu(x + j) - rv - Vec::loadu(cms + k0 + j));
      (Vec::loadu(inner + j) + e).store(inner + j);
    }
    if (j < n_cols) {
      const int64_t n = n_cols - j;
      const Vec e = O::exp(O::load(x + j, n, ninf) - rv - O::load(cms + k0 + j, n, T(0)));
      (O::load(inner + j, n, T(0)) + e).store(inner + j, n);
    }
    if ((b + 1) % kColBlockRows == 0 || b + 1 == B) {
      for (int64_t q = 0; q < n_cols; q += O::W) {
        const int64_t n = std::min<int64_t>(O::W, n_cols - q);
        (O::load(sum + q, n, T(0)) + O::load(inner + q, n, T(0))).store(sum + q, n);
      }
      std::fill(inner, inner + n_cols, T(0));
    }
  }
}

template <typename T>
void sinkhorn_vec(T* L, int64_t B, int64_t K, int64_t iterations) {
  const T ninf = static_cast<T>(-kInf);
  const double log_b = std::log(static_cast<double>(B));
  const double log_k = std::log(static_cast<double>(K));
  const bool any_step = iterations > 0;

  // Row tasks, each with its own column-max buffer (combined with max: exact, independent of the split).
  const int64_t n_row_tasks = num_tasks(B, K);
  const int64_t rows_per_task = div_up(B, n_row_tasks);
  std::vector<T> cm_task(any_step ? static_cast<size_t>(n_row_tasks * K) : 0);
  std::vector<T> cms(static_cast<size_t>(K));  // lse_shift(column max of L0 - r), for the next column step
  auto combine_col_max = [&](T offset) {
    // cms[k] = lse_shift(max over tasks of cm_task[., k] - offset); offset is r where r is uniform (P1), else 0.
    for (int64_t k = 0; k < K; ++k) {
      T m = cm_task[k];
      for (int64_t t = 1; t < n_row_tasks; ++t) {
        const T v = cm_task[t * K + k];
        m = (std::isnan(m) || m >= v) ? m : v;
      }
      cms[k] = cpu::lse_shift(static_cast<T>(m - offset));
    }
  };
  auto for_row_tasks = [&](auto&& body) {  // body(b0, b1, column-max buffer or nullptr)
    at::parallel_for(0, n_row_tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b0 = t * rows_per_task, b1 = std::min(B, b0 + rows_per_task);
        T* cm = nullptr;
        if (!cm_task.empty()) {
          cm = cm_task.data() + t * K;
          std::fill(cm, cm + K, ninf);
        }
        if (b0 < b1) body(b0, b1, cm);
      }
    });
  };

  // P1: global logsumexp c from per-row (max, sum exp(x - max)) partials; column maxima of L0.
  std::vector<T> row_m(B), row_s(B);
  for_row_tasks([&](int64_t b0, int64_t b1, T* cm) {
    std::vector<T> zeros(static_cast<size_t>(K), T(0));
    for (int64_t b = b0; b < b1; ++b) {
      const T* x = L + b * K;
      const T m = cpu::lse_shift(row_max(x, K, cm));
      row_m[b] = m;
      row_s[b] = row_sum_exp(x, zeros.data(), m, K);
    }
  });
  T gmax = ninf;
  for (int64_t b = 0; b < B; ++b) gmax = std::max(gmax, row_m[b] + std::log(row_s[b]));
  gmax = cpu::lse_shift(gmax);
  double gsum = 0.0;
  for (int64_t b = 0; b < B; ++b) gsum += std::exp(static_cast<double>(row_m[b] + std::log(row_s[b]) - gmax));
  const double c = static_cast<double>(gmax) + std::log(gsum);

  std::vector<T> u(static_cast<size_t>(K), T(0));
  std::vector<T> r(static_cast<size_t>(B), static_cast<T>(c - log_b));
  if (any_step) combine_col_max(r[0]);

  // Column tasks: ranges of whole vectors (a multiple of kColAlign columns; only the last one has a tail, so
  // which columns take the partial-vector path does not depend on the split either).
  const int64_t n_col_guess = num_tasks(K, B);
  const int64_t col_width = div_up(div_up(K, n_col_guess), kColAlign) * kColAlign;
  const int64_t n_col_tasks = div_up(K, col_width);
  std::vector<T> col_sum(static_cast<size_t>(K));
  const T u_const = static_cast<T>(log_k - log_b);  // u = lse_b(L0 - r) - log B + log K

  for (int64_t it = 0; it < iterations; ++it) {
    // Column step: u[k] = lse_b(L0[b, k] - r[b]) - log B + log K.
    at::parallel_for(0, n_col_tasks, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T> inner(static_cast<size_t>(col_width));
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t k0 = t * col_width, k1 = std::min(K, k0 + col_width);
        col_sums(L, r.data(), cms.data(), B, K, k0, k1, inner.data(), col_sum.data() + k0);
        for (int64_t k = k0; k < k1; ++k) u[k] = cms[k] + std::log(col_sum[k]) + u_const;
      }
    });
    // Row step: r[b] = lse_k(L0[b, k] - u[k]); then the column maxima of L0 - r for the next column step.
    const bool next_col_step = it + 1 < iterations;
    for_row_tasks([&](int64_t b0, int64_t b1, T* cm) {
      for (int64_t b = b0; b < b1; ++b) {
        const T* x = L + b * K;
        const T m = cpu::lse_shift(row_max_minus(x, u.data(), K));
        r[b] = m + std::log(row_sum_exp(x, u.data(), m, K));
        if (next_col_step) col_max_update(x, r[b], K, cm);
      }
    });
    if (next_col_step) combine_col_max(T(0));
  }

  // codes = exp((L0 - u) - r), in place.
  const int64_t final_tasks = num_tasks(B, K);
  const int64_t final_rows = div_up(B, final_tasks);
  at::parallel_for(0, final_tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      for (int64_t b = t * final_rows; b < std::min(B, (t + 1) * final_rows); ++b) {
        row_exp_inplace(L + b * K, u.data(), r[b], K);
      }
    }
  });
}

}  // namespace
}  // namespace augcl

#undef CPU_CAPABILITY_AVX2
#undef CPU_CAPABILITY
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
#endif  // vectorised kernel

// ------------------------------------------------------------------------------------------------------------
// Scalar kernel and the op
// ------------------------------------------------------------------------------------------------------------
namespace augcl {
namespace {

// The previous kernel (see the header): the fallback where the vectorised one cannot run.
template <typename T>
void sinkhorn_scalar(T* L, int64_t B, int64_t K, int64_t iterations) {
  const int64_t row_grain = std::max<int64_t>(1, kGrainCells / std::max<int64_t>(K, 1));
  const int64_t col_grain = std::max<int64_t>(1, kGrainCells / std::max<int64_t>(B, 1));
  const T log_b = static_cast<T>(std::log(static_cast<double>(B)));
  const T log_k = static_cast<T>(std::log(static_cast<double>(K)));

  // Q /= sum(Q): global logsumexp from per-row (max, sum exp(x - max)) partials.
  std::vector<T> row_max(B), row_sum(B);
  at::parallel_for(0, B, row_grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const T* r = L + b * K;
      T m = -std::numeric_limits<T>::infinity();
      for (int64_t k = 0; k < K; ++k) m = std::max(m, r[k]);
      m = cpu::lse_shift(m);
      T s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::exp(r[k] - m);
      row_max[b] = m;
      row_sum[b] = s;
    }
  });
  T gmax = -std::numeric_limits<T>::infinity();
  for (int64_t b = 0; b < B; ++b) gmax = std::max(gmax, row_max[b] + std::log(row_sum[b]));
  gmax = cpu::lse_shift(gmax);
  double gsum = 0.0;
  for (int64_t b = 0; b < B; ++b) gsum += std::exp(static_cast<double>(row_max[b] + std::log(row_sum[b]) - gmax));
  const T c = gmax + static_cast<T>(std::log(gsum));

  // The subtraction of c is folded into the first pass over the rows below (a column step or the final exp).
  std::vector<T> col_max(K), col_sum(K), col_lse(K);
  T pending = c;  // subtracted from every cell by the next row sweep
  for (int64_t it = 0; it < iterations; ++it) {
    // Column step: L[:, k] -= logsumexp_b L[:, k] + log K. The pending shift (c before the first column step, 0
    // after) is uniform, so the statistics are taken on the stored L without it.
    at::parallel_for(0, K, col_grain, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) col_max[k] = -std::numeric_limits<T>::infinity();
      for (int64_t b = 0; b < B; ++b) {
        const T* r = L + b * K;
        for (int64_t k = k0; k < k1; ++k) col_max[k] = std::max(col_max[k], r[k]);
      }
      for (int64_t k = k0; k < k1; ++k) {
        col_max[k] = cpu::lse_shift(col_max[k]);
        col_sum[k] = 0;
      }
      for (int64_t b = 0; b < B; ++b) {
        const T* r = L + b * K;
        for (int64_t k = k0; k < k1; ++k) col_sum[k] += std::exp(r[k] - col_max[k]);
      }
      for (int64_t k = k0; k < k1; ++k) col_lse[k] = col_max[k] + std::log(col_sum[k]) + log_k;
    });
    // Apply it (the pending shift cancels, see below), then the row step: L[b, :] -= logsumexp_k L[b, :] + log B.
    at::parallel_for(0, B, row_grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        T* r = L + b * K;
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t k = 0; k < K; ++k) {
          // (L - shift) - (lse_col(L) - shift + log K) = L - (lse_col(L) + log K): the shift cancels.
          r[k] = r[k] - col_lse[k];
          m = std::max(m, r[k]);
        }
        m = cpu::lse_shift(m);
        T s = 0;
        for (int64_t k = 0; k < K; ++k) s += std::exp(r[k] - m);
        const T lse = m + std::log(s) + log_b;
        for (int64_t k = 0; k < K; ++k) r[k] -= lse;
      }
    });
    pending = 0;
  }

  // codes = exp(L - pending) * B = exp(L - pending + log B).
  const T add = log_b - pending;
  at::parallel_for(0, B, row_grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      T* r = L + b * K;
      for (int64_t k = 0; k < K; ++k) r[k] = std::exp(r[k] + add);
    }
  });
}

at::Tensor sinkhorn_cpu(const at::Tensor& scores, double epsilon, int64_t iterations) {
  TORCH_CHECK(scores.dim() == 2, "sinkhorn: scores must be 2-D [B, K], got shape ", scores.sizes());
  const auto st = scores.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "sinkhorn: scores must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(std::isfinite(epsilon) && epsilon > 0, "sinkhorn: epsilon must be a finite number > 0, got ",
              epsilon);
  TORCH_CHECK(iterations >= 0, "sinkhorn: iterations must be >= 0, got ", iterations);
  const auto acc = st == at::kDouble ? at::kDouble : at::kFloat;
  // L = S / eps in the accumulation dtype, contiguous: a fresh buffer (never aliases scores), returned as codes.
  at::Tensor L = at::div(scores.to(acc), epsilon).contiguous();
  const int64_t B = L.size(0), K = L.size(1);
  if (B == 0 || K == 0) return L;
#ifdef AUGCL_SINKHORN_VEC
  if (cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed()) {
    if (acc == at::kDouble) {
      sinkhorn_vec<double>(L.data_ptr<double>(), B, K, iterations);
    } else {
      sinkhorn_vec<float>(L.data_ptr<float>(), B, K, iterations);
    }
    return L;
  }
#endif
  if (acc == at::kDouble) {
    sinkhorn_scalar<double>(L.data_ptr<double>(), B, K, iterations);
  } else {
    sinkhorn_scalar<float>(L.data_ptr<float>(), B, K, iterations);
  }
  return L;
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CPU, m) { m.impl("sinkhorn", &sinkhorn_cpu); }

}  // namespace augcl
