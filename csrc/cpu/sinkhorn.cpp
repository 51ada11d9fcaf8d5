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
// Memory: one [B, K] work buffer in the accumulation dtype (fp32; fp64 for fp64 scores), which becomes the
// output; plus O(K) column statistics. Every step is in place.
//
// Parallelism and determinism: rows (the global and per-row logsumexps, the subtractions, the final exp) go to
// at::parallel_for over rows; the per-column logsumexp goes to at::parallel_for over column ranges, each task
// sweeping all rows of its columns in row order (contiguous reads within a row). Every reduction is serial over
// a fixed order inside one task and the global logsumexp adds the row partials serially in double, so results
// are bitwise identical for any thread count. logsumexps are two-pass: max, then sum of exp(x - max); an
// infinite max is replaced by 0 (as torch.logsumexp does), so an all -inf slice gives -inf, not NaN.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace augcl {
namespace {

constexpr int64_t kGrainCells = int64_t(1) << 14;  // min cells per parallel_for task

template <typename T>
T finite_or_zero(T m) {
  return std::isinf(m) ? T(0) : m;
}

template <typename T>
void sinkhorn_impl(T* L, int64_t B, int64_t K, int64_t iterations) {
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
      m = finite_or_zero(m);
      T s = 0;
      for (int64_t k = 0; k < K; ++k) s += std::exp(r[k] - m);
      row_max[b] = m;
      row_sum[b] = s;
    }
  });
  T gmax = -std::numeric_limits<T>::infinity();
  for (int64_t b = 0; b < B; ++b) gmax = std::max(gmax, row_max[b] + std::log(row_sum[b]));
  gmax = finite_or_zero(gmax);
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
        col_max[k] = finite_or_zero(col_max[k]);
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
        m = finite_or_zero(m);
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
  if (acc == at::kDouble) {
    sinkhorn_impl<double>(L.data_ptr<double>(), B, K, iterations);
  } else {
    sinkhorn_impl<float>(L.data_ptr<float>(), B, K, iterations);
  }
  return L;
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CPU, m) { m.impl("sinkhorn", &sinkhorn_cpu); }

}  // namespace augcl
