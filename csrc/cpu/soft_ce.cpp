// soft_ce: SwAV's swapped prediction per crop, the soft-target cross-entropy of scores z [B, K] against targets
// t [B, K], fused (schema and formulas in csrc/augcl.cpp; reference augcl/reference/soft_ce.py).
//
// Forward, per row (at::parallel_for over rows), one pass over memory: the row is walked in chunks of kChunk
// columns; each chunk is read once from memory into x = z * inv_temp (a stack buffer, L1), which gives the chunk
// max, <t, x> and sum t; then the running sum of exp is rescaled to the new max and the chunk's exp(x - max)
// added (an online logsumexp per chunk, not per element: one exp per element). No [B, K] temporary.
// Backward, per row: w = sum_k t (one read of the row of t, then in L1), then one pass writing dz (and dt).
//
// Accumulation: fp32 when z and t are at most fp32 (sums of exp and the dot in fp32 lanes, the running sum and
// the row results in double, rounded to fp32 at the end), fp64 when either is fp64 (everything in double).
//
// Two kernels: a vectorised one (AVX2 + FMA + F16C compiled for this code only, like csrc/cpu/sinkhorn.cpp; fp32
// accumulation only, i.e. t fp32 and z fp16/bf16/fp32; exp is ATen's Vectorized<float>::exp_u20, whose exponents
// here are <= 0, a result below FLT_MIN relative to the row max being 0), used when cpu::cpu_has_avx2_fma() and
// not AUGCL_CPU_VEC=0; and a portable scalar one (std::exp) for everything else.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "vec_utils.h"

namespace augcl {
namespace {

constexpr int64_t kChunk = 512;  // columns per chunk of the online logsumexp (a 2 KiB buffer)

}  // namespace
}  // namespace augcl

// ------------------------------------------------------------------------------------------------------------
// Vectorised kernel (fp32 accumulation)
// ------------------------------------------------------------------------------------------------------------
#ifdef AUGCL_AVX2_REGION_OK
#define AUGCL_SOFT_CE_VEC 1
#include "avx2_begin.h"
#include <ATen/cpu/vec/vec.h>

#include "vec_avx2.h"

namespace augcl {
namespace {

using cpu::avx2::load8f;
using cpu::avx2::store8f;
using VecF = cpu::avx2::VecOps<float>;

// rows[b], lse[b] of one row (t fp32, z float / Half / BFloat16).
template <typename TZ>
__attribute__((noinline)) void soft_ce_fwd_row_vec(const TZ* z, const float* t, int64_t K, float inv, float* rows,
                                                   float* lse) {
  alignas(32) float x[augcl::kChunk];
  const __m256 invv = _mm256_set1_ps(inv);
  __m256 dotv = _mm256_setzero_ps(), wv = _mm256_setzero_ps();
  double dot = 0.0, w = 0.0, s = 0.0;
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t c0 = 0; c0 < K; c0 += augcl::kChunk) {
    const int64_t n = std::min<int64_t>(augcl::kChunk, K - c0);
    const int64_t nv = n & ~int64_t(7);
    __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t k = 0; k < nv; k += 8) {
      const __m256 xv = _mm256_mul_ps(load8f(z + c0 + k), invv);
      const __m256 tv = _mm256_loadu_ps(t + c0 + k);
      _mm256_store_ps(x + k, xv);
      mv = _mm256_max_ps(mv, xv);
      dotv = _mm256_fmadd_ps(tv, xv, dotv);
      wv = _mm256_add_ps(wv, tv);
    }
    float mc = VecF::hmax(mv);
    for (int64_t k = nv; k < n; ++k) {
      const float xk = static_cast<float>(z[c0 + k]) * inv;
      x[k] = xk;
      mc = std::max(mc, xk);
      dot += static_cast<double>(t[c0 + k]) * xk;
      w += t[c0 + k];
    }
    const float m_new = std::max(m, mc);
    const float shift = cpu::lse_shift(m_new);
    if (s != 0.0) s *= std::exp(static_cast<double>(m) - static_cast<double>(shift));
    m = m_new;
    const __m256 sv0 = _mm256_set1_ps(shift);
    __m256 ev = _mm256_setzero_ps();
    for (int64_t k = 0; k < nv; k += 8) ev = _mm256_add_ps(ev, VecF::exp(_mm256_sub_ps(_mm256_load_ps(x + k), sv0)));
    double sc = VecF::hsum(ev);
    for (int64_t k = nv; k < n; ++k) sc += std::exp(static_cast<double>(x[k]) - shift);
    s += sc;
  }
  dot += VecF::hsum(dotv);
  w += VecF::hsum(wv);
  const double l = static_cast<double>(cpu::lse_shift(m)) + std::log(s);
  *lse = static_cast<float>(l);
  *rows = static_cast<float>(w * l - dot);
}

// dz (and dt when given) of one row.
template <typename TZ>
__attribute__((noinline)) void soft_ce_bwd_row_vec(float g, const TZ* z, const float* t, float lse, int64_t K,
                                                   float inv, TZ* dz, float* dt) {
  const int64_t nv = K & ~int64_t(7);
  __m256 wv = _mm256_setzero_ps();
  for (int64_t k = 0; k < nv; k += 8) wv = _mm256_add_ps(wv, _mm256_loadu_ps(t + k));
  double w = VecF::hsum(wv);
  for (int64_t k = nv; k < K; ++k) w += t[k];
  const float c1 = static_cast<float>(static_cast<double>(g) * inv * w), c2 = g * inv;
  const __m256 invv = _mm256_set1_ps(inv), lsev = _mm256_set1_ps(lse), c1v = _mm256_set1_ps(c1),
               c2v = _mm256_set1_ps(c2), gv = _mm256_set1_ps(g);
  for (int64_t k = 0; k < nv; k += 8) {
    const __m256 xv = _mm256_mul_ps(load8f(z + k), invv);
    const __m256 tv = _mm256_loadu_ps(t + k);
    const __m256 p = VecF::exp(_mm256_sub_ps(xv, lsev));
    store8f(dz + k, _mm256_fmsub_ps(c1v, p, _mm256_mul_ps(c2v, tv)));
    if (dt != nullptr) _mm256_storeu_ps(dt + k, _mm256_mul_ps(gv, _mm256_sub_ps(lsev, xv)));
  }
  for (int64_t k = nv; k < K; ++k) {
    const float xk = static_cast<float>(z[k]) * inv;
    dz[k] = static_cast<TZ>(c1 * std::exp(xk - lse) - c2 * t[k]);
    if (dt != nullptr) dt[k] = g * (lse - xk);
  }
}

}  // namespace
}  // namespace augcl

#include "avx2_end.h"
#endif  // vectorised kernel

// ------------------------------------------------------------------------------------------------------------
// Scalar kernel and the ops
// ------------------------------------------------------------------------------------------------------------
namespace augcl {
namespace {

// A compensated (Neumaier) running sum in double. The scalar kernels' w = sum_k t_k and <t, z> / T run over K terms
// (thousands of prototypes): a plain serial double sum was off by ~K ulps (4.3e-14 for w at K = 3000, where torch's
// pairwise sum is off by 4.4e-16), which put the float64 row loss ~200 ulps from the reference; compensated, the
// error is a few ulps whatever K.
struct CompensatedSum {
  double sum = 0.0, comp = 0.0;
  void add(double x) {
    const double t = sum + x;
    comp += std::fabs(sum) >= std::fabs(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }
  double value() const { return sum + comp; }
};

// A: accumulation type (float or double). The running sum, dot and weight are kept in double either way (dot and
// weight compensated).
template <typename TZ, typename TT, typename A>
void soft_ce_fwd_row_scalar(const TZ* z, const TT* t, int64_t K, A inv, A* rows, A* lse) {
  A x[kChunk];
  CompensatedSum dot, w;
  double s = 0.0;
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t c0 = 0; c0 < K; c0 += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, K - c0);
    A mc = -std::numeric_limits<A>::infinity();
    for (int64_t k = 0; k < n; ++k) {
      const A xk = static_cast<A>(z[c0 + k]) * inv;
      const A tk = static_cast<A>(t[c0 + k]);
      x[k] = xk;
      mc = (std::isnan(mc) || mc >= xk) ? mc : xk;
      dot.add(static_cast<double>(tk) * static_cast<double>(xk));
      w.add(static_cast<double>(tk));
    }
    const A m_new = (std::isnan(m) || m >= mc) ? m : mc;
    const A shift = cpu::lse_shift(m_new);
    if (s != 0.0) s *= std::exp(static_cast<double>(m) - static_cast<double>(shift));
    m = m_new;
    A sc = 0;
    for (int64_t k = 0; k < n; ++k) sc += std::exp(x[k] - shift);
    s += static_cast<double>(sc);
  }
  const double l = static_cast<double>(cpu::lse_shift(m)) + std::log(s);
  *lse = static_cast<A>(l);
  *rows = static_cast<A>(w.value() * l - dot.value());
}

template <typename TZ, typename TT, typename A>
void soft_ce_bwd_row_scalar(A g, const TZ* z, const TT* t, A lse, int64_t K, A inv, TZ* dz, TT* dt) {
  CompensatedSum ws;
  for (int64_t k = 0; k < K; ++k) ws.add(static_cast<double>(t[k]));
  const double w = ws.value();
  const A c1 = static_cast<A>(static_cast<double>(g) * static_cast<double>(inv) * w), c2 = g * inv;
  for (int64_t k = 0; k < K; ++k) {
    const A xk = static_cast<A>(z[k]) * inv;
    dz[k] = static_cast<TZ>(c1 * std::exp(xk - lse) - c2 * static_cast<A>(t[k]));
    if (dt != nullptr) dt[k] = static_cast<TT>(g * (lse - xk));
  }
}

bool use_vec() {
#ifdef AUGCL_SOFT_CE_VEC
  return cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed();
#else
  return false;
#endif
}

void check_inputs(const at::Tensor& z, const at::Tensor& t) {
  TORCH_CHECK(z.dim() == 2 && t.dim() == 2, "soft_ce: z and t must be 2-D, got ", z.sizes(), " and ", t.sizes());
  TORCH_CHECK(z.sizes() == t.sizes(), "soft_ce: z and t must have the same shape, got ", z.sizes(), " and ",
              t.sizes());
  TORCH_CHECK(z.scalar_type() == at::kHalf || z.scalar_type() == at::kBFloat16 || z.scalar_type() == at::kFloat ||
                  z.scalar_type() == at::kDouble,
              "soft_ce: z must be fp16/bf16/fp32/fp64, got ", z.scalar_type());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "soft_ce: t must be fp32/fp64, got ", t.scalar_type());
}

at::ScalarType acc_type(const at::Tensor& z, const at::Tensor& t) {
  return (z.scalar_type() == at::kDouble || t.scalar_type() == at::kDouble) ? at::kDouble : at::kFloat;
}

// Calls f(TZ*, TT*, A*) with null pointers of z's, t's and the accumulation types.
template <typename F>
void dispatch_types(at::ScalarType zt, at::ScalarType tt, F&& f) {
  auto with_t = [&](auto* zp) {
    using TZ = std::remove_pointer_t<decltype(zp)>;
    if (tt == at::kDouble) {
      f(zp, static_cast<double*>(nullptr), static_cast<double*>(nullptr));
    } else if constexpr (std::is_same<TZ, double>::value) {
      f(zp, static_cast<float*>(nullptr), static_cast<double*>(nullptr));
    } else {
      f(zp, static_cast<float*>(nullptr), static_cast<float*>(nullptr));
    }
  };
  switch (zt) {
    case at::kDouble: with_t(static_cast<double*>(nullptr)); break;
    case at::kFloat: with_t(static_cast<float*>(nullptr)); break;
    case at::kHalf: with_t(static_cast<at::Half*>(nullptr)); break;
    default: with_t(static_cast<at::BFloat16*>(nullptr)); break;
  }
}

std::tuple<at::Tensor, at::Tensor> soft_ce_cpu(const at::Tensor& z_in, const at::Tensor& t_in, double inv_temp) {
  check_inputs(z_in, t_in);
  const at::Tensor z = z_in.contiguous(), t = t_in.contiguous();
  const int64_t B = z.size(0), K = z.size(1);
  const auto acc = acc_type(z, t);
  at::Tensor rows = at::empty({B}, z.options().dtype(acc));
  at::Tensor lse = at::empty({B}, z.options().dtype(acc));
  if (B == 0) return {rows, lse};
  const bool vec = use_vec();
  dispatch_types(z.scalar_type(), t.scalar_type(), [&](auto* zp, auto* tp, auto* ap) {
    using TZ = std::remove_pointer_t<decltype(zp)>;
    using TT = std::remove_pointer_t<decltype(tp)>;
    using A = std::remove_pointer_t<decltype(ap)>;
    const TZ* zd = z.const_data_ptr<TZ>();
    const TT* td = t.const_data_ptr<TT>();
    A* rd = rows.data_ptr<A>();
    A* ld = lse.data_ptr<A>();
    const A inv = static_cast<A>(inv_temp);
    at::parallel_for(0, B, cpu::grain(K), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
#ifdef AUGCL_SOFT_CE_VEC
        if constexpr (std::is_same<TT, float>::value && std::is_same<A, float>::value) {
          if (vec) {
            soft_ce_fwd_row_vec<TZ>(zd + b * K, td + b * K, K, inv, rd + b, ld + b);
            continue;
          }
        }
#endif
        soft_ce_fwd_row_scalar<TZ, TT, A>(zd + b * K, td + b * K, K, inv, rd + b, ld + b);
      }
    });
  });
  return {rows, lse};
}

std::tuple<at::Tensor, at::Tensor> soft_ce_backward_cpu(const at::Tensor& grad_rows, const at::Tensor& z_in,
                                                        const at::Tensor& t_in, const at::Tensor& lse_in,
                                                        double inv_temp, bool compute_dt) {
  check_inputs(z_in, t_in);
  const int64_t B = z_in.size(0), K = z_in.size(1);
  const auto acc = acc_type(z_in, t_in);
  TORCH_CHECK(grad_rows.dim() == 1 && grad_rows.size(0) == B && lse_in.dim() == 1 && lse_in.size(0) == B,
              "soft_ce_backward: grad_rows and lse must be [B]");
  const at::Tensor z = z_in.contiguous(), t = t_in.contiguous();
  const at::Tensor g = grad_rows.to(acc).contiguous(), lse = lse_in.to(acc).contiguous();
  at::Tensor dz = at::empty({B, K}, z.options());
  at::Tensor dt = compute_dt ? at::empty({B, K}, t.options()) : at::empty({0}, t.options());
  if (B == 0 || K == 0) return {dz, dt};
  const bool vec = use_vec();
  dispatch_types(z.scalar_type(), t.scalar_type(), [&](auto* zp, auto* tp, auto* ap) {
    using TZ = std::remove_pointer_t<decltype(zp)>;
    using TT = std::remove_pointer_t<decltype(tp)>;
    using A = std::remove_pointer_t<decltype(ap)>;
    const TZ* zd = z.const_data_ptr<TZ>();
    const TT* td = t.const_data_ptr<TT>();
    const A* gd = g.const_data_ptr<A>();
    const A* ld = lse.const_data_ptr<A>();
    TZ* dzd = dz.data_ptr<TZ>();
    TT* dtd = compute_dt ? dt.data_ptr<TT>() : nullptr;
    const A inv = static_cast<A>(inv_temp);
    at::parallel_for(0, B, cpu::grain(K), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        TT* dtr = dtd != nullptr ? dtd + b * K : nullptr;
#ifdef AUGCL_SOFT_CE_VEC
        if constexpr (std::is_same<TT, float>::value && std::is_same<A, float>::value) {
          if (vec) {
            soft_ce_bwd_row_vec<TZ>(gd[b], zd + b * K, td + b * K, ld[b], K, inv, dzd + b * K, dtr);
            continue;
          }
        }
#endif
        soft_ce_bwd_row_scalar<TZ, TT, A>(gd[b], zd + b * K, td + b * K, ld[b], K, inv, dzd + b * K, dtr);
      }
    });
  });
  return {dz, dt};
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CPU, m) {
  m.impl("soft_ce", &soft_ce_cpu);
  m.impl("soft_ce_backward", &soft_ce_backward_cpu);
}

}  // namespace augcl
