// CPU kernels of augcl::hallucinate and augcl::hallucinate_backward (the Hallucinator generator).
//
// Math (x, k [B, D]; lam [B]; W1 = [W1a | W1b] [H, 2D], W2 [H, H], W3 [D, H]; nn.Linear layout):
//   x~ = x + lam * (x - k)
//   a1 = relu(x W1a^T + x~ W1b^T + b1)      a2 = relu(a1 W2^T + b2)      h = a2 W3^T + b3
// Backward (see augcl/reference/hallucinator.py): dz2 = (dh W3) * [a2 > 0], dz1 = (dz2 W2) * [a1 > 0],
//   dW3 = dh^T a2, dW2 = dz2^T a1, dW1a = dz1^T x, dW1b = dz1^T x~, db* = column sums,
//   gb = dz1 W1b, dx = dz1 W1a + (1 + lam) gb, dk = -lam gb.
//
// Layout of the work: every GEMM is one ATen BLAS call (at::addmm_out / at::mm_out / addmm_) on whole
// matrices or on row blocks; the elementwise work runs in fused at::parallel_for passes:
// * the first layer never builds the [B, 2D] concat: W1a and W1b are column views of W1 (ld = 2D, BLAS reads them
//   in place) and x~ is formed per row block of kRowBlock rows into one [kRowBlock, D] scratch buffer, so the
//   extra memory is O(kRowBlock * D) whatever B is; the same blocks accumulate dW1b in the backward (addmm_ with
//   beta = 1 over the blocks in order: deterministic);
// * bias and ReLU: the bias enters through addmm's beta term; ReLU is one in-place pass (clamp_min_);
// * the ReLU masks of the backward are one pass each over dz (zeroed where the saved activation is 0);
// * dx and dk: gb is written into dk by the GEMM, then one pass forms dx += (1 + lam) gb and dk = -lam gb.
// fp16 / bf16 inputs are computed in fp32 (converted once) and the outputs rounded back; fp64 stays fp64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "vec_utils.h"

namespace augcl {
namespace {

constexpr int64_t kRowBlock = 512;  // rows of x~ formed at a time

void check_inputs(const char* op, const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam,
                  const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& w3) {
  TORCH_CHECK(x.dim() == 2 && k.dim() == 2, op, ": x and k must be 2-D [B, D], got ", x.sizes(), " and ",
              k.sizes());
  TORCH_CHECK(x.sizes() == k.sizes(), op, ": x ", x.sizes(), " and k ", k.sizes(), " must have the same shape");
  const int64_t B = x.size(0), D = x.size(1);
  TORCH_CHECK(lam.dim() == 1 && lam.size(0) == B, op, ": lam must be [B] = [", B, "], got ", lam.sizes());
  TORCH_CHECK(w1.dim() == 2 && w1.size(1) == 2 * D, op, ": w1 must be [H, 2D] with 2D = ", 2 * D, ", got ",
              w1.sizes());
  const int64_t H = w1.size(0);
  TORCH_CHECK(w2.dim() == 2 && w2.size(0) == H && w2.size(1) == H, op, ": w2 must be [H, H] = [", H, ", ", H,
              "], got ", w2.sizes());
  TORCH_CHECK(w3.dim() == 2 && w3.size(0) == D && w3.size(1) == H, op, ": w3 must be [D, H] = [", D, ", ", H,
              "], got ", w3.sizes());
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": x must be float32, float64, float16 or bfloat16, got ", st);
  for (const at::Tensor* t : {&k, &w1, &w2, &w3}) {
    TORCH_CHECK(t->scalar_type() == st, op, ": every tensor must have x's dtype ", st, ", got ", t->scalar_type());
  }
}

// xt[r, :] = x[r, :] + lam[r] * (x[r, :] - k[r, :]) for the rows [r0, r0 + rows) (all contiguous).
template <typename T>
void extrapolate_rows(T* xt, const T* x, const T* k, const T* lam, int64_t r0, int64_t rows, int64_t D) {
  at::parallel_for(0, rows, cpu::grain(D), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = r0 + i;
      const T l = lam[r];
      const T* xr = x + r * D;
      const T* kr = k + r * D;
      T* o = xt + i * D;
      for (int64_t d = 0; d < D; ++d) o[d] = xr[d] + l * (xr[d] - kr[d]);
    }
  });
}

// body(r0, rows, xt) for the row blocks [r0, r0 + rows) of x in order, xt [rows, D] holding x~ of those rows: one
// [min(B, kRowBlock), D] buffer is reused, so x~ never takes more memory than a block.
template <typename T, typename F>
void for_each_extrapolated_block(const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam, F&& body) {
  const int64_t B = x.size(0), D = x.size(1);
  at::Tensor xt = at::empty({std::min(B, kRowBlock), D}, x.options());
  for (int64_t r0 = 0; r0 < B; r0 += kRowBlock) {
    const int64_t rows = std::min(kRowBlock, B - r0);
    at::Tensor xt_blk = xt.narrow(0, 0, rows);
    extrapolate_rows<T>(xt_blk.data_ptr<T>(), x.data_ptr<T>(), k.data_ptr<T>(), lam.data_ptr<T>(), r0, rows, D);
    body(r0, rows, xt_blk);
  }
}

// dz[i] = 0 where act[i] <= 0 (ReLU backward; the saved act is post-ReLU, so act > 0 <=> pre-activation > 0).
template <typename T>
void relu_mask(T* dz, const T* act, int64_t n) {
  at::parallel_for(0, n, cpu::kGrainCells, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) dz[i] = act[i] > T(0) ? dz[i] : T(0);
  });
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& k,
                                                            const at::Tensor& lam, const at::Tensor& w1,
                                                            const at::Tensor& b1, const at::Tensor& w2,
                                                            const at::Tensor& b2, const at::Tensor& w3,
                                                            const at::Tensor& b3) {
  const int64_t B = x.size(0), D = x.size(1), H = w1.size(0);
  const auto w1a_t = w1.narrow(1, 0, D).t();  // [D, H] views of W1's halves, read in place by BLAS
  const auto w1b_t = w1.narrow(1, D, D).t();
  at::Tensor a1 = at::empty({B, H}, x.options());
  at::Tensor a2 = at::empty({B, H}, x.options());
  at::Tensor h = at::empty({B, D}, x.options());
  for_each_extrapolated_block<T>(x, k, lam, [&](int64_t r0, int64_t rows, const at::Tensor& xt_blk) {
    at::Tensor z1 = a1.narrow(0, r0, rows);
    at::addmm_out(z1, b1, x.narrow(0, r0, rows), w1a_t);
    z1.addmm_(xt_blk, w1b_t);
  });
  a1.clamp_min_(0);
  at::addmm_out(a2, b2, a1, w2.t());
  a2.clamp_min_(0);
  at::addmm_out(h, b3, a2, w3.t());
  return {h, a1, a2};
}

template <typename T>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
backward_impl(const at::Tensor& dh, const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam,
              const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& a1,
              const at::Tensor& a2) {
  const int64_t B = x.size(0), D = x.size(1), H = w1.size(0);
  at::Tensor dw3 = at::mm(dh.t(), a2);
  at::Tensor db3 = dh.sum(0);
  at::Tensor dz2 = at::mm(dh, w3);
  relu_mask<T>(dz2.data_ptr<T>(), a2.data_ptr<T>(), B * H);
  at::Tensor dw2 = at::mm(dz2.t(), a1);
  at::Tensor db2 = dz2.sum(0);
  at::Tensor dz1 = at::mm(dz2, w2);
  relu_mask<T>(dz1.data_ptr<T>(), a1.data_ptr<T>(), B * H);
  at::Tensor db1 = dz1.sum(0);

  at::Tensor dw1 = at::zeros({H, 2 * D}, x.options());
  at::Tensor dw1a = dw1.narrow(1, 0, D);
  at::Tensor dw1b = dw1.narrow(1, D, D);
  dw1a.addmm_(dz1.t(), x);
  for_each_extrapolated_block<T>(x, k, lam, [&](int64_t r0, int64_t rows, const at::Tensor& xt_blk) {
    dw1b.addmm_(dz1.narrow(0, r0, rows).t(), xt_blk);
  });

  at::Tensor dx = at::mm(dz1, w1.narrow(1, 0, D));  // ga
  at::Tensor dk = at::mm(dz1, w1.narrow(1, D, D));  // gb, turned into dk below
  const T* lp = lam.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  T* dkp = dk.data_ptr<T>();
  at::parallel_for(0, B, cpu::grain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T l = lp[r];
      T* dxr = dxp + r * D;
      T* dkr = dkp + r * D;
      for (int64_t d = 0; d < D; ++d) {
        const T gb = dkr[d];
        dxr[d] += (T(1) + l) * gb;
        dkr[d] = -l * gb;
      }
    }
  });
  return {dx, dk, dw1, db1, dw2, db2, dw3, db3};
}

at::ScalarType compute_type(at::ScalarType st) { return st == at::kDouble ? at::kDouble : at::kFloat; }

std::tuple<at::Tensor, at::Tensor, at::Tensor> hallucinate_cpu(const at::Tensor& x, const at::Tensor& k,
                                                              const at::Tensor& lam, const at::Tensor& w1,
                                                              const at::Tensor& b1, const at::Tensor& w2,
                                                              const at::Tensor& b2, const at::Tensor& w3,
                                                              const at::Tensor& b3) {
  check_inputs("hallucinate", x, k, lam, w1, w2, w3);
  const int64_t H = w1.size(0), D = x.size(1);
  TORCH_CHECK(b1.dim() == 1 && b1.size(0) == H && b2.dim() == 1 && b2.size(0) == H && b3.dim() == 1 &&
                  b3.size(0) == D,
              "hallucinate: biases must be b1 [H], b2 [H], b3 [D]");
  const auto st = x.scalar_type();
  const auto ct = compute_type(st);
  auto c = [&](const at::Tensor& t) { return t.to(ct).contiguous(); };
  at::Tensor h, a1, a2;
  if (ct == at::kDouble) {
    std::tie(h, a1, a2) = forward_impl<double>(c(x), c(k), c(lam), c(w1), c(b1), c(w2), c(b2), c(w3), c(b3));
  } else {
    std::tie(h, a1, a2) = forward_impl<float>(c(x), c(k), c(lam), c(w1), c(b1), c(w2), c(b2), c(w3), c(b3));
  }
  if (st != ct) return {h.to(st), a1.to(st), a2.to(st)};
  return {h, a1, a2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
hallucinate_backward_cpu(const at::Tensor& grad_h, const at::Tensor& x, const at::Tensor& k, const at::Tensor& lam,
                         const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& a1,
                         const at::Tensor& a2) {
  check_inputs("hallucinate_backward", x, k, lam, w1, w2, w3);
  const int64_t B = x.size(0), D = x.size(1), H = w1.size(0);
  TORCH_CHECK(grad_h.dim() == 2 && grad_h.size(0) == B && grad_h.size(1) == D,
              "hallucinate_backward: grad_h must be [B, D]");
  TORCH_CHECK(a1.dim() == 2 && a1.size(0) == B && a1.size(1) == H && a2.sizes() == a1.sizes(),
              "hallucinate_backward: a1 and a2 must be [B, H]");
  const auto st = x.scalar_type();
  const auto ct = compute_type(st);
  auto c = [&](const at::Tensor& t) { return t.to(ct).contiguous(); };
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> out;
  if (ct == at::kDouble) {
    out = backward_impl<double>(c(grad_h), c(x), c(k), c(lam), c(w1), c(w2), c(w3), c(a1), c(a2));
  } else {
    out = backward_impl<float>(c(grad_h), c(x), c(k), c(lam), c(w1), c(w2), c(w3), c(a1), c(a2));
  }
  if (st != ct) {
    auto& [dx, dk, dw1, db1, dw2, db2, dw3, db3] = out;
    return {dx.to(st), dk.to(st), dw1.to(st), db1.to(st), dw2.to(st), db2.to(st), dw3.to(st), db3.to(st)};
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CPU, m) {
  m.impl("hallucinate", &hallucinate_cpu);
  m.impl("hallucinate_backward", &hallucinate_backward_cpu);
}

}  // namespace augcl
