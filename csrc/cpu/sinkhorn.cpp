// CPU kernel of augcl::sinkhorn: SwAV's single-process Sinkhorn-Knopp, computed in the exp domain when the
// range of the scores allows it, else in the log domain.
//
// Math: scores S [B, K], eps > 0, T = iterations >= 0. SwAV's algorithm
//   Q = exp(S / eps)^T [K, B];  Q /= sum(Q);
//   T times: Q /= Q.sum(dim=1, keepdim=True); Q /= K;  Q /= Q.sum(dim=0, keepdim=True); Q /= B;
//   codes = (Q * B)^T [B, K]
// overflows for small eps. Two exact reformulations run it; the op picks one per call from the range
// R = (max S - min S) / eps (at::aminmax of the scores: exact, NaN-propagating; one extra read):
//   exp domain   when R <= 80 for fp32 work (fp32 / fp16 / bf16 scores), R <= 300 for fp64;
//   log domain   otherwise, and for non-finite scores (R = inf or NaN), as before the exp domain existed.
// SwAV's eps = 0.05 on cosine scores gives R <= 40; eps = 0.01 up to 200. AUGCL_SINKHORN_DOMAIN (read on every
// call, like AUGCL_CPU_VEC): "log" forces the log domain, "exp" demands the exp domain (the op raises if R is over
// the limit); tests use both to compare the domains on the same inputs and to see which one an unforced call ran.
//
// ---- Exp domain (sinkhorn_exp_domain; vectorised or scalar row primitives, VecExpOps / ScalarExpOps)
// Only a *global* shift of S / eps cancels in the reference (in its first division by the total); a per-row shift
// does not, after a finite number of iterations. So E = exp(S / eps - m), m = max(S) / eps, E in (0, 1], is formed
// once, and every division by a sum becomes a scaling: Q^T[b, k] = E[b, k] u[k] v[b] (times a uniform constant),
// with u [K] per prototype and v [B] per sample, E never rewritten:
//   column step:  u[k] = 1 / sum_b E[b, k] v[b]       (the old u cancels)
//   row step:     v[b] = 1 / sum_k E[b, k] u[k]       (the old v cancels)
// The constants (1 / sum(Q), the 1 / K of each column step, the 1 / B of each row step, the final * B) are
// uniform: a column step's constant cancels in the next row step, and the last row step makes every code row sum
// to 1, so for T >= 1 codes[b, k] = E[b, k] u[k] / sum_k' E[b, k'] u[k'] with no constant at all, and for T = 0
// codes = B * E / sum(E). u may therefore be scaled freely: it is kept at max 1 (u[k] = min(s) / s[k]).
// Passes over the [B, K] data (E lives in the output buffer):
//   exp pass:      E = exp(S / eps - m) from the scores in their own dtype (fp16 / bf16 converted in registers; a
//                  non-contiguous input is first made contiguous in its dtype): the log domain's separate
//                  S / eps pass is fused in. Also the row sums of E (for T = 0) and, per row block, the column
//                  sums of E (the first column step: v uniform).
//   iteration < T: the column step from the partial column sums; then one read-only sweep: per row
//                  t = E[b, :] . u, v[b] = 1 / t, and the next column step's partial sums += E[b, :] v[b] (the row
//                  is in L1 by then).
//   last:          the column step; per row t = E[b, :] . u and codes[b, :] = E[b, :] u / t in place.
//   T = 0:         codes = E * (B / sum(E)) in place.
// T = 3: the data is read 5 times and written twice, with one exp per cell (the log domain: 7 exp passes).
// Numerics: each exponent S * (1 / eps) - m is computed in double (one fma) and rounded once to the work dtype
// (fp32: at most half an ulp of |x| <= R, 3.8e-6 relative in E at R = 80, less than the log domain's fp32
// roundings of values of the same size; tests: within fp32 rtol 1e-5 of the float64 oracle up to R = 80, where the
// log-domain kernels need 1e-4). exp as in the log domain (exp_u20 for fp32, Sleef for fp64; std::exp in the
// scalar kernel). u, v, every sum and the products E u v are double in both precisions; codes are rounded once.
// The range limits:
//   fp32: E >= exp(-R) must be a normal float, computed to full relative precision: exp_u20 returns 0 below
//         ln(FLT_MIN) = -87.3; R <= 80 leaves a factor e^7 ~ 1100 of margin. Everything else is double and far
//         inside its range: the scalings have ranges of at most R (u[k] / u[k'] = sum_b E[b, k'] v[b] /
//         sum_b E[b, k] v[b] lies in [e^-R, e^R] because every term ratio does; the same for v), so with
//         max u = 1: u in [e^-R, 1], t = E[b, :] . u in [e^-R, K], v in [1 / K, e^R], column sums in
//         [e^-R / K, B e^R], codes in [e^-2R / K, 1]: all normal doubles (e^+-708). fp32 codes below FLT_MIN
//         round to subnormals / 0, as in the log domain (and below the tests' atol).
//   fp64: E and the codes are double, and the same bounds ask for 2R + ln K < 708 (a tiny code keeps its relative
//         precision, as in the log domain): R <= 300 allows any K < e^108.
// Scaled S / eps that overflow the work dtype do not matter here (the exponent is formed in double from S).
//
// ---- Log domain: the same math on L = log(Q)^T [B, K]:
//   L = S / eps;  L -= logsumexp(L);
//   T times: L[:, k] -= logsumexp_b L[:, k] + log K;   L[b, :] -= logsumexp_k L[b, :] + log B;
//   codes = exp(L) * B  (computed as exp(L + log B)).
//
// Vectorised log-domain kernel (sinkhorn_vec; used when the CPU has AVX2 + FMA, see csrc/cpu/vec_utils.h). Every
// step above subtracts a per-column or a per-row vector from L, so L = L0 - u[k] - w[b] at all times, with
// L0 = S / eps and two potentials (the dual form of Sinkhorn). Substituting that into the steps,
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
// Scalar log-domain kernel (sinkhorn_scalar; other CPUs, other architectures, or AUGCL_CPU_VEC=0): the previous
// version, which rewrites L in place with scalar std::exp / std::log: a column step is two sweeps over column
// ranges (max, then sum), a row step subtracts the column lse, takes the row lse and subtracts it.
//
// ---- Both domains
// Memory: one [B, K] work buffer in the accumulation dtype (fp32; fp64 for fp64 scores), which becomes the output;
// plus O(K + B) potentials / statistics and, in the vectorised log-domain kernel, O(K) per task; in the exp
// domain, one [K] double vector of partial column sums per row block (at most 64 blocks of at least 16 rows: at
// most 1/8 of the output's size), and a contiguous copy of non-contiguous scores in their dtype.
//
// Parallelism and determinism: row passes go to at::parallel_for over contiguous row ranges, column steps over
// column ranges. Every sum runs in an order fixed by the data layout (a row's lanes and their fixed-order
// horizontal sum; a column's rows in index order with block boundaries at fixed rows; the global logsumexp's row
// partials serially in double), and maxima are exact, so results are bitwise identical for any thread count
// (tests/test_swav_sinkhorn_kernels.py checks 1, 2 and 3 threads). In the exp domain the row passes split row blocks
// whose size depends on B only (at most 64 blocks of at least 16 rows) between the threads, and each column sum
// adds its blocks' partials in block order. logsumexps shift by their max, with an infinite max replaced by 0
// (cpu::lse_shift, as torch.logsumexp does), so an all -inf slice gives -inf, not NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec_utils.h"

namespace augcl {
namespace {

int64_t div_up(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Number of tasks for `items` rows (columns) of `cells_per_item` cells each: one per thread, at least
// cpu::kGrainCells cells each, at most one per item.
int64_t num_tasks(int64_t items, int64_t cells_per_item) {
  const int64_t by_work = div_up(items * std::max<int64_t>(cells_per_item, 1), cpu::kGrainCells);
  return std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(at::get_num_threads()), by_work, items}));
}

}  // namespace
}  // namespace augcl

// ------------------------------------------------------------------------------------------------------------
// Vectorised kernel: compiled for AVX2 + FMA + F16C only here (the rest of the extension is baseline x86-64),
// with ATen's vec headers in their AVX2 flavour (namespace at::vec::AVX2, as in libtorch's own AVX2 kernels).
// Only called after cpu::cpu_has_avx2_fma().
// ------------------------------------------------------------------------------------------------------------
#ifdef AUGCL_AVX2_REGION_OK
#define AUGCL_SINKHORN_VEC 1
#include "avx2_begin.h"
#include <ATen/cpu/vec/vec.h>

#include "vec_avx2.h"

namespace augcl {
namespace {

constexpr int64_t kColBlockRows = 64;  // rows per inner block of the two-level column sums
constexpr int64_t kColAlign = 16;      // column ranges of the column step are multiples of this (>= the width)

using cpu::avx2::load8f;
using cpu::avx2::VecOps;
static_assert(kColAlign % VecOps<float>::W == 0 && kColAlign % VecOps<double>::W == 0,
              "column ranges must hold whole vectors");

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

// ---- Exp-domain row primitives (see sinkhorn_exp_domain below): E in T, scalings and sums in double. Not
// inlined: called once per row from the generic (baseline-compiled) driver through VecExpOps.

inline __m256d load4d(const float* p) { return _mm256_cvtps_pd(_mm_loadu_ps(p)); }
inline __m256d load4d(const double* p) { return _mm256_loadu_pd(p); }
inline void store4d(float* p, __m256d v) { _mm_storeu_ps(p, _mm256_cvtpd_ps(v)); }
inline void store4d(double* p, __m256d v) { _mm256_storeu_pd(p, v); }

// exp(s * inv_eps - m) of eight scores: the exponent in double (one fma), rounded once to fp32, exp_u20.
inline __m256 exp_shifted8(__m256 sv, __m256d inv, __m256d neg_m) {
  const __m128 lo = _mm256_cvtpd_ps(_mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(sv)), inv, neg_m));
  const __m128 hi = _mm256_cvtpd_ps(_mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(sv, 1)), inv, neg_m));
  return VecOps<float>::exp(at::vec::Vectorized<float>(_mm256_set_m128(hi, lo)));
}
inline void accumulate8(__m256 e, __m256d& s0, __m256d& s1, double* acc) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1));
  s0 = _mm256_add_pd(s0, lo);
  s1 = _mm256_add_pd(s1, hi);
  if (acc != nullptr) {
    _mm256_storeu_pd(acc, _mm256_add_pd(_mm256_loadu_pd(acc), lo));
    _mm256_storeu_pd(acc + 4, _mm256_add_pd(_mm256_loadu_pd(acc + 4), hi));
  }
}

// dst[k] = exp(src[k] * inv_eps - m) (fp32 E from fp32 / fp16 / bf16 scores); returns sum_k dst[k] (double), and
// acc[k] += dst[k] when acc is given. The tail (K % 8 scores) goes through a zero-padded partial vector whose
// extra lanes are dropped.
template <typename TS>
__attribute__((noinline)) double vec_exp_row_f32(const TS* src, float* dst, double inv_eps, double m, int64_t K,
                                                 double* acc) {
  const __m256d inv = _mm256_set1_pd(inv_eps), neg_m = _mm256_set1_pd(-m);
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 e = exp_shifted8(load8f(src + k), inv, neg_m);
    _mm256_storeu_ps(dst + k, e);
    accumulate8(e, s0, s1, acc != nullptr ? acc + k : nullptr);
  }
  double s = VecOps<double>::hsum(_mm256_add_pd(s0, s1));
  if (k < K) {
    const int64_t n = K - k;
    TS in[8] = {};
    alignas(32) float e[8];
    std::copy(src + k, src + K, in);
    _mm256_store_ps(e, exp_shifted8(load8f(in), inv, neg_m));
    for (int64_t j = 0; j < n; ++j) {
      dst[k + j] = e[j];
      s += static_cast<double>(e[j]);
      if (acc != nullptr) acc[k + j] += static_cast<double>(e[j]);
    }
  }
  return s;
}

// The same for fp64 scores and E (Sleef's exp, 1 ulp).
__attribute__((noinline)) double vec_exp_row_f64(const double* src, double* dst, double inv_eps, double m,
                                                 int64_t K, double* acc) {
  using Vec = at::vec::Vectorized<double>;
  const __m256d inv = _mm256_set1_pd(inv_eps), neg_m = _mm256_set1_pd(-m);
  __m256d s0 = _mm256_setzero_pd();
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    const __m256d e = Vec(_mm256_fmadd_pd(_mm256_loadu_pd(src + k), inv, neg_m)).exp();
    _mm256_storeu_pd(dst + k, e);
    s0 = _mm256_add_pd(s0, e);
    if (acc != nullptr) _mm256_storeu_pd(acc + k, _mm256_add_pd(_mm256_loadu_pd(acc + k), e));
  }
  double s = VecOps<double>::hsum(s0);
  if (k < K) {
    const int64_t n = K - k;
    alignas(32) double in[4] = {0.0, 0.0, 0.0, 0.0}, e[4];
    std::copy(src + k, src + K, in);
    _mm256_store_pd(e, Vec(_mm256_fmadd_pd(_mm256_load_pd(in), inv, neg_m)).exp());
    for (int64_t j = 0; j < n; ++j) {
      dst[k + j] = e[j];
      s += e[j];
      if (acc != nullptr) acc[k + j] += e[j];
    }
  }
  return s;
}

// sum_k x[k] * a[k] (double; four accumulators over 16 elements, added in a fixed order).
template <typename T>
__attribute__((noinline)) double vec_dot_row(const T* x, const double* a, int64_t K) {
  __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    s0 = _mm256_fmadd_pd(load4d(x + k), _mm256_loadu_pd(a + k), s0);
    s1 = _mm256_fmadd_pd(load4d(x + k + 4), _mm256_loadu_pd(a + k + 4), s1);
    s2 = _mm256_fmadd_pd(load4d(x + k + 8), _mm256_loadu_pd(a + k + 8), s2);
    s3 = _mm256_fmadd_pd(load4d(x + k + 12), _mm256_loadu_pd(a + k + 12), s3);
  }
  for (; k + 4 <= K; k += 4) s0 = _mm256_fmadd_pd(load4d(x + k), _mm256_loadu_pd(a + k), s0);
  double s = VecOps<double>::hsum(_mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
  for (; k < K; ++k) s += static_cast<double>(x[k]) * a[k];
  return s;
}

// acc[k] += x[k] * c.
template <typename T>
__attribute__((noinline)) void vec_axpy_row(const T* x, double c, int64_t K, double* acc) {
  const __m256d cv = _mm256_set1_pd(c);
  int64_t k = 0;
  for (; k + 4 <= K; k += 4) {
    _mm256_storeu_pd(acc + k, _mm256_fmadd_pd(load4d(x + k), cv, _mm256_loadu_pd(acc + k)));
  }
  for (; k < K; ++k) acc[k] += static_cast<double>(x[k]) * c;
}

// x[k] = (x[k] * a[k]) * c in double, rounded to T (x[k] * c when a is null).
template <typename T>
__attribute__((noinline)) void vec_scale_row(T* x, const double* a, double c, int64_t K) {
  const __m256d cv = _mm256_set1_pd(c);
  int64_t k = 0;
  if (a != nullptr) {
    for (; k + 4 <= K; k += 4) {
      store4d(x + k, _mm256_mul_pd(_mm256_mul_pd(load4d(x + k), _mm256_loadu_pd(a + k)), cv));
    }
    for (; k < K; ++k) x[k] = static_cast<T>((static_cast<double>(x[k]) * a[k]) * c);
  } else {
    for (; k + 4 <= K; k += 4) store4d(x + k, _mm256_mul_pd(load4d(x + k), cv));
    for (; k < K; ++k) x[k] = static_cast<T>(static_cast<double>(x[k]) * c);
  }
}

}  // namespace
}  // namespace augcl

#include "avx2_end.h"
#endif  // vectorised kernel

// ------------------------------------------------------------------------------------------------------------
// Scalar kernel and the op
// ------------------------------------------------------------------------------------------------------------
namespace augcl {
namespace {

// The previous kernel (see the header): the fallback where the vectorised one cannot run.
template <typename T>
void sinkhorn_scalar(T* L, int64_t B, int64_t K, int64_t iterations) {
  const int64_t row_grain = cpu::grain(K);
  const int64_t col_grain = cpu::grain(B);
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

// ---- Exp-domain path (see the header): E = exp(S / eps - max) once, then the iterations as scaling vectors.

// Largest range R = (max S - min S) / eps for which the exp-domain path runs (fp32 work: E = exp(-R) stays a
// normal float with a factor e^7 of margin; fp64: codes >= e^-2R / K stay normal doubles; see the header).
constexpr double kExpDomainMaxRangeF32 = 80.0;
constexpr double kExpDomainMaxRangeF64 = 300.0;
// Row blocks of the column sums: at most kMaxColBlocks blocks of at least kMinBlockRows rows each, a function of B
// only (never of the thread count), so the per-block partial sums and their reduction run in a fixed order.
constexpr int64_t kMaxColBlocks = 64;
constexpr int64_t kMinBlockRows = 16;

// Which path the op takes. AUGCL_SINKHORN_DOMAIN (read on every call, like AUGCL_CPU_VEC): "log" forces the
// log-domain kernels; "exp" requires the exp-domain path and raises if the range of S / eps does not allow it
// (tests use it to see which path a call takes); unset or anything else chooses by the range.
enum class Domain { kAuto, kLog, kExp };
Domain requested_domain() {
  const char* env = std::getenv("AUGCL_SINKHORN_DOMAIN");
  if (env == nullptr) return Domain::kAuto;
  if (std::strcmp(env, "log") == 0) return Domain::kLog;
  if (std::strcmp(env, "exp") == 0) return Domain::kExp;
  return Domain::kAuto;
}

// Scalar row primitives (the same contracts as vec_exp_row_f32 / _f64, vec_dot_row, vec_axpy_row, vec_scale_row).
template <typename T>
struct ScalarExpOps {
  template <typename TS>
  static double exp_row(const TS* src, T* dst, double inv_eps, double m, int64_t K, double* acc) {
    double s = 0.0;
    for (int64_t k = 0; k < K; ++k) {
      const double x = std::fma(static_cast<double>(src[k]), inv_eps, -m);
      dst[k] = std::exp(static_cast<T>(x));
      s += static_cast<double>(dst[k]);
    }
    if (acc != nullptr) {
      for (int64_t k = 0; k < K; ++k) acc[k] += static_cast<double>(dst[k]);
    }
    return s;
  }
  static double dot_row(const T* x, const double* a, int64_t K) {
    double s = 0.0;
    for (int64_t k = 0; k < K; ++k) s += static_cast<double>(x[k]) * a[k];
    return s;
  }
  static void axpy_row(const T* x, double c, int64_t K, double* acc) {
    for (int64_t k = 0; k < K; ++k) acc[k] += static_cast<double>(x[k]) * c;
  }
  static void scale_row(T* x, const double* a, double c, int64_t K) {
    if (a != nullptr) {
      for (int64_t k = 0; k < K; ++k) x[k] = static_cast<T>((static_cast<double>(x[k]) * a[k]) * c);
    } else {
      for (int64_t k = 0; k < K; ++k) x[k] = static_cast<T>(static_cast<double>(x[k]) * c);
    }
  }
};

#ifdef AUGCL_SINKHORN_VEC
template <typename T>
struct VecExpOps {
  template <typename TS>
  static double exp_row(const TS* src, T* dst, double inv_eps, double m, int64_t K, double* acc) {
    if constexpr (std::is_same_v<T, double>) {
      return vec_exp_row_f64(src, dst, inv_eps, m, K, acc);
    } else {
      return vec_exp_row_f32<TS>(src, dst, inv_eps, m, K, acc);
    }
  }
  static double dot_row(const T* x, const double* a, int64_t K) { return vec_dot_row<T>(x, a, K); }
  static void axpy_row(const T* x, double c, int64_t K, double* acc) { vec_axpy_row<T>(x, c, K, acc); }
  static void scale_row(T* x, const double* a, double c, int64_t K) { vec_scale_row<T>(x, a, c, K); }
};
#endif

// The exp-domain Sinkhorn of scores src [B, K] (contiguous, finite, (max - min) / eps within the limit above) into
// the fresh buffer L [B, K]: E = exp(S / eps - m), m = max(S) / eps, then the codes in place.
template <typename T, typename Ops, typename TS>
void sinkhorn_exp_domain(const TS* src, T* L, int64_t B, int64_t K, int64_t iterations, double inv_eps, double m) {
  const int64_t rows_per_block = div_up(B, std::min<int64_t>(kMaxColBlocks, div_up(B, kMinBlockRows)));
  const int64_t n_blocks = div_up(B, rows_per_block);
  const int64_t block_grain = cpu::grain(rows_per_block * K);
  const int64_t row_grain = cpu::grain(K);
  const int64_t col_grain = cpu::grain(n_blocks);
  std::vector<double> partial(iterations > 0 ? static_cast<size_t>(n_blocks * K) : 0);  // per block, [K] each
  std::vector<double> a(static_cast<size_t>(K));  // per-prototype scaling u, normalised to max 1
  std::vector<double> row_sum(static_cast<size_t>(B));

  // body(b, column accumulator of the row's block or null) over all rows, blocks split between the threads.
  auto for_blocks = [&](auto&& body) {
    at::parallel_for(0, n_blocks, block_grain, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        double* acc = nullptr;
        if (!partial.empty()) {
          acc = partial.data() + q * K;
          std::fill(acc, acc + K, 0.0);
        }
        for (int64_t b = q * rows_per_block; b < std::min(B, (q + 1) * rows_per_block); ++b) body(b, acc);
      }
    });
  };

  // E = exp(S / eps - m); row sums (for the total) and, if a column step follows, column sums per block.
  for_blocks([&](int64_t b, double* acc) {
    row_sum[b] = Ops::template exp_row<TS>(src + b * K, L + b * K, inv_eps, m, K, acc);
  });

  if (iterations == 0) {  // codes = B * E / sum(E)
    double total = 0.0;
    for (int64_t b = 0; b < B; ++b) total += row_sum[b];
    const double scale = static_cast<double>(B) / total;
    at::parallel_for(0, B, row_grain, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) Ops::scale_row(L + b * K, nullptr, scale, K);
    });
    return;
  }

  for (int64_t it = 0; it < iterations; ++it) {
    // Column step: s[k] = sum_b E[b, k] v[b] (the blocks' partials added in block order); u[k] = 1 / s[k],
    // normalised so that max u = 1: u[k] = min(s) / s[k].
    at::parallel_for(0, K, col_grain, [&](int64_t k0, int64_t k1) {
      std::copy(partial.begin() + k0, partial.begin() + k1, a.begin() + k0);
      for (int64_t q = 1; q < n_blocks; ++q) {
        const double* p = partial.data() + q * K;
        for (int64_t k = k0; k < k1; ++k) a[k] += p[k];
      }
    });
    const double s_min = *std::min_element(a.begin(), a.end());
    for (int64_t k = 0; k < K; ++k) a[k] = s_min / a[k];

    if (it + 1 < iterations) {
      // Row step, v[b] = 1 / sum_k E[b, k] u[k], fused with the next column step's partial sums E[b, k] v[b].
      for_blocks([&](int64_t b, double* acc) {
        const T* x = L + b * K;
        Ops::axpy_row(x, 1.0 / Ops::dot_row(x, a.data(), K), K, acc);
      });
    } else {
      // Last row step fused with the output: codes[b, k] = E[b, k] u[k] / sum_k' E[b, k'] u[k'].
      at::parallel_for(0, B, row_grain, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          T* x = L + b * K;
          Ops::scale_row(x, a.data(), 1.0 / Ops::dot_row(x, a.data(), K), K);
        }
      });
    }
  }
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
  const int64_t B = scores.size(0), K = scores.size(1);
  const bool vec = cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed();
  (void)vec;  // unused where the vectorised kernel is not compiled

  // Exp-domain path when the range of S / eps allows it (never for non-finite scores: their range is inf or NaN).
  const Domain domain = requested_domain();
  if (domain != Domain::kLog && B > 0 && K > 0) {
    const auto minmax = at::aminmax(scores);
    const double smin = std::get<0>(minmax).item<double>(), smax = std::get<1>(minmax).item<double>();
    const double range = (smax - smin) / epsilon;
    const double limit = acc == at::kDouble ? kExpDomainMaxRangeF64 : kExpDomainMaxRangeF32;
    const bool exp_ok = range <= limit;  // false for NaN
    TORCH_CHECK(exp_ok || domain != Domain::kExp, "sinkhorn: AUGCL_SINKHORN_DOMAIN=exp, but the range of "
                "scores / epsilon, ", range, ", exceeds the exp-domain limit ", limit, " for ", acc);
    if (exp_ok) {
      const at::Tensor src = scores.contiguous();  // read in its own dtype
      at::Tensor out = at::empty({B, K}, scores.options().dtype(acc));
      const double inv_eps = 1.0 / epsilon, m = smax * inv_eps;
      auto run = [&](auto* s, auto* o) {
        using TS = std::remove_const_t<std::remove_pointer_t<decltype(s)>>;
        using T = std::remove_pointer_t<decltype(o)>;
#ifdef AUGCL_SINKHORN_VEC
        if (vec) {
          sinkhorn_exp_domain<T, VecExpOps<T>, TS>(s, o, B, K, iterations, inv_eps, m);
          return;
        }
#endif
        sinkhorn_exp_domain<T, ScalarExpOps<T>, TS>(s, o, B, K, iterations, inv_eps, m);
      };
      if (st == at::kDouble) {
        run(src.const_data_ptr<double>(), out.data_ptr<double>());
      } else if (st == at::kFloat) {
        run(src.const_data_ptr<float>(), out.data_ptr<float>());
      } else if (st == at::kHalf) {
        run(src.const_data_ptr<at::Half>(), out.data_ptr<float>());
      } else {
        run(src.const_data_ptr<at::BFloat16>(), out.data_ptr<float>());
      }
      return out;
    }
  }

  // L = S / eps in the accumulation dtype, contiguous: a fresh buffer (never aliases scores), returned as codes.
  at::Tensor L = at::div(scores.to(acc), epsilon).contiguous();
  if (B == 0 || K == 0) return L;

  // Log-domain kernels.
#ifdef AUGCL_SINKHORN_VEC
  if (vec) {
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
