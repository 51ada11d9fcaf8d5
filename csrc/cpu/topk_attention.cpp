// CPU kernels of augcl::topk_attention and augcl::topk_attention_backward (MixedAE's homologous attention).
//
// Math (see augcl/reference/topk_attention.py, the oracle of the tests), per (batch, head), q, k, v [L, Dh]:
//   S = s * q k^T;  K(i) = the top_k largest S_ij in the order (value descending, key index ascending), plus
//   key 0 when keep_first;  P_ij = exp(S_ij - lse_i) on K(i), 0 elsewhere;  out = P v
//   backward: dv = P^T dO;  dP = dO v^T;  D_i = <dO_i, out_i>;  dS = P (.) (dP - D);  dq = s dS k;  dk = s dS^T q
//
// Memory: the (batch * head) problems are processed in chunks of nh heads whose logit buffer [nh, L, L] in the
// accumulation dtype stays within a budget (kBlockBytes, 2 MiB, about an L2 cache; AUGCL_CPU_BLOCK_BYTES
// overrides it as for contrastive_lse; nh >= 1). The buffer is reused for every chunk, so nothing of size
// [B, H, L, L] is ever allocated; the backward holds a second buffer of the same size (dP). Saved for the
// backward: out and lse only; the backward recomputes the logits and the selection.
//
// Per chunk, as csrc/cpu/contrastive.cpp does it: the GEMMs go to BLAS (at::bmm_out, which has its own
// threads), the hand-written loops run in at::parallel_for over rows and call no ATen op, and the exponentials
// are one ATen exp2_ over the whole buffer (runtime-dispatched to libtorch's AVX2 / AVX-512 kernels; this
// extension is compiled for baseline x86-64). Per row:
//   1. S_ij = s * dot_ij, rounded as in the reference (the GEMM's dot, then one multiply), with the row's max and
//      min;
//   2. the selection (select_row): the top_k-th largest value t, the number c_gt of values > t and hence how
//      many of the values == t are kept (need_eq = top_k - c_gt, the lowest-index ones). t is found without
//      sorting the row: the values are put into nb buckets (about one per value, 16 to 256) by
//      (S_ij - min) * (nb - 1) / (max - min), a monotone map, so the bucket holding the top_k-th value is found
//      from the bucket counts (walked from the nearer end); only that bucket's values are copied and
//      std::nth_element finds t among them (O(L) per row, ~0.4 us at L = 257 on the machine it was tuned on);
//   3. the exp2 argument of each kept cell ((S_ij - shift_i) * log2(e), -inf elsewhere; shift_i = the row max
//      in the forward, which is always kept, lse_i in the backward), in one vectorisable pass over the values
//      >= t; only when more values equal t than are kept (a tie at the boundary) a pass before it sets the
//      surplus ones, the highest indices, to -inf. Key 0 is then added when keep_first.
// The forward and the backward run steps 1-2 on the same GEMM (same call, same chunking, same inputs), so they
// keep the same set. Comparisons are floating-point comparisons, so -0.0 == +0.0 is a tie, as in torch.sort.
//
// A row whose logits are not all finite (a non-finite input, or an overflow of s * dot) has no defined top_k: it
// gets NaN exponent arguments, hence a NaN output row and NaN gradients, which the functional API's deferred value
// check reports after the call (naming a non-finite input, or else the overflow). std::nth_element never sees a
// NaN (its comparison would not be a strict weak order).
//
// Precision: q, k, v, dO are upcast to the accumulation dtype (fp32; fp64 for fp64) before the GEMMs; the row sums
// of exponentials are ATen's cascade sums. Arguments below the smallest normal exponent become -inf (exact 0
// instead of a subnormal term: keeps exp2 off its slow path; see contrastive.cpp).
//
// Determinism: no atomics, no data-dependent work split: repeated calls give bitwise identical results for a
// fixed thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

#include "vec_utils.h"

namespace augcl {
namespace {

constexpr int64_t kBlockBytes = int64_t(2) << 20;  // logit buffer per chunk of heads
constexpr int64_t kRowGrainCells = int64_t(1) << 14;  // min cells per parallel_for task (cpu::grain)
constexpr int64_t kBuckets = 256;                      // buckets of the selection's first pass

int64_t block_bytes() {
  // Re-read on every call: tests set it in-process to get many small chunks.
  if (const char* env = std::getenv("AUGCL_CPU_BLOCK_BYTES")) {
    char* end = nullptr;
    long long v = std::strtoll(env, &end, 10);
    if (end != env && v > 0) return static_cast<int64_t>(v);
  }
  return kBlockBytes;
}

int64_t heads_per_chunk(int64_t n, int64_t l, int64_t elem_size) {
  const int64_t per_head = std::max<int64_t>(l * l, 1) * elem_size;
  return std::min(std::max<int64_t>(block_bytes() / per_head, 1), std::max<int64_t>(n, 1));
}

template <typename A>
constexpr A kMinNormalExp2 = A(std::numeric_limits<A>::min_exponent - 1);
template <typename A>
constexpr A kLog2e = A(1.442695040888963407359924681001892137);

// y * log2(e), or -inf where that is below the smallest normal exponent (NaN stays NaN).
template <typename A>
inline A to_exp2_arg(A y) {
  const A t = y * kLog2e<A>;
  return t < kMinNormalExp2<A> ? -std::numeric_limits<A>::infinity() : t;
}

// Scratch of one parallel_for task: bucket counts, each value's bucket, the values of one bucket.
template <typename A>
struct Scratch {
  explicit Scratch(int64_t L) : bucket(static_cast<size_t>(L)) { cand.reserve(static_cast<size_t>(L)); }
  int32_t counts[kBuckets];
  std::vector<uint8_t> bucket;
  std::vector<A> cand;
};

// What the selection of one row found: t (the top_k-th largest value), how many values equal t are kept (the
// lowest-index ones) and how many equal t in all.
template <typename A>
struct Selection {
  A t;
  int64_t keep_eq;
  int64_t n_eq;
};

// Step 2 of the header for one finite row x [L] with max mx and min mn; 1 <= top_k <= L.
template <typename A>
Selection<A> select_row(const A* x, int64_t L, int64_t top_k, A mx, A mn, Scratch<A>& sc) {
  // min(max((x - mn) * f, 0), nb - 1), truncated, is monotone in x (each step is, with correct rounding), so the
  // buckets are ordered like the values; clamped as floats, so the loop vectorises at baseline x86-64. nb: about
  // one bucket per value (16 to 256), fewer counts to clear and walk in short rows. f = 0 (one bucket) when all
  // values are equal or the range is so small that its inverse overflows.
  int64_t nb = 16;
  while (nb < L && nb < kBuckets) nb *= 2;
  A f = mx > mn ? A(nb - 1) / (mx - mn) : A(0);
  if (!std::isfinite(f)) f = A(0);
  uint8_t* bk = sc.bucket.data();
  const A top = A(nb - 1);
  for (int64_t j = 0; j < L; ++j) {
    A y = (x[j] - mn) * f;
    y = y < A(0) ? A(0) : y;
    y = y > top ? top : y;
    bk[j] = static_cast<uint8_t>(static_cast<int32_t>(y));
  }
  std::fill(sc.counts, sc.counts + nb, 0);
  for (int64_t j = 0; j < L; ++j) ++sc.counts[bk[j]];
  // the bucket b_top of the top_k-th largest value, and the number of values above it, found by walking the
  // counts from the nearer end
  int64_t above = 0, b_top;
  if (2 * top_k <= L) {
    for (b_top = nb - 1; b_top > 0; --b_top) {
      if (above + sc.counts[b_top] >= top_k) break;
      above += sc.counts[b_top];
    }
  } else {
    const int64_t rank_from_below = L - top_k + 1;  // the top_k-th largest is this smallest
    int64_t below = 0;
    for (b_top = 0; b_top < nb - 1; ++b_top) {
      if (below + sc.counts[b_top] >= rank_from_below) break;
      below += sc.counts[b_top];
    }
    above = L - below - sc.counts[b_top];
  }
  sc.cand.clear();
  const uint8_t want = static_cast<uint8_t>(b_top);
  for (int64_t j = 0; j < L; ++j) {
    if (bk[j] == want) sc.cand.push_back(x[j]);
  }
  const int64_t r = top_k - above;  // 1-based rank of t inside its bucket, descending
  std::nth_element(sc.cand.begin(), sc.cand.begin() + (r - 1), sc.cand.end(), std::greater<A>());
  const A t = sc.cand[r - 1];
  int64_t gt = above, eq = 0;
  for (const A v : sc.cand) {
    gt += v > t;
    eq += v == t;
  }
  return {t, top_k - gt, eq};
}

// Steps 1-3 of the header for rows [r0, r1) of the chunk buffer x [rows, L] holding raw dots. Forward
// (lse == nullptr): shift_i = the row max, written to shift[r]; backward: shift_i = lse[r]. Runs in
// at::parallel_for: no ATen op in here.
template <typename A>
void rows_to_exp2_args(A* x, A* shift, const A* lse, int64_t r0, int64_t r1, int64_t L, A s, int64_t top_k,
                       bool keep_first, Scratch<A>& sc) {
  const A sv = s;  // a local copy: a reference capture could alias the row, which blocks vectorisation
  const A neg_inf = -std::numeric_limits<A>::infinity();
  for (int64_t r = r0; r < r1; ++r) {
    A* xr = x + r * L;
    A mx = neg_inf, mn = std::numeric_limits<A>::infinity();
    int64_t nan = 0;
#if defined(_OPENMP) && _OPENMP >= 201307  // omp simd is OpenMP 4.0: lets the compiler vectorise the reductions
#pragma omp simd reduction(max : mx) reduction(min : mn) reduction(+ : nan)
#endif
    for (int64_t j = 0; j < L; ++j) {
      const A v = sv * xr[j];  // the logit, rounded as in the reference
      xr[j] = v;
      mx = v > mx ? v : mx;
      mn = v < mn ? v : mn;
      nan += v != v;
    }
    if (!(std::isfinite(mx) && std::isfinite(mn) && nan == 0)) {
      std::fill(xr, xr + L, std::numeric_limits<A>::quiet_NaN());
      if (lse == nullptr) shift[r] = std::numeric_limits<A>::quiet_NaN();
      continue;
    }
    const Selection<A> sel = select_row(xr, L, top_k, mx, mn, sc);
    const A sh = lse == nullptr ? mx : lse[r];
    if (lse == nullptr) shift[r] = mx;  // the max is always kept (top_k >= 1)
    const A t = sel.t;
    const A x0 = xr[0];
    if (sel.n_eq > sel.keep_eq) {
      // A tie at the boundary: of the values == t only the lowest-index keep_eq are kept; the others become -inf
      // here, before the pass below, which keeps every value >= t.
      int64_t seen = 0;
      for (int64_t j = 0; j < L; ++j) {
        if (xr[j] == t && seen++ >= sel.keep_eq) xr[j] = neg_inf;
      }
    }
    // branch-free (a select per cell), so it vectorises: a kept cell's argument, or -inf
    const A lo = kMinNormalExp2<A>;
    for (int64_t j = 0; j < L; ++j) {
      const A v = xr[j];
      const A a = (v - sh) * kLog2e<A>;
      const bool keep = (v >= t) & (a >= lo);  // & rather than &&: no branch, the loop vectorises
      xr[j] = keep ? a : neg_inf;
    }
    if (keep_first) xr[0] = to_exp2_arg(x0 - sh);
  }
}


bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

void check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t top_k, const char* op) {
  TORCH_CHECK(q.dim() == 4, op, ": q must be 4-D [B, H, L, Dh], got shape ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), op, ": k and v must have the shape of q ",
              q.sizes(), ", got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(is_supported_dtype(q.scalar_type()), op, ": q must be float32, float64, float16 or bfloat16, got ",
              q.scalar_type());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": k and v must have the dtype of q (", q.scalar_type(), "), got ", k.scalar_type(), " and ",
              v.scalar_type());
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu(), op, ": all inputs must be CPU tensors (CPU kernel), got a tensor on ",
                t->device());
  }
  const int64_t L = q.size(2);
  TORCH_CHECK(L == 0 || (top_k >= 1 && top_k <= L), op, ": top_k must lie in [1, L = ", L, "], got ", top_k);
}

at::ScalarType acc_dtype_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// [B, H, L, Dh] in any dtype and strides -> [B * H, L, Dh] contiguous in the accumulation dtype.
at::Tensor as_acc_heads(const at::Tensor& t, at::ScalarType acc) {
  return t.to(acc).contiguous().view({t.size(0) * t.size(1), t.size(2), t.size(3)});
}

// The forward's and the backward's selection step over one chunk's buffer x [n, L, L] of raw dots.
template <typename A>
void chunk_to_exp2_args(at::Tensor& x, A* shift, const A* lse, int64_t L, A s, int64_t top_k, bool keep_first) {
  A* xd = x.data_ptr<A>();
  const int64_t rows = x.size(0) * L;
  at::parallel_for(0, rows, cpu::grain(L, kRowGrainCells), [&](int64_t r0, int64_t r1) {
    Scratch<A> sc(L);
    rows_to_exp2_args<A>(xd, shift, lse, r0, r1, L, s, top_k, keep_first, sc);
  });
}

// out [N, L, Dh] and lse [N, L] (accumulation dtype) of q, k, v [N, L, Dh].
template <typename A>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, A s, int64_t top_k,
                    bool keep_first, at::Tensor& out, at::Tensor& lse) {
  const int64_t N = q.size(0), L = q.size(1);
  const int64_t nh = heads_per_chunk(N, L, sizeof(A));
  at::Tensor buf = at::empty({nh, L, L}, q.options());  // the one chunk-sized buffer
  at::Tensor shift_buf = at::empty({nh, L}, q.options());
  for (int64_t h0 = 0; h0 < N; h0 += nh) {
    const int64_t n = std::min(nh, N - h0);
    at::Tensor x = buf.narrow(0, 0, n);
    at::Tensor shift = shift_buf.narrow(0, 0, n);
    at::bmm_out(x, q.narrow(0, h0, n), k.narrow(0, h0, n).transpose(1, 2));  // BLAS, outside parallel_for
    chunk_to_exp2_args<A>(x, shift.data_ptr<A>(), nullptr, L, s, top_k, keep_first);
    x.exp2_();  // exp(S_ij - max_i) on K(i), 0 elsewhere
    at::Tensor l = lse.narrow(0, h0, n);
    at::sum_out(l, x, {2});  // cascade summation along each row
    at::Tensor o = out.narrow(0, h0, n);
    at::bmm_out(o, x, v.narrow(0, h0, n));
    o.div_(l.unsqueeze(2));
    l.log_().add_(shift);
  }
}

// dq, dk, dv [N, L, Dh] (accumulation dtype) from g = dO, out and lse.
template <typename A>
void backward_kernel(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& out, const at::Tensor& lse, A s, int64_t top_k, bool keep_first,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t N = q.size(0), L = q.size(1);
  const int64_t nh = heads_per_chunk(N, L, sizeof(A));  // the forward's chunks: the same GEMMs, the same set
  at::Tensor buf = at::empty({nh, L, L}, q.options());
  at::Tensor dp_buf = at::empty({nh, L, L}, q.options());
  const at::Tensor d = at::sum(g * out, {2}).contiguous();  // D_i = <dO_i, out_i>, [N, L]
  const A* d_ptr = d.const_data_ptr<A>();
  const A* lse_ptr = lse.const_data_ptr<A>();
  for (int64_t h0 = 0; h0 < N; h0 += nh) {
    const int64_t n = std::min(nh, N - h0);
    const at::Tensor qc = q.narrow(0, h0, n), kc = k.narrow(0, h0, n), vc = v.narrow(0, h0, n);
    const at::Tensor gc = g.narrow(0, h0, n);
    at::Tensor x = buf.narrow(0, 0, n);
    at::bmm_out(x, qc, kc.transpose(1, 2));  // recomputed instead of saving [N, L, L] in the forward
    chunk_to_exp2_args<A>(x, nullptr, lse_ptr + h0 * L, L, s, top_k, keep_first);
    x.exp2_();  // P: p_ij on K(i), exactly 0 elsewhere
    at::Tensor dvc = dv.narrow(0, h0, n);
    at::bmm_out(dvc, x.transpose(1, 2), gc);
    at::Tensor dp = dp_buf.narrow(0, 0, n);
    at::bmm_out(dp, gc, vc.transpose(1, 2));
    // dS = P (.) (dP - D), in place in dp: one pass (no ATen op inside parallel_for)
    A* dpd = dp.data_ptr<A>();
    const A* pd = x.const_data_ptr<A>();
    const A* dd = d_ptr + h0 * L;
    at::parallel_for(0, n * L, cpu::grain(L, kRowGrainCells), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const A di = dd[r];
        A* row = dpd + r * L;
        const A* pr = pd + r * L;
        for (int64_t j = 0; j < L; ++j) row[j] = pr[j] * (row[j] - di);
      }
    });
    at::Tensor dqc = dq.narrow(0, h0, n), dkc = dk.narrow(0, h0, n);
    at::bmm_out(dqc, dp, kc);
    at::bmm_out(dkc, dp.transpose(1, 2), qc);
  }
  dq.mul_(s);
  dk.mul_(s);
}

std::tuple<at::Tensor, at::Tensor> topk_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                      const at::Tensor& v_in, int64_t top_k, double scale,
                                                      bool keep_first) {
  check_qkv(q_in, k_in, v_in, top_k, "topk_attention");
  const at::ScalarType acc = acc_dtype_of(q_in.scalar_type());
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2), Dh = q_in.size(3);
  at::Tensor lse = at::empty({B, H, L}, q_in.options().dtype(acc));
  if (q_in.numel() == 0) return {at::empty({B, H, L, Dh}, q_in.options()), lse.fill_(0)};
  const at::Tensor q = as_acc_heads(q_in, acc), k = as_acc_heads(k_in, acc), v = as_acc_heads(v_in, acc);
  at::Tensor out = at::empty({B * H, L, Dh}, q.options());
  at::Tensor lse3 = lse.view({B * H, L});
  if (acc == at::kDouble) {
    forward_kernel<double>(q, k, v, scale, top_k, keep_first, out, lse3);
  } else {
    // scale rounded to fp32 first, as the reference's fp32 multiply does
    forward_kernel<float>(q, k, v, static_cast<float>(scale), top_k, keep_first, out, lse3);
  }
  return {out.view({B, H, L, Dh}).to(q_in.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, int64_t top_k, double scale, bool keep_first) {
  constexpr const char* op = "topk_attention_backward";
  check_qkv(q_in, k_in, v_in, top_k, op);
  TORCH_CHECK(grad_out.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(), op,
              ": grad_out and out must have the shape of q ", q_in.sizes(), ", got ", grad_out.sizes(), " and ",
              out_in.sizes());
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2), Dh = q_in.size(3);
  TORCH_CHECK(lse_in.dim() == 3 && lse_in.size(0) == B && lse_in.size(1) == H && lse_in.size(2) == L, op,
              ": lse must be [B, H, L] = [", B, ", ", H, ", ", L, "], got ", lse_in.sizes());
  for (const at::Tensor* t : {&grad_out, &out_in, &lse_in}) {
    TORCH_CHECK(t->device().is_cpu() && at::isFloatingType(t->scalar_type()), op,
                ": grad_out, out and lse must be floating CPU tensors");
  }
  const at::ScalarType acc = acc_dtype_of(q_in.scalar_type());
  if (q_in.numel() == 0) {
    return {at::zeros_like(q_in, at::MemoryFormat::Contiguous), at::zeros_like(k_in, at::MemoryFormat::Contiguous),
            at::zeros_like(v_in, at::MemoryFormat::Contiguous)};
  }
  const at::Tensor q = as_acc_heads(q_in, acc), k = as_acc_heads(k_in, acc), v = as_acc_heads(v_in, acc);
  const at::Tensor g = as_acc_heads(grad_out, acc), out = as_acc_heads(out_in, acc);
  const at::Tensor lse = lse_in.to(acc).contiguous().view({B * H, L});
  at::Tensor dq = at::empty({B * H, L, Dh}, q.options());
  at::Tensor dk = at::empty_like(dq), dv = at::empty_like(dq);
  if (acc == at::kDouble) {
    backward_kernel<double>(g, q, k, v, out, lse, scale, top_k, keep_first, dq, dk, dv);
  } else {
    backward_kernel<float>(g, q, k, v, out, lse, static_cast<float>(scale), top_k, keep_first, dq, dk, dv);
  }
  const std::vector<int64_t> shape{B, H, L, Dh};
  return {dq.view(shape).to(q_in.scalar_type()), dk.view(shape).to(k_in.scalar_type()),
          dv.view(shape).to(v_in.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CPU, m) {
  m.impl("topk_attention", &topk_attention_cpu);
  m.impl("topk_attention_backward", &topk_attention_backward_cpu);
}

}  // namespace augcl
