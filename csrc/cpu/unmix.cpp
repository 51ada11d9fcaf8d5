// CPU kernel of augcl::mix_images (Un-Mix image mixtures) and its backward.
//
// Math (augcl/reference/unmix.py is the oracle), row i of x [B, C, H, W], p = partner[i]:
//   mixup row:  v = a_i * x[i] + b_i * x[p],  a_i = lam[i], b_i = 1 - a_i   (in acc_t)
//   CutMix row: v = x[p] inside the half-open box (y0, y1, x0, x1) of row i, x[i] outside (a copy)
//   then v /= 255 for uint8 x, v -= mean[c], v /= std[c]; out = (out_t) v.
// acc_t is double when x or out is double, else float. Every step is one rounded operation in the same order as
// the reference (mul, mul, add; div; sub; div), so the results agree bitwise with it on the CPU (the build does
// not enable FMA contraction: no -mfma / -march flags).
//
// Backward (x floating), g' = grad_out / std[c] in acc_t:
//   grad_x[j] = own_j + sum over i with partner[i] == j, in increasing i, of cross_i
//   own_i = a_i g'_i (mixup) | g'_i outside the box, 0 inside (CutMix)
//   cross_i = b_i g'_i (mixup) | g'_i inside the box, 0 outside (CutMix)
// The inverse partner lists (CSR, filled in increasing i) make every grad_x element owned by one task: no
// atomics, deterministic for any thread count, and the same addition order as the reference's index_add_.
//
// Layouts: NCHW-contiguous works on (row, channel) planes of H*W contiguous elements; channels_last on
// (row, y) lines of W*C contiguous elements. Other strides are made contiguous (NCHW) first. at::parallel_for
// (OpenMP) spreads the planes / lines over threads. Offsets are int64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "../unmix_checks.h"

namespace augcl {
namespace {

using unmix::use_channels_last;

// Per-row parameters, read once on the host side of the CPU kernel.
struct RowParams {
  std::vector<float> lam;
  std::vector<uint8_t> cut;
  std::vector<int64_t> box;  // [B, 4]
  std::vector<int64_t> partner;
};

RowParams read_params(const at::Tensor& lam, const at::Tensor& cutmix, const at::Tensor& boxes,
                      const at::Tensor& partner, int64_t H, int64_t W) {
  const int64_t B = lam.size(0);
  RowParams rp;
  auto l = lam.contiguous(), c = cutmix.contiguous(), b = boxes.contiguous(), p = partner.contiguous();
  rp.lam.assign(l.data_ptr<float>(), l.data_ptr<float>() + B);
  const bool* cp = c.data_ptr<bool>();
  rp.cut.resize(B);
  for (int64_t i = 0; i < B; ++i) rp.cut[i] = cp[i] ? 1 : 0;
  rp.box.assign(b.data_ptr<int64_t>(), b.data_ptr<int64_t>() + 4 * B);
  rp.partner.assign(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + B);
  for (int64_t i = 0; i < B; ++i) {
    TORCH_CHECK(rp.partner[i] >= 0 && rp.partner[i] < B, "mix_images: partner[", i, "] = ", rp.partner[i],
                " is outside [0, ", B, ")");
    if (rp.cut[i]) {
      const int64_t* bx = &rp.box[4 * i];
      TORCH_CHECK(0 <= bx[0] && bx[0] <= bx[1] && bx[1] <= H && 0 <= bx[2] && bx[2] <= bx[3] && bx[3] <= W,
                  "mix_images: boxes[", i, "] is not a box inside the ", H, "x", W, " image");
    }
  }
  return rp;
}

template <typename acc_t>
std::vector<acc_t> channel_vector(const std::optional<at::Tensor>& t, int64_t C, const char* name) {
  std::vector<acc_t> v;
  if (!t.has_value()) return v;
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "mix_images: ", name, " must hold C = ", C, " values");
  at::Tensor tc = t->to(at::kCPU, c10::CppTypeToScalarType<acc_t>::value).contiguous();
  v.assign(tc.data_ptr<acc_t>(), tc.data_ptr<acc_t>() + C);
  return v;
}

// v /= 255 (uint8), v -= mean[c], v /= std[c]: one rounded operation each, as in the reference.
template <typename in_t, typename acc_t>
struct Convert {
  const acc_t* mean;  // nullptr = none
  const acc_t* stdv;  // nullptr = none
  inline acc_t operator()(acc_t v, int64_t c) const {
    if constexpr (std::is_same_v<in_t, uint8_t>) v = v / acc_t(255);
    if (mean) v = v - mean[c];
    if (stdv) v = v / stdv[c];
    return v;
  }
};

template <typename in_t, typename out_t, typename acc_t>
void mix_forward_impl(const in_t* x, out_t* out, const RowParams& rp, const std::vector<acc_t>& mean,
                      const std::vector<acc_t>& stdv, int64_t B, int64_t C, int64_t H, int64_t W, bool cl) {
  const Convert<in_t, acc_t> conv{mean.empty() ? nullptr : mean.data(), stdv.empty() ? nullptr : stdv.data()};
  const int64_t HW = H * W;
  // One element: mixup value or a copy from `src` (CutMix), then the conversion.
  auto mixup = [&](acc_t a, acc_t b, in_t xi, in_t xp, int64_t c) {
    return static_cast<out_t>(conv(a * static_cast<acc_t>(xi) + b * static_cast<acc_t>(xp), c));
  };
  auto copy = [&](in_t v, int64_t c) { return static_cast<out_t>(conv(static_cast<acc_t>(v), c)); };
  if (!cl) {
    // NCHW: tasks are (row, channel) planes of H*W contiguous elements.
    at::parallel_for(0, B * C, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = t / C, c = t % C, p = rp.partner[i];
        const in_t* xi = x + (i * C + c) * HW;
        const in_t* xp = x + (p * C + c) * HW;
        out_t* o = out + (i * C + c) * HW;
        if (!rp.cut[i]) {
          const acc_t a = static_cast<acc_t>(rp.lam[i]);
          const acc_t b = acc_t(1) - a;
          for (int64_t k = 0; k < HW; ++k) o[k] = mixup(a, b, xi[k], xp[k], c);
          continue;
        }
        const int64_t* bx = &rp.box[4 * i];
        for (int64_t y = 0; y < H; ++y) {
          const int64_t r = y * W;
          const bool in_rows = y >= bx[0] && y < bx[1];
          const int64_t lo = in_rows ? bx[2] : W, hi = in_rows ? bx[3] : W;
          for (int64_t w = 0; w < lo; ++w) o[r + w] = copy(xi[r + w], c);
          for (int64_t w = lo; w < hi; ++w) o[r + w] = copy(xp[r + w], c);
          for (int64_t w = hi; w < W; ++w) o[r + w] = copy(xi[r + w], c);
        }
      }
    });
    return;
  }
  // channels_last (memory order B, H, W, C): tasks are (row, y) lines of W*C contiguous elements.
  const int64_t WC = W * C;
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / H, y = t % H, p = rp.partner[i];
      const in_t* xi = x + (i * H + y) * WC;
      const in_t* xp = x + (p * H + y) * WC;
      out_t* o = out + (i * H + y) * WC;
      if (!rp.cut[i]) {
        const acc_t a = static_cast<acc_t>(rp.lam[i]);
        const acc_t b = acc_t(1) - a;
        for (int64_t w = 0; w < W; ++w)
          for (int64_t c = 0; c < C; ++c) o[w * C + c] = mixup(a, b, xi[w * C + c], xp[w * C + c], c);
        continue;
      }
      const int64_t* bx = &rp.box[4 * i];
      const bool in_rows = y >= bx[0] && y < bx[1];
      for (int64_t w = 0; w < W; ++w) {
        const in_t* src = (in_rows && w >= bx[2] && w < bx[3]) ? xp : xi;
        for (int64_t c = 0; c < C; ++c) o[w * C + c] = copy(src[w * C + c], c);
      }
    }
  });
}

at::Tensor mix_images_cpu(const at::Tensor& x, const at::Tensor& lam, const at::Tensor& cutmix,
                          const at::Tensor& boxes, const at::Tensor& partner, const std::optional<at::Tensor>& mean,
                          const std::optional<at::Tensor>& std, at::ScalarType out_dtype) {
  unmix::check_forward(x, lam, cutmix, boxes, partner, out_dtype);
  const auto st = x.scalar_type();
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const bool cl = use_channels_last(x);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor xc = x.contiguous(fmt);
  at::Tensor out = at::empty(x.sizes(), x.options().dtype(out_dtype).memory_format(fmt));
  if (out.numel() == 0) return out;
  const RowParams rp = read_params(lam, cutmix, boxes, partner, H, W);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, st, "mix_images_cpu", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "mix_images_cpu_out", [&] {
      using out_t = scalar_t;
      using acc_t = std::conditional_t<std::is_same_v<in_t, double> || std::is_same_v<out_t, double>, double, float>;
      const auto mv = channel_vector<acc_t>(mean, C, "mean");
      const auto sv = channel_vector<acc_t>(std, C, "std");
      mix_forward_impl<in_t, out_t, acc_t>(xc.data_ptr<in_t>(), out.data_ptr<out_t>(), rp, mv, sv, B, C, H, W, cl);
    });
  });
  return out;
}

template <typename g_t, typename out_t, typename acc_t>
void mix_backward_impl(const g_t* g, out_t* gx, const RowParams& rp, const std::vector<acc_t>& stdv, int64_t B,
                       int64_t C, int64_t H, int64_t W, bool cl) {
  // Inverse partner lists in CSR form, each list in increasing i.
  std::vector<int64_t> start(B + 1, 0), rows(B);
  for (int64_t i = 0; i < B; ++i) ++start[rp.partner[i] + 1];
  for (int64_t j = 0; j < B; ++j) start[j + 1] += start[j];
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < B; ++i) rows[fill[rp.partner[i]]++] = i;
  }
  const acc_t* sd = stdv.empty() ? nullptr : stdv.data();
  const int64_t HW = H * W, WC = W * C;
  // A task owns a plane (j, c) (NCHW) or a line (j, y) (channels_last) of grad_x: n contiguous elements.
  const int64_t tasks = cl ? B * H : B * C;
  const int64_t n = cl ? WC : HW;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<acc_t> acc(n);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t j = cl ? t / H : t / C;
      const int64_t fixed = cl ? t % H : t % C;  // y (channels_last) or c (NCHW)
      // Offset of the task's elements inside row r's block of C*H*W.
      auto base = [&](int64_t r) { return cl ? (r * H + fixed) * WC : (r * C + fixed) * HW; };
      // acc (=, when first; else +=) the own (is_own) or cross term of row r over the task's elements.
      auto accumulate = [&](int64_t r, bool is_own, bool first) {
        const g_t* gr = g + base(r);
        const bool cut = rp.cut[r];
        const acc_t a = static_cast<acc_t>(rp.lam[r]);
        const acc_t wgt = is_own ? a : acc_t(1) - a;
        const int64_t* bx = &rp.box[4 * r];
        auto put = [&](int64_t k, int64_t c, bool in) {
          acc_t gv = static_cast<acc_t>(gr[k]);
          if (sd) gv = gv / sd[c];
          const acc_t v = cut ? ((in != is_own) ? gv : acc_t(0)) : wgt * gv;
          acc[k] = first ? v : acc[k] + v;
        };
        if (!cl) {
          for (int64_t y = 0; y < H; ++y) {
            const bool row_in = y >= bx[0] && y < bx[1];
            for (int64_t w = 0; w < W; ++w) put(y * W + w, fixed, row_in && w >= bx[2] && w < bx[3]);
          }
        } else {
          const bool row_in = fixed >= bx[0] && fixed < bx[1];
          for (int64_t w = 0; w < W; ++w) {
            const bool in = row_in && w >= bx[2] && w < bx[3];
            for (int64_t c = 0; c < C; ++c) put(w * C + c, c, in);
          }
        }
      };
      accumulate(j, true, true);
      for (int64_t q = start[j]; q < start[j + 1]; ++q) accumulate(rows[q], false, false);
      out_t* o = gx + base(j);
      for (int64_t k = 0; k < n; ++k) o[k] = static_cast<out_t>(acc[k]);
    }
  });
}

at::Tensor mix_images_backward_cpu(const at::Tensor& grad_out, const at::Tensor& lam, const at::Tensor& cutmix,
                                   const at::Tensor& boxes, const at::Tensor& partner,
                                   const std::optional<at::Tensor>& std, at::ScalarType x_dtype) {
  unmix::check_backward(grad_out, lam, cutmix, boxes, partner, x_dtype);
  const auto gt = grad_out.scalar_type();
  const int64_t B = grad_out.size(0), C = grad_out.size(1), H = grad_out.size(2), W = grad_out.size(3);
  const bool cl = use_channels_last(grad_out);
  const auto fmt = cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor g = grad_out.contiguous(fmt);
  at::Tensor gx = at::empty(grad_out.sizes(), grad_out.options().dtype(x_dtype).memory_format(fmt));
  if (gx.numel() == 0) return gx;
  const RowParams rp = read_params(lam, cutmix, boxes, partner, H, W);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gt, "mix_images_backward_cpu", [&] {
    using g_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_dtype, "mix_images_backward_cpu_out", [&] {
      using out_t = scalar_t;
      using acc_t = std::conditional_t<std::is_same_v<g_t, double> || std::is_same_v<out_t, double>, double, float>;
      const auto sv = channel_vector<acc_t>(std, C, "std");
      mix_backward_impl<g_t, out_t, acc_t>(g.data_ptr<g_t>(), gx.data_ptr<out_t>(), rp, sv, B, C, H, W, cl);
    });
  });
  return gx;
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CPU, m) {
  m.impl("mix_images", &mix_images_cpu);
  m.impl("mix_images_backward", &mix_images_backward_cpu);
}

}  // namespace augcl
