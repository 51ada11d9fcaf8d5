// CPU kernels of augcl::contrastive_lse and augcl::contrastive_lse_backward.
//
// Math (see augcl/reference/contrastive.py, the oracle of the tests):
//   dot_ij = <a_i, c_j>,  A = anchors [M, D],  C = candidates [Nc, D],  s = scale (0-dim)
//   incl(i) = { j in pos_idx[i] }  U  { j >= neg_start and j not in excl_idx[i] }     (-1 pads both index lists;
//             a positive is included even if it is also excluded or lies below neg_start)
//   forward:  lse_i = log sum_{j in incl(i)} exp(s * dot_ij)                 (-inf for an empty incl(i))
//   backward: p_ij = exp(s * dot_ij - lse_i) on incl(i), 0 elsewhere;  G_ij = grad_lse_i * p_ij
//             dA_i = s * sum_j G_ij c_j,   dC_j = s * sum_i G_ij a_i,   ds = sum_ij G_ij dot_ij
//
// Memory: the [M, Nc] logit matrix is never materialised. Rows are processed in blocks of R rows whose
// logit buffer [R, Nc] in the accumulation dtype is bounded by kBlockBytes (16 MiB; R >= 1 always, so a single
// row wider than the budget still runs). That buffer is the only block-sized allocation of either kernel (every
// elementwise step below works on it in place); besides it the kernels hold O((M + Nc) * D) copies of the
// inputs / gradient accumulators and O(R * D) / O(M) temporaries in the accumulation dtype, so
// M = Nc = 32768, D = 128 needs tens of MiB, not the 4 GiB a dense logit matrix would take. The environment
// variable AUGCL_CPU_BLOCK_BYTES overrides the budget (read on every call; meant for tests that want many small
// blocks, and for tuning).
//
// Elementwise part. The exponentials dominated the run time of the previous version: scalar std::exp loops,
// since this extension is compiled for baseline x86-64 and the compiler cannot vectorise std::exp. They now run
// in ATen's exp2_ on the whole block buffer, which libtorch dispatches at runtime to its own vectorised (AVX2 /
// AVX-512) kernels. exp2 rather than exp: ATen's fp32 exp goes through MKL's vsExp, which on the machine this
// was tuned on took ~40 ns per element when most results underflow (|logit spread| > 87, e.g. s = 100 as in
// CLIP; more than scalar std::exp), while exp2 with the flush below stays at ~1.4 ns. Per block, both kernels
//   1. compute the dots A_blk @ C^T with one BLAS GEMM into the buffer;
//   2. turn them into exp2 arguments in at::parallel_for over rows (forward_rows / backward_rows, the only
//      hand-written loops; they also validate the indices). Per row: the logits s * dot_ij (backward:
//      s * dot_ij - lse_i), rounded exactly as in the reference; the mask, applied by writing -inf into the
//      excluded cells (mask_row: the [0, neg_start) prefix and the excl_idx cells are overwritten, positives
//      are saved first and written back, so a positive is always included and duplicates count once); forward
//      only: the row max mx_i is subtracted; then * log2(e). An argument below the smallest normal exponent
//      (-126 fp32, -1022 fp64) is set to -inf: a term below FLT_MIN (DBL_MIN), which could only be a subnormal,
//      becomes an exact 0 (this keeps exp2 off its slow subnormal path; no effect on lse, whose largest term is
//      exp(0) = 1, and in the backward only on p_ij < FLT_MIN). These loops have no transcendental call, so
//      the compiler vectorises them (SSE2 at baseline x86-64; the row max through omp simd);
//   3. exp2_ on the buffer (exp2(-inf) = 0 in excluded cells), then ATen row sums / BLAS on the result.
// The extra rounding of * log2(e) is a relative error of |argument| * 2^-24 in a term (fp32), ~1e-6 for the
// terms that matter (arguments > -20), well within the rounding of the logits themselves.
// Forward: lse_i = mx_i + log sum_j exp(L_ij - mx_i). An infinite mx_i is replaced by 0 before the subtraction
// (as in torch.logsumexp): an empty row (all -inf) then gives log(0) = -inf, and a +inf logit gives +inf,
// instead of inf - inf = NaN. A NaN logit in an included cell makes that row's sum, hence its lse, NaN and no
// other row's (excluded cells are overwritten with -inf whatever they held).
// Backward: exp2_ turns the buffer into P (p_ij on incl(i), exactly 0 elsewhere, even for an empty row whose
// lse_i = -inf), and
//   U_blk = P @ C                     (BLAS)        -> dA_i = s * g_i * U_i             (after the last block)
//   dC   += P^T @ (g (.) A_blk)        (BLAS)        -> dC *= s                          (after the last block)
//   ds    = sum_i g_i <a_i, U_i>  (rows added in double),  which is sum_ij G_ij dot_ij regrouped: ds needs
//           neither the unscaled dots nor a second block buffer, and costs O(M * D). Like the reference (which
//           multiplies G by the dots after masking), a non-finite candidate in an excluded column makes ds
//           non-finite; dA is non-finite then anyway (0 * NaN in the GEMM, as before).
// The gradient GEMMs take the unscaled P; s multiplies the O((M + Nc) * D) results once at the end.
//
// Parallelism: the GEMMs go to BLAS through at::mm_out / addmm_ and the tensor ops to ATen's own kernels, which
// all parallelise themselves; only step 2 runs in at::parallel_for, and no ATen op is called inside it.
//
// Precision: every input is upcast to the accumulation dtype (fp32; fp64 for fp64 inputs) before the GEMMs, and
// all the elementwise math is done in it. Row sums of exponentials use ATen's sum along a row, a cascade
// (pairwise-like) summation whose error bound grows ~ log(Nc) instead of ~ Nc for a running fp32 sum, so fp32
// accumulation is accurate for Nc ~ 1e4-1e5 terms (tests/test_contrastive_cpu_kernel.py checks wide rows
// against an fp64 reference). The rows' ds terms g_i <a_i, U_i> are added in double.
//
// Determinism: no atomics and no data-dependent work split; every reduction is along rows (ATen row
// reductions, serial loops over rows for ds), so repeated calls give bitwise identical results for a fixed
// thread count. Results can differ in the last bits with the block size (GEMM blocking changes).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

#include "vec_utils.h"

namespace augcl {
namespace {

constexpr int64_t kBlockBytes = int64_t(16) << 20;  // logit buffer per row block
constexpr int64_t kRowGrainCells = int64_t(1) << 15;  // min cells per parallel_for task (cpu::grain)

int64_t block_bytes() {
  // Re-read on every call: cheap next to the O(M * Nc * D) work, and lets tests change it in-process.
  if (const char* env = std::getenv("AUGCL_CPU_BLOCK_BYTES")) {
    char* end = nullptr;
    long long v = std::strtoll(env, &end, 10);
    if (end != env && v > 0) return static_cast<int64_t>(v);
  }
  return kBlockBytes;
}

int64_t rows_per_block(int64_t m, int64_t nc, int64_t elem_size) {
  int64_t per_row = std::max<int64_t>(nc, 1) * elem_size;
  int64_t rows = std::max<int64_t>(block_bytes() / per_row, 1);
  return std::min(rows, std::max<int64_t>(m, 1));
}

bool is_supported_input_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::ScalarType acc_dtype_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Shape / dtype / device checks shared by both ops. Index *values* are checked later, while the masks are built.
void check_common(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& scale,
                  const at::Tensor& pos_idx, const at::Tensor& excl_idx, int64_t neg_start, const char* op) {
  TORCH_CHECK(anchors.dim() == 2, op, ": anchors must be 2-D [M, D], got shape ", anchors.sizes());
  TORCH_CHECK(candidates.dim() == 2, op, ": candidates must be 2-D [Nc, D], got shape ", candidates.sizes());
  TORCH_CHECK(anchors.size(1) == candidates.size(1), op, ": anchors and candidates must have the same D, got ",
              "anchors ", anchors.sizes(), " and candidates ", candidates.sizes());
  TORCH_CHECK(is_supported_input_dtype(anchors.scalar_type()), op,
              ": anchors must be float32, float64, float16 or bfloat16, got ", anchors.scalar_type());
  TORCH_CHECK(candidates.scalar_type() == anchors.scalar_type(), op,
              ": candidates must have the dtype of anchors (", anchors.scalar_type(), "), got ",
              candidates.scalar_type());
  TORCH_CHECK(scale.dim() == 0, op, ": scale must be a 0-dim tensor, got shape ", scale.sizes());
  TORCH_CHECK(at::isFloatingType(scale.scalar_type()), op, ": scale must be floating point, got ",
              scale.scalar_type());
  const int64_t m = anchors.size(0);
  TORCH_CHECK(pos_idx.scalar_type() == at::kLong, op, ": pos_idx must be int64, got ", pos_idx.scalar_type());
  TORCH_CHECK(pos_idx.dim() == 2 && pos_idx.size(0) == m, op, ": pos_idx must be 2-D [M, P] with M = ", m,
              " rows, got shape ", pos_idx.sizes());
  TORCH_CHECK(excl_idx.scalar_type() == at::kLong, op, ": excl_idx must be int64, got ", excl_idx.scalar_type());
  TORCH_CHECK(excl_idx.dim() == 2 && excl_idx.size(0) == m, op, ": excl_idx must be 2-D [M, E] with M = ", m,
              " rows, got shape ", excl_idx.sizes());
  TORCH_CHECK(neg_start >= 0, op, ": neg_start must be >= 0, got ", neg_start);
  for (const at::Tensor* t : {&anchors, &candidates, &scale, &pos_idx, &excl_idx}) {
    TORCH_CHECK(t->device().is_cpu(), op, ": all inputs must be CPU tensors (CPU kernel), got a tensor on ",
                t->device());
  }
}

// Checks the indices of one row: excl_idx first, then pos_idx (the order the messages had before).
inline void check_row_indices(int64_t nc, const int64_t* pos, int64_t p_len, const int64_t* excl, int64_t e_len,
                              int64_t row) {
  for (int64_t e = 0; e < e_len; ++e) {
    const int64_t j = excl[e];
    TORCH_CHECK(j >= -1 && j < nc, "excl_idx[", row, ", ", e, "] = ", j,
                " is out of range: expected -1 (padding) or a column in [0, Nc = ", nc, ")");
  }
  for (int64_t p = 0; p < p_len; ++p) {
    const int64_t j = pos[p];
    TORCH_CHECK(j >= -1 && j < nc, "pos_idx[", row, ", ", p, "] = ", j,
                " is out of range: expected -1 (padding) or a column in [0, Nc = ", nc, ")");
  }
}

// Smallest base-2 exponent whose power is a normal number (-126 for fp32, -1022 for fp64). Arguments of exp2
// below it are set to -inf, i.e. a term exp(...) < FLT_MIN (DBL_MIN) becomes an exact 0 instead of a subnormal:
// ATen's vectorised exp2 is several times slower on inputs with subnormal results (measured: ~6 vs ~1.3 ns per
// fp32 element), while exp(-inf) = 0 is as fast as any other input.
template <typename acc_t>
constexpr acc_t kMinNormalExp2 = acc_t(std::numeric_limits<acc_t>::min_exponent - 1);

// Log2(e) rounded to the accumulation dtype: exp(y) is computed as exp2(y * log2(e)).
template <typename acc_t>
constexpr acc_t kLog2e = acc_t(1.442695040888963407359924681001892137);

// Writes incl(i)'s -inf mask into one row xr [nc] whose cells already hold their final values: the
// [0, neg_start) prefix and the excl_idx cells become -inf, then the positives, saved beforehand, are written
// back, so a positive is included even when it is also excluded or lies below neg_start; duplicate indices just
// write the same cell again (a column counts once). Touches O(neg_start + P + E) cells.
template <typename acc_t>
inline void mask_row(acc_t* xr, int64_t ns, const int64_t* pos, int64_t p_len, const int64_t* excl, int64_t e_len,
                     acc_t* saved) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  for (int64_t p = 0; p < p_len; ++p) saved[p] = pos[p] >= 0 ? xr[pos[p]] : acc_t(0);
  std::fill(xr, xr + ns, neg_inf);
  for (int64_t e = 0; e < e_len; ++e) {
    if (excl[e] >= 0) xr[excl[e]] = neg_inf;
  }
  for (int64_t p = 0; p < p_len; ++p) {
    if (pos[p] >= 0) xr[pos[p]] = saved[p];
  }
}

// Maximum of a row. Only called on masked rows, where every NaN is in an included cell, so how the max treats
// NaN does not matter: such a row's sum, hence its lse, is NaN either way. That freedom is what lets the
// compiler vectorise the reduction (omp simd; SSE2 at baseline x86-64; the extension is built with -fopenmp).
template <typename acc_t>
inline acc_t row_max(const acc_t* xr, int64_t nc) {
  acc_t mx = -std::numeric_limits<acc_t>::infinity();
#if defined(_OPENMP) && _OPENMP >= 201307  // omp simd is OpenMP 4.0
#pragma omp simd reduction(max : mx)
#endif
  for (int64_t j = 0; j < nc; ++j) mx = xr[j] > mx ? xr[j] : mx;
  return mx;
}

// y * log2(e), or -inf where that is below kMinNormalExp2 (NaN stays NaN).
template <typename acc_t>
inline acc_t to_exp2_arg(acc_t y) {
  const acc_t t = y * kLog2e<acc_t>;
  return t < kMinNormalExp2<acc_t> ? -std::numeric_limits<acc_t>::infinity() : t;
}

// Forward, step 2 (see the header) for rows [lo, lo + rows) of the row-major block x [rows, nc] holding the raw
// dots: x_ij <- (s * dot_ij - shift_i) * log2(e) on incl(i) (then exp2 gives exp(s * dot_ij - shift_i)), -inf
// elsewhere, and shift[r] <- shift_i = max_{j in incl(i)} s * dot_ij, or 0 where that max is infinite.
// Validates the rows' indices. Runs in at::parallel_for: no ATen op in here.
template <typename acc_t>
void forward_rows(acc_t* x, acc_t* shift, int64_t rows, int64_t lo, int64_t nc, acc_t s, int64_t neg_start,
                  const int64_t* pos_ptr, int64_t p_len, const int64_t* excl_ptr, int64_t e_len) {
  const int64_t ns = std::min(neg_start, nc);
  at::parallel_for(0, rows, cpu::grain(nc, kRowGrainCells), [&](int64_t r0, int64_t r1) {
    const acc_t sc = s;  // a local copy: a reference capture could alias the row, which blocks vectorisation
    std::vector<acc_t> saved(static_cast<size_t>(p_len));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = lo + r;
      const int64_t* pos = pos_ptr + i * p_len;
      const int64_t* excl = excl_ptr + i * e_len;
      check_row_indices(nc, pos, p_len, excl, e_len, i);
      acc_t* xr = x + r * nc;
      for (int64_t j = 0; j < nc; ++j) xr[j] = sc * xr[j];  // the logit, rounded as in the reference
      mask_row(xr, ns, pos, p_len, excl, e_len, saved.data());
      // The row is in cache now: the max and the shifted arguments cost little next to the pass above.
      acc_t mx = row_max(xr, nc);
      // An infinite max is replaced by 0 (as torch.logsumexp does): an empty row (all -inf) then sums to 0 and
      // gets log(0) = -inf, a row with a +inf logit gets +inf, instead of inf - inf = NaN.
      mx = cpu::lse_shift(mx);
      shift[r] = mx;
      for (int64_t j = 0; j < nc; ++j) xr[j] = to_exp2_arg(xr[j] - mx);
    }
  });
}

// Backward, step 2: x_ij <- (s * dot_ij - lse_i) * log2(e) on incl(i), -inf elsewhere. s * dot_ij - lse_i is
// rounded exactly as in the reference (two operations): for large |s * dot| (s = 40-500) one ulp of it is
// already a relative error of ~1e-5 in p_ij, so e.g. scaling A before the GEMM or an FMA would show up in the
// gradients. Validates the rows' indices. Runs in at::parallel_for: no ATen op in here.
template <typename acc_t>
void backward_rows(acc_t* x, int64_t rows, int64_t lo, int64_t nc, acc_t s, const acc_t* lse_ptr,
                   int64_t neg_start, const int64_t* pos_ptr, int64_t p_len, const int64_t* excl_ptr,
                   int64_t e_len) {
  const int64_t ns = std::min(neg_start, nc);
  at::parallel_for(0, rows, cpu::grain(nc, kRowGrainCells), [&](int64_t r0, int64_t r1) {
    const acc_t sc = s;  // a local copy: a reference capture could alias the row, which blocks vectorisation
    std::vector<acc_t> saved(static_cast<size_t>(p_len));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = lo + r;
      const int64_t* pos = pos_ptr + i * p_len;
      const int64_t* excl = excl_ptr + i * e_len;
      check_row_indices(nc, pos, p_len, excl, e_len, i);
      acc_t* xr = x + r * nc;
      const acc_t li = lse_ptr[i];
      // Before the mask: -inf - lse_i would be NaN for lse_i = -inf (an empty row).
      for (int64_t j = 0; j < nc; ++j) xr[j] = to_exp2_arg(sc * xr[j] - li);
      mask_row(xr, ns, pos, p_len, excl, e_len, saved.data());
    }
  });
}

template <typename acc_t>
void lse_kernel(const at::Tensor& a, const at::Tensor& c, acc_t s, const at::Tensor& pos_idx,
                const at::Tensor& excl_idx, int64_t neg_start, at::Tensor& lse) {
  const int64_t m = a.size(0), nc = c.size(0);
  const int64_t p_len = pos_idx.size(1), e_len = excl_idx.size(1);
  const int64_t* pos_ptr = pos_idx.const_data_ptr<int64_t>();
  const int64_t* excl_ptr = excl_idx.const_data_ptr<int64_t>();

  const int64_t block = rows_per_block(m, nc, sizeof(acc_t));
  at::Tensor buf = at::empty({block, nc}, a.options());  // the one block-sized buffer
  at::Tensor shift_buf = at::empty({block}, a.options());
  const at::Tensor c_t = c.t();  // a view: BLAS reads C^T through the transpose flag, no copy

  for (int64_t lo = 0; lo < m; lo += block) {
    const int64_t rows = std::min(block, m - lo);
    at::Tensor x = buf.narrow(0, 0, rows);
    at::Tensor shift = shift_buf.narrow(0, 0, rows);
    at::mm_out(x, a.narrow(0, lo, rows), c_t);  // outside parallel_for: BLAS has its own threads
    forward_rows<acc_t>(x.data_ptr<acc_t>(), shift.data_ptr<acc_t>(), rows, lo, nc, s, neg_start, pos_ptr,
                        p_len, excl_ptr, e_len);
    x.exp2_();  // exp(s * dot_ij - shift_i) on incl(i), 0 elsewhere
    at::Tensor out = lse.narrow(0, lo, rows);
    at::sum_out(out, x, {1});  // cascade summation along each row
    out.log_().add_(shift);
  }
}

template <typename acc_t>
double lse_backward_kernel(const at::Tensor& g, const at::Tensor& a, const at::Tensor& c, acc_t s,
                           const at::Tensor& lse, const at::Tensor& pos_idx, const at::Tensor& excl_idx,
                           int64_t neg_start, at::Tensor& da, at::Tensor& dc) {
  const int64_t m = a.size(0), nc = c.size(0);
  const int64_t p_len = pos_idx.size(1), e_len = excl_idx.size(1);
  const int64_t* pos_ptr = pos_idx.const_data_ptr<int64_t>();
  const int64_t* excl_ptr = excl_idx.const_data_ptr<int64_t>();
  const acc_t* lse_ptr = lse.const_data_ptr<acc_t>();

  const int64_t block = rows_per_block(m, nc, sizeof(acc_t));
  at::Tensor buf = at::empty({block, nc}, a.options());  // the one block-sized buffer
  const at::Tensor c_t = c.t();
  const at::Tensor ga = a.mul(g.unsqueeze(1));  // g (.) A, the right operand of the dC GEMMs

  for (int64_t lo = 0; lo < m; lo += block) {
    const int64_t rows = std::min(block, m - lo);
    at::Tensor a_blk = a.narrow(0, lo, rows);
    at::Tensor x = buf.narrow(0, 0, rows);
    at::mm_out(x, a_blk, c_t);  // recompute this block's dots instead of storing [M, Nc] in the forward
    backward_rows<acc_t>(x.data_ptr<acc_t>(), rows, lo, nc, s, lse_ptr, neg_start, pos_ptr, p_len, excl_ptr,
                         e_len);
    x.exp2_();  // P: p_ij on incl(i), exactly 0 elsewhere (exp2(-inf), even when lse_i = -inf)

    at::Tensor da_blk = da.narrow(0, lo, rows);       // contiguous rows of the row-major dA
    at::mm_out(da_blk, x, c);                         // U_blk = P @ C (scaled by s * g_i below)
    dc.addmm_(x.t(), ga.narrow(0, lo, rows));         // dC += P^T @ (g (.) A)_blk, accumulated in acc_t
  }

  // ds = sum_ij g_i p_ij <a_i, c_j> = sum_i g_i <a_i, U_i>: one dot of length D per row, the rows' terms added
  // serially in double.
  const at::Tensor rowdot = at::sum(a.mul(da), {1}).contiguous();
  const acc_t* rd = rowdot.const_data_ptr<acc_t>();
  const acc_t* g_ptr = g.const_data_ptr<acc_t>();
  double ds = 0.0;
  for (int64_t i = 0; i < m; ++i) ds += static_cast<double>(g_ptr[i]) * static_cast<double>(rd[i]);
  da.mul_(g.mul(s).unsqueeze(1));  // dA_i = s * g_i * U_i
  dc.mul_(s);                      // dC = s * sum_blocks P^T (g (.) A_blk)
  return ds;
}

at::Tensor contrastive_lse_cpu(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& scale,
                               const at::Tensor& pos_idx, const at::Tensor& excl_idx, int64_t neg_start) {
  check_common(anchors, candidates, scale, pos_idx, excl_idx, neg_start, "contrastive_lse");
  const at::ScalarType acc = acc_dtype_of(anchors.scalar_type());
  const int64_t m = anchors.size(0), nc = candidates.size(0);
  at::Tensor lse = at::empty({m}, anchors.options().dtype(acc));
  if (m == 0) return lse;
  if (nc == 0) {
    // Index checks still apply: with no columns only -1 padding is valid.
    TORCH_CHECK((pos_idx.numel() == 0 || (pos_idx == -1).all().item<bool>()) &&
                    (excl_idx.numel() == 0 || (excl_idx == -1).all().item<bool>()),
                "contrastive_lse: pos_idx / excl_idx must be -1 (padding) when there are no candidates (Nc = 0)");
    return lse.fill_(-std::numeric_limits<double>::infinity());
  }
  // Whole-input upcasts are O((M + Nc) * D); .to / .contiguous are no-ops for contiguous fp32/fp64 inputs.
  const at::Tensor a = anchors.to(acc).contiguous();
  const at::Tensor c = candidates.to(acc).contiguous();
  const at::Tensor p = pos_idx.contiguous();
  const at::Tensor e = excl_idx.contiguous();
  const double s = scale.item<double>();  // scale lives on the CPU: one read, no sync
  if (acc == at::kDouble) {
    lse_kernel<double>(a, c, s, p, e, neg_start, lse);
  } else {
    // Round scale to fp32 first, as the reference does (scale.to(acc)).
    lse_kernel<float>(a, c, static_cast<float>(s), p, e, neg_start, lse);
  }
  return lse;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_backward_cpu(
    const at::Tensor& grad_lse, const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& scale,
    const at::Tensor& lse, const at::Tensor& pos_idx, const at::Tensor& excl_idx, int64_t neg_start) {
  constexpr const char* op = "contrastive_lse_backward";
  check_common(anchors, candidates, scale, pos_idx, excl_idx, neg_start, op);
  const int64_t m = anchors.size(0), nc = candidates.size(0), d = anchors.size(1);
  TORCH_CHECK(grad_lse.dim() == 1 && grad_lse.size(0) == m, op, ": grad_lse must be 1-D [M] with M = ", m,
              ", got shape ", grad_lse.sizes());
  TORCH_CHECK(at::isFloatingType(grad_lse.scalar_type()), op, ": grad_lse must be floating point, got ",
              grad_lse.scalar_type());
  TORCH_CHECK(lse.dim() == 1 && lse.size(0) == m, op, ": lse must be 1-D [M] with M = ", m, ", got shape ",
              lse.sizes());
  TORCH_CHECK(at::isFloatingType(lse.scalar_type()), op, ": lse must be floating point, got ", lse.scalar_type());
  TORCH_CHECK(grad_lse.device().is_cpu() && lse.device().is_cpu(), op,
              ": grad_lse and lse must be CPU tensors (CPU kernel)");

  const at::ScalarType acc = acc_dtype_of(anchors.scalar_type());
  const at::TensorOptions acc_opts = anchors.options().dtype(acc);
  at::Tensor da = at::zeros({m, d}, acc_opts);
  at::Tensor dc = at::zeros({nc, d}, acc_opts);
  double ds = 0.0;

  if (m > 0 && nc == 0) {
    TORCH_CHECK((pos_idx.numel() == 0 || (pos_idx == -1).all().item<bool>()) &&
                    (excl_idx.numel() == 0 || (excl_idx == -1).all().item<bool>()),
                op, ": pos_idx / excl_idx must be -1 (padding) when there are no candidates (Nc = 0)");
  }
  if (m > 0 && nc > 0) {
    const at::Tensor a = anchors.to(acc).contiguous();
    const at::Tensor c = candidates.to(acc).contiguous();
    const at::Tensor g = grad_lse.to(acc).contiguous();
    const at::Tensor l = lse.to(acc).contiguous();
    const at::Tensor p = pos_idx.contiguous();
    const at::Tensor e = excl_idx.contiguous();
    const double s = scale.item<double>();
    if (acc == at::kDouble) {
      ds = lse_backward_kernel<double>(g, a, c, s, l, p, e, neg_start, da, dc);
    } else {
      ds = lse_backward_kernel<float>(g, a, c, static_cast<float>(s), l, p, e, neg_start, da, dc);
    }
  }
  return std::make_tuple(da.to(anchors.scalar_type()), dc.to(candidates.scalar_type()),
                         at::scalar_tensor(ds, scale.options()));
}

}  // namespace

TORCH_LIBRARY_IMPL(augcl, CPU, m) {
  m.impl("contrastive_lse", &contrastive_lse_cpu);
  m.impl("contrastive_lse_backward", &contrastive_lse_backward_cpu);
}

}  // namespace augcl
