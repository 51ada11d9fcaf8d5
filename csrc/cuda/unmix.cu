// CUDA kernel of augcl::mix_images (Un-Mix image mixtures) and its backward.
//
// STATUS: compile-checked only (nvcc, sm_80 / sm_90); it has not been run on a GPU. The CPU build never compiles
// this file. tests/test_unmix_kernels.py::test_gpu_forward_backward checks it against the reference on a GPU.
//
// Math (augcl/reference/unmix.py is the oracle), row i of x [B, C, H, W], p = partner[i]:
//   mixup row:  v = a_i * x[i] + b_i * x[p],  a_i = lam[i], b_i = 1 - a_i   (acc_t: double if x or out is double)
//   CutMix row: v = x[p] inside the half-open box (y0, y1, x0, x1) of row i, x[i] outside
//   v /= 255 (uint8), v -= mean[c], v /= std[c], out = (out_t) v
// The mixup line uses __fmul_rn / __fadd_rn (no FMA contraction) and the divisions are IEEE ('/' without
// --use_fast_math), so the results are the reference's bitwise, as on the CPU.
//
// Layout: a row is one contiguous block of C*H*W elements in NCHW and in channels_last alike; only the decoding
// of (c, y, w) from the offset differs. Grid (cdiv(CHW, threads * VEC), B): blockIdx.y is the row, each thread
// owns VEC consecutive elements of it. When CHW % VEC == 0 and x is 16-byte aligned, the VEC elements are one
// 16-byte load (uint8: 16 pixels, fp16/bf16: 8, fp32: 4, fp64: 2); otherwise scalar loads. A CutMix thread loads
// x[i] only if one of its elements lies outside the box and x[p] only if one lies inside, so away from the box
// edges every input element is read once per output element. Stores are per element (the output dtype's width
// differs from the input's). int64 offsets; the current CUDA stream. AUGCL_UNMIX_CUDA_FAST=1 switches on a
// performance candidate: one (c, y, w) decode per thread and one vector store of the VEC outputs (see launch_fwd).
//
// Backward: grad_x[j] = own_j + sum over the rows i with partner[i] == j (in increasing i) of cross_i; the lists
// come from a stable argsort of partner (CSR, built with torch ops on the same stream, no host sync). Each grad_x
// element is written by one thread with a fixed summation order: no atomics, deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <type_traits>

#include "../unmix_checks.h"

namespace augcl {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxRows = 65535;  // grid.y limit

__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }

struct Geometry {
  int64_t C, H, W, CHW;
  bool channels_last;
  // (c, y, w) of the next element of the row, without a division (the layout's innermost index first).
  __device__ __forceinline__ void advance(int64_t& c, int64_t& y, int64_t& w) const {
    if (channels_last) {
      if (++c == C) { c = 0; if (++w == W) { w = 0; ++y; } }
    } else {
      if (++w == W) { w = 0; if (++y == H) { y = 0; ++c; } }
    }
  }
  __device__ __forceinline__ void decode(int64_t k, int64_t& c, int64_t& y, int64_t& w) const {
    if (channels_last) {
      c = k % C;
      w = (k / C) % W;
      y = k / (C * W);
    } else {
      const int64_t hw = H * W;
      c = k / hw;
      y = (k % hw) / W;
      w = k % W;
    }
  }
};

__device__ __forceinline__ bool in_box(const int64_t* bx, int64_t y, int64_t w) {
  return y >= bx[0] && y < bx[1] && w >= bx[2] && w < bx[3];
}

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Loads VEC consecutive elements starting at src (vectorised when `vec` is true) into r.
template <typename T, int VEC>
__device__ __forceinline__ void load_pack(const T* src, int64_t n_valid, bool vec, T (&r)[VEC]) {
  if (vec && n_valid == VEC) {
    const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(src);
#pragma unroll
    for (int e = 0; e < VEC; ++e) r[e] = p.v[e];
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) r[e] = e < n_valid ? src[e] : T(0);
  }
}

template <typename in_t, typename out_t, typename acc_t, int VEC>
__global__ void mix_images_fwd_kernel(const in_t* __restrict__ x, out_t* __restrict__ out,
                                      const float* __restrict__ lam, const bool* __restrict__ cut,
                                      const int64_t* __restrict__ boxes, const int64_t* __restrict__ partner,
                                      const acc_t* __restrict__ mean, const acc_t* __restrict__ stdv, Geometry geo,
                                      bool vec, bool fast, bool vec_out) {
  const int64_t i = blockIdx.y;
  const int64_t k0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (k0 >= geo.CHW) return;
  const int64_t n_valid = geo.CHW - k0 < VEC ? geo.CHW - k0 : VEC;
  const int64_t p = partner[i];
  const bool is_cut = cut[i];
  const int64_t* bx = boxes + 4 * i;
  int64_t cc[VEC];
  bool inside[VEC];
  bool any_in = false, any_out = false;
  int64_t c0 = 0, y0 = 0, w0 = 0;
  if (fast) geo.decode(k0, c0, y0, w0);  // candidate: one decode per thread, then advance (no int64 divisions)
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    int64_t y = 0, w = 0;
    if (fast) {
      cc[e] = c0;
      y = y0;
      w = w0;
      geo.advance(c0, y0, w0);
    } else {
      geo.decode(k0 + e, cc[e], y, w);
    }
    inside[e] = is_cut && in_box(bx, y, w);
    if (e < n_valid) {
      any_in |= inside[e];
      any_out |= !inside[e];
    }
  }
  in_t xi[VEC], xp[VEC];
  if (!is_cut || any_out) load_pack<in_t, VEC>(x + i * geo.CHW + k0, n_valid, vec, xi);
  if (!is_cut || any_in) load_pack<in_t, VEC>(x + p * geo.CHW + k0, n_valid, vec, xp);
  const acc_t a = static_cast<acc_t>(lam[i]);
  const acc_t b = acc_t(1) - a;
  out_t* o = out + i * geo.CHW + k0;
  Pack<out_t, VEC> res;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    if (e >= n_valid) break;
    acc_t v;
    if (is_cut) {
      v = static_cast<acc_t>(inside[e] ? xp[e] : xi[e]);
    } else {
      v = add_rn(mul_rn(a, static_cast<acc_t>(xi[e])), mul_rn(b, static_cast<acc_t>(xp[e])));
    }
    if constexpr (std::is_same_v<in_t, uint8_t>) v = v / acc_t(255);
    if (mean != nullptr) v = v - mean[cc[e]];
    if (stdv != nullptr) v = v / stdv[cc[e]];
    res.v[e] = static_cast<out_t>(v);
  }
  if (fast && vec_out && n_valid == VEC) {
    *reinterpret_cast<Pack<out_t, VEC>*>(o) = res;  // candidate: the VEC outputs in one aligned vector store
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if (e < n_valid) o[e] = res.v[e];
    }
  }
}

template <typename g_t, typename out_t, typename acc_t>
__global__ void mix_images_bwd_kernel(const g_t* __restrict__ g, out_t* __restrict__ gx,
                                      const float* __restrict__ lam, const bool* __restrict__ cut,
                                      const int64_t* __restrict__ boxes, const int64_t* __restrict__ start,
                                      const int64_t* __restrict__ rows, const acc_t* __restrict__ stdv,
                                      Geometry geo) {
  const int64_t j = blockIdx.y;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= geo.CHW) return;
  int64_t c, y, w;
  geo.decode(k, c, y, w);
  auto scaled = [&](int64_t r) {
    acc_t v = static_cast<acc_t>(g[r * geo.CHW + k]);
    if (stdv != nullptr) v = v / stdv[c];
    return v;
  };
  const acc_t gj = scaled(j);
  acc_t acc;
  if (cut[j]) {
    acc = in_box(boxes + 4 * j, y, w) ? acc_t(0) : gj;
  } else {
    acc = mul_rn(static_cast<acc_t>(lam[j]), gj);
  }
  for (int64_t q = start[j]; q < start[j + 1]; ++q) {
    const int64_t i = rows[q];
    const acc_t gi = scaled(i);
    acc_t term;
    if (cut[i]) {
      term = in_box(boxes + 4 * i, y, w) ? gi : acc_t(0);
    } else {
      term = mul_rn(acc_t(1) - static_cast<acc_t>(lam[i]), gi);
    }
    acc = add_rn(acc, term);
  }
  gx[j * geo.CHW + k] = static_cast<out_t>(acc);
}

using unmix::use_channels_last;

// The CUDA grid's own limit on top of the shared checks: one grid row (blockIdx.y) per image.
void check_rows(const at::Tensor& t4) {
  TORCH_CHECK(t4.size(0) <= kMaxRows, "mix_images: the CUDA kernel takes at most ", kMaxRows, " rows, got ",
              t4.size(0));
}

// [C] acc_t contiguous on the device, or an undefined tensor (-> nullptr) when absent.
at::Tensor channel_vector(const std::optional<at::Tensor>& t, int64_t C, const at::Tensor& ref,
                          at::ScalarType acc, const char* name) {
  if (!t.has_value()) return at::Tensor();
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "mix_images: ", name, " must hold C = ", C, " values");
  return t->to(ref.device(), acc).contiguous();
}

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename in_t, typename out_t, typename acc_t>
void launch_fwd(const at::Tensor& xc, at::Tensor& out, const at::Tensor& lam, const at::Tensor& cut,
                const at::Tensor& boxes, const at::Tensor& partner, const at::Tensor& mean, const at::Tensor& stdv,
                const Geometry& geo) {
  constexpr int VEC = 16 / sizeof(in_t);
  const bool vec = geo.CHW % VEC == 0 && reinterpret_cast<uintptr_t>(xc.data_ptr()) % 16 == 0;
  // Performance candidate (benchmarks/gpu_candidates.py), off unless AUGCL_UNMIX_CUDA_FAST=1 (read at every call):
  // (c, y, w) decoded once per thread instead of once per element (VEC - 1 fewer sets of int64 divisions by the
  // run-time C, H, W), and the VEC outputs stored as one vector when aligned. Same arithmetic: bitwise equal.
  const char* fast_env = std::getenv("AUGCL_UNMIX_CUDA_FAST");
  const bool fast = fast_env != nullptr && fast_env[0] == '1' && fast_env[1] == '\0';
  const bool vec_out =
      geo.CHW % VEC == 0 && reinterpret_cast<uintptr_t>(out.data_ptr()) % sizeof(Pack<out_t, VEC>) == 0;
  const int64_t per_block = static_cast<int64_t>(kThreads) * VEC;
  const dim3 grid(static_cast<unsigned>((geo.CHW + per_block - 1) / per_block), static_cast<unsigned>(xc.size(0)));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  mix_images_fwd_kernel<in_t, out_t, acc_t, VEC><<<grid, kThreads, 0, stream>>>(
      xc.data_ptr<in_t>(), out.data_ptr<out_t>(), lam.data_ptr<float>(), cut.data_ptr<bool>(),
      boxes.data_ptr<int64_t>(), partner.data_ptr<int64_t>(), ptr_or_null<acc_t>(mean), ptr_or_null<acc_t>(stdv),
      geo, vec, fast, vec_out);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor mix_images_cuda(const at::Tensor& x, const at::Tensor& lam, const at::Tensor& cutmix,
                           const at::Tensor& boxes, const at::Tensor& partner, const std::optional<at::Tensor>& mean,
                           const std::optional<at::Tensor>& std, at::ScalarType out_dtype) {
  unmix::check_forward(x, lam, cutmix, boxes, partner, out_dtype);
  check_rows(x);
  const auto st = x.scalar_type();
  const c10::cuda::CUDAGuard guard(x.device());
  const bool cl = use_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor xc = x.contiguous(fmt);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_dtype).memory_format(fmt));
  if (out.numel() == 0) return out;
  const Geometry geo{x.size(1), x.size(2), x.size(3), x.size(1) * x.size(2) * x.size(3), cl};
  const bool wide = st == at::kDouble || out_dtype == at::kDouble;
  const auto acc = wide ? at::kDouble : at::kFloat;
  const at::Tensor mean_t = channel_vector(mean, geo.C, x, acc, "mean");
  const at::Tensor std_t = channel_vector(std, geo.C, x, acc, "std");
  const at::Tensor lam_c = lam.contiguous(), cut_c = cutmix.contiguous(), box_c = boxes.contiguous(),
                   par_c = partner.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, st, "mix_images_cuda", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "mix_images_cuda_out", [&] {
      using out_t = scalar_t;
      using acc_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>, double, float>;
      launch_fwd<in_t, out_t, acc_t>(xc, out, lam_c, cut_c, box_c, par_c, mean_t, std_t, geo);
    });
  });
  return out;
}

at::Tensor mix_images_backward_cuda(const at::Tensor& grad_out, const at::Tensor& lam, const at::Tensor& cutmix,
                                    const at::Tensor& boxes, const at::Tensor& partner,
                                    const std::optional<at::Tensor>& std, at::ScalarType x_dtype) {
  unmix::check_backward(grad_out, lam, cutmix, boxes, partner, x_dtype);
  check_rows(grad_out);
  const auto gt = grad_out.scalar_type();
  const c10::cuda::CUDAGuard guard(grad_out.device());
  const bool cl = use_channels_last(grad_out);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor g = grad_out.contiguous(fmt);
  at::Tensor gx = at::empty(grad_out.sizes(), grad_out.options().dtype(x_dtype).memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const int64_t B = g.size(0);
  const Geometry geo{g.size(1), g.size(2), g.size(3), g.size(1) * g.size(2) * g.size(3), cl};
  // CSR inverse of partner: rows sorted by partner, ties in increasing row (stable sort); start[j] = the number of
  // partners < j, a binary search of 0..B in the sorted partners on the device. (A bincount would size its output
  // from the largest partner, read back to the host: one sync per backward.)
  const auto sorted = partner.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor rows = std::get<1>(sorted).contiguous();
  const at::Tensor start = at::searchsorted(std::get<0>(sorted), at::arange(B + 1, partner.options())).contiguous();
  const bool wide = gt == at::kDouble || x_dtype == at::kDouble;
  const at::Tensor std_t = channel_vector(std, geo.C, g, wide ? at::kDouble : at::kFloat, "std");
  const at::Tensor lam_c = lam.contiguous(), cut_c = cutmix.contiguous(), box_c = boxes.contiguous();
  const dim3 grid(static_cast<unsigned>((geo.CHW + kThreads - 1) / kThreads), static_cast<unsigned>(B));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt, "mix_images_backward_cuda", [&] {
    using g_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_dtype, "mix_images_backward_cuda_out", [&] {
      using out_t = scalar_t;
      using acc_t = std::conditional_t<std::is_same_v<g_t, double> || std::is_same_v<out_t, double>, double, float>;
      mix_images_bwd_kernel<g_t, out_t, acc_t><<<grid, kThreads, 0, stream>>>(
          g.data_ptr<g_t>(), gx.data_ptr<out_t>(), lam_c.data_ptr<float>(), cut_c.data_ptr<bool>(),
          box_c.data_ptr<int64_t>(), start.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), ptr_or_null<acc_t>(std_t),
          geo);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CUDA, m) {
  m.impl("mix_images", &mix_images_cuda);
  m.impl("mix_images_backward", &mix_images_backward_cuda);
}

}  // namespace augcl
