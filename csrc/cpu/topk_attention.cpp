// CPU kernels of augcl::topk_attention and augcl::topk_attention_backward (MixedAE's homologous attention).
//
// Math (see augcl/reference/topk_attention.py, the oracle of the tests), per (batch, head), q, k, v [L, Dh]:
//   S = s * q k^T;  K(i) = the top_k largest S_ij in the order (value descending, key index ascending), plus
//   key 0 when keep_first;  P_ij = exp(S_ij - lse_i) on K(i), 0 elsewhere;  out = P v
//   backward: dv = P^T dO;  dP = dO v^T;  D_i = <dO_i, out_i>;  dS = P (.) (dP - D);  dq = s dS k;  dk = s dS^T q
//
// Two schemes, chosen by L alone (kMinBlockedL = 128), so that a forward and its backward take the same one and
// compute every logit with the same GEMM call (same rows, same shapes, same inputs): the same kept set.
// * Short rows (L < 128), in chunks of heads: the (batch * head) problems are processed in chunks of nh heads whose
//   logit buffer [nh, L, L] in the accumulation dtype stays within kChunkBytes (2 MiB, about an L2 cache); the GEMMs
//   are batched BLAS calls over the chunk (at::bmm_out, with the BLAS's own threads), the row passes run in
//   at::parallel_for over rows. Per-head BLAS calls measured 2x slower here: a 65 x 65 x 64 product is too small
//   to pay for a call of its own.
// * Long rows (L >= 128), in blocks of rows: a task of at::parallel_for is one block of rows of one head (its
//   [rows, L] buffer within kBlockBytes, 128 KiB) or, in the backward when there are at least as many heads as
//   threads, a whole head; it runs its GEMMs on its own thread (the Fortran BLAS, single-threaded inside a
//   parallel region) with the row pass in between while the block is in cache (12-18% faster than the chunks at
//   L = 197 and 257). A backward task of one block writes its dk and dv into a slot of [N, blocks, L, Dh], summed
//   after (no atomics); a whole-head task accumulates them in the GEMMs.
// In both schemes what comes after the selection is either dense GEMMs over P (exact zeros off K(i)) or, when the
// caller asks for the kept keys (save_kept; augcl/ops/topk_attention.py does when a row keeps at most 0.4 L keys,
// kk = top_k + keep_first), "sparse products": each row's kept keys are compacted, out_i is gathered over those kk
// rows of v with 8-wide FMAs, and the indices are returned as kept [B, H, L, kk]; the backward then recomputes
// only the kept logits (kk dots per row) and gathers / scatters dP, dq, dk and dv over them (backward_from_kept:
// no logit GEMM, no second selection). MixedAE keeps a quarter of the keys, where the dense products did ~4x the
// needed work: fwd + bwd 1.24 -> 0.78 ms at L = 65, 9.5 -> 6.2 ms at L = 197 (B H = 32, Dh = 64, 2 threads).
// AUGCL_CPU_BLOCK_BYTES overrides both budgets (as for contrastive_lse; tests use it to get many chunks / blocks).
// The buffers are kept per thread between calls (thread_buffer). Nothing of size [B, H, L, L] is ever allocated.
// Saved for the backward: out, lse and kept. With the dense products kept is empty and the backward recomputes the
// logits and the selection (one more GEMM and row pass per block; saving O(B H L kk) indices pays only where kk is
// small, which is where the sparse products run).
//
// The row pass, as csrc/cpu/contrastive.cpp does it: hand-written loops that call no ATen op; the exponentials and
// the row sums in one pass per row (Sleef's exp2 on AVX2 + FMA CPUs, the function behind ATen's exp2_; std::exp2
// elsewhere; this extension is compiled for baseline x86-64). The row kernels live in topk_attention_rows.h,
// compiled twice: for baseline x86-64 and, used where the CPU has them, for AVX2 + FMA. Per row:
//   1. S_ij = s * dot_ij, rounded as in the reference (the GEMM's dot, then one multiply), with the row's max and
//      min;
//   2. the selection (select_row): the top_k-th largest value t, the number c_gt of values > t and hence how
//      many of the values == t are kept (need_eq = top_k - c_gt, the lowest-index ones). t is found without
//      sorting the row: the values are put into nb buckets (about one per two values, 16 to 256) by
//      (S_ij - min) * (nb - 1) / (max - min), a monotone map, so the bucket holding the top_k-th value is found
//      from the bucket counts (walked from the nearer end); only that bucket's values are copied and
//      std::nth_element finds t among them (O(L) per row, ~0.4 us at L = 257 on the machine it was tuned on);
//   3. the exp2 argument of each kept cell ((S_ij - shift_i) * log2(e), -inf elsewhere; shift_i = the row max
//      in the forward, which is always kept, lse_i in the backward), in one vectorisable pass over the values
//      >= t; only when more values equal t than are kept (a tie at the boundary) a pass before it sets the
//      surplus ones, the highest indices, to -inf. Key 0 is then added when keep_first.
// Without saved keys the forward and the backward run steps 1-2 on the same GEMM (same call, same chunks or blocks,
// same inputs), so they keep the same set; with them the backward uses the forward's set itself. Comparisons are floating-point comparisons, so -0.0 == +0.0 is a tie, as in torch.sort.
//
// A row whose logits are not all finite (a non-finite input, or an overflow of s * dot) has no defined top_k: it
// gets NaN exponent arguments, hence a NaN output row and NaN gradients, which the functional API's deferred value
// check reports after the call (naming a non-finite input, or else the overflow). std::nth_element never sees a
// NaN (its comparison would not be a strict weak order).
//
// Precision: q, k, v, dO are upcast to the accumulation dtype (fp32; fp64 for fp64) before the GEMMs; the row sums of
// exponentials add up in vector lanes (8 fp32 / 4 fp64; sequentially without AVX2). Arguments below the smallest normal
// exponent become -inf (exact 0 instead of a subnormal term: keeps exp2 off its slow path; see contrastive.cpp).
//
// Determinism: no atomics, no data-dependent work split: repeated calls give bitwise identical results for a
// fixed thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#include "vec_utils.h"

namespace augcl {
namespace {

constexpr int64_t kChunkBytes = int64_t(2) << 20;     // logit buffer per chunk of heads (short rows)
constexpr int64_t kBlockBytes = int64_t(128) << 10;    // one row block's [rows, L] logit buffer (long rows)
constexpr int64_t kRowGrainCells = int64_t(1) << 14;  // min cells per parallel_for task of the row passes
constexpr int64_t kTaskCells = int64_t(1) << 17;       // min GEMM output cells per parallel_for task (blocks)
constexpr int64_t kBuckets = 256;                      // buckets of the selection's first pass

int64_t block_bytes(int64_t fallback) {
  // Re-read on every call: tests set it in-process to get many small chunks.
  if (const char* env = std::getenv("AUGCL_CPU_BLOCK_BYTES")) {
    char* end = nullptr;
    long long v = std::strtoll(env, &end, 10);
    if (end != env && v > 0) return static_cast<int64_t>(v);
  }
  return fallback;
}

int64_t heads_per_chunk(int64_t n, int64_t l, int64_t elem_size) {
  const int64_t per_head = std::max<int64_t>(l * l, 1) * elem_size;
  return std::min(std::max<int64_t>(block_bytes(kChunkBytes) / per_head, 1), std::max<int64_t>(n, 1));
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

// Scratch of one parallel_for task: bucket counts, each value's bucket, the values of one bucket (L + 1 entries: see
// select_row), and a free vector (forward_block keeps its row sums there).
template <typename A>
struct Scratch {
  explicit Scratch(int64_t L) : bucket(static_cast<size_t>(L)), bucket_values(static_cast<size_t>(L) + 1) {}
  int32_t counts[kBuckets];
  std::vector<uint8_t> bucket;
  std::vector<A> bucket_values;
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

// ------------------------------------------------------------------------------------------------ GEMMs
// Row-major C [M, N] = alpha op(A) op(B) + beta C on one thread's data, called from inside at::parallel_for (a
// BLAS called there runs on the calling thread). The Fortran BLAS symbols of the BLAS libtorch links (MKL,
// OpenBLAS): declared weak, so a libtorch without one still loads this extension and takes the ATen fallback
// (addmm on views of the same memory; slower: a dispatcher call per product).
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc) __attribute__((weak));
void dgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc) __attribute__((weak));
}

template <typename A>
void gemm_fallback(bool ta, bool tb, int64_t M, int64_t N, int64_t K, A alpha, const A* a, int64_t lda,
                   const A* b, int64_t ldb, A beta, A* c, int64_t ldc) {
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  // op(A) [M, K] and op(B) [K, N] as strided views; beta = 0 ignores C's old contents (NaN included)
  const std::vector<int64_t> sa = ta ? std::vector<int64_t>{1, lda} : std::vector<int64_t>{lda, 1};
  const std::vector<int64_t> sb = tb ? std::vector<int64_t>{1, ldb} : std::vector<int64_t>{ldb, 1};
  const at::Tensor av = at::from_blob(const_cast<A*>(a), {M, K}, sa, opt);
  const at::Tensor bv = at::from_blob(const_cast<A*>(b), {K, N}, sb, opt);
  at::Tensor cv = at::from_blob(c, {M, N}, {ldc, 1}, opt);
  at::addmm_out(cv, cv, av, bv, beta, alpha);
}

// Row-major to the BLAS's column-major: C^T = op(B)^T op(A)^T, and a row-major X read column-major is X^T.
template <typename A>
void gemm_rm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, A alpha, const A* a, int64_t lda, const A* b,
             int64_t ldb, A beta, A* c, int64_t ldc) {
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  if constexpr (std::is_same_v<A, float>) {
    if (sgemm_ != nullptr) return sgemm_(&cb, &ca, &m, &n, &k, &alpha, b, &la, a, &lb, &beta, c, &lc);
  } else {
    if (dgemm_ != nullptr) return dgemm_(&cb, &ca, &m, &n, &k, &alpha, b, &la, a, &lb, &beta, c, &lc);
  }
  gemm_fallback<A>(ta, tb, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The BLAS takes int sizes (LP64).
void check_blas_sizes(int64_t L, int64_t Dh, const char* op) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  TORCH_CHECK(L <= kMax && Dh <= kMax && L * std::max(L, Dh) <= kMax, op, ": L = ", L, " and Dh = ", Dh,
              " exceed the BLAS's int sizes");
}

// -------------------------------------------------------------------------------------- exp2 of a row
// x[j] = exp2(x[j]) for a row of exp2 arguments (-inf where not kept); returns the row's sum. Vectorised with
// Sleef's exp2 (1 ulp, the function ATen's exp2_ runs) where the CPU has AVX2 + FMA, else std::exp2.
template <typename A>
A exp2_row_sum_scalar(A* x, int64_t n) {
  A sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    x[j] = std::exp2(x[j]);
    sum += x[j];
  }
  return sum;
}

// Room past kk in the per-row arrays of the sparse scheme: compact_row stores whole vectors of 8 lanes at the
// current count (topk_attention_rows.h).
constexpr int64_t kCompactSlack = 8;

// For compact_row's AVX2 build: entry m (an 8-bit mask of kept lanes) holds, in nibble i, the lane of the i-th set
// bit of m.
struct CompressLut {
  uint32_t v[256];
  constexpr CompressLut() : v() {
    for (int m = 0; m < 256; ++m) {
      uint32_t packed = 0;
      int c = 0;
      for (int b = 0; b < 8; ++b) {
        if ((m >> b) & 1) packed |= uint32_t(b) << (4 * c++);
      }
      v[m] = packed;
    }
  }
};
constexpr CompressLut kCompressLut{};

namespace rows_base {
#include "topk_attention_rows.h"
}  // namespace rows_base

}  // namespace
}  // namespace augcl

#ifdef AUGCL_AVX2_REGION_OK
#include "avx2_begin.h"
#include <ATen/cpu/vec/vec.h>

#include "vec_avx2.h"

namespace augcl {
namespace {

namespace rows_avx2 {
#define AUGCL_TOPK_ROWS_AVX2 1  // the header's intrinsics paths (immintrin.h came with ATen's vec headers)
#include "topk_attention_rows.h"
#undef AUGCL_TOPK_ROWS_AVX2
}  // namespace rows_avx2

inline __m256 exp2_vec(__m256 x) { return Sleef_exp2f8_u10avx2(x); }
inline __m256d exp2_vec(__m256d x) { return Sleef_exp2d4_u10avx2(x); }

// One definition for fp32 (8 lanes) and fp64 (4 lanes); exp2_vec picks Sleef's function for the lane type.
template <typename A>
A exp2_row_sum_avx2(A* x, int64_t n) {
  using V = at::vec::Vectorized<A>;
  V acc(A(0));
  int64_t j = 0;
  for (; j + V::size() <= n; j += V::size()) {
    const V e(exp2_vec(V::loadu(x + j)));
    e.store(x + j);
    acc = acc + e;
  }
  A sum = cpu::avx2::VecOps<A>::hsum(acc);
  for (; j < n; ++j) {
    x[j] = std::exp2(x[j]);
    sum += x[j];
  }
  return sum;
}

}  // namespace
}  // namespace augcl
#include "avx2_end.h"
#endif

namespace augcl {
namespace {

template <typename A>
A exp2_row_sum(A* x, int64_t n, bool vec) {
#ifdef AUGCL_AVX2_REGION_OK
  if (vec) return exp2_row_sum_avx2(x, n);
#endif
  (void)vec;
  return exp2_row_sum_scalar(x, n);
}

// The row primitives of the sparse scheme (topk_attention_rows.h), in the AVX2 + FMA build where vec.
template <typename A>
struct RowOps {
  void (*combine)(A*, const A*, const int32_t*, int64_t, const A*, int64_t);
  void (*dot)(A*, const A*, const int32_t*, int64_t, const A*, int64_t);
  void (*scatter)(A*, const A*, const int32_t*, int64_t, const A*, int64_t, int64_t, int64_t);
  int64_t (*compact)(const A*, int64_t, int64_t, int32_t*, A*);
  void (*row_pass)(A*, A*, const A*, int64_t, int64_t, int64_t, A, int64_t, bool, Scratch<A>&);
};

template <typename A>
RowOps<A> row_ops(bool vec) {
#ifdef AUGCL_AVX2_REGION_OK
  if (vec) {
    return {&rows_avx2::combine_rows<A>, &rows_avx2::dot_rows<A>, &rows_avx2::scatter_rows<A>,
            &rows_avx2::compact_row<A>, &rows_avx2::rows_to_exp2_args<A>};
  }
#endif
  (void)vec;
  return {&rows_base::combine_rows<A>, &rows_base::dot_rows<A>, &rows_base::scatter_rows<A>,
          &rows_base::compact_row<A>, &rows_base::rows_to_exp2_args<A>};
}

// Steps 1-3 of the header (topk_attention_rows.h) on rows [r0, r1) of x, in the AVX2 build where vec. Both builds
// make the same comparisons on the same values (no FMA can form in these loops: no product is added to), so the
// kept set does not depend on vec: a forward and a backward run with different AUGCL_CPU_VEC keep the same keys.
template <typename A>
void rows_to_exp2_args(A* x, A* shift, const A* lse, int64_t r0, int64_t r1, int64_t L, A s, int64_t top_k,
                       bool keep_first, Scratch<A>& sc, bool vec) {
  row_ops<A>(vec).row_pass(x, shift, lse, r0, r1, L, s, top_k, keep_first, sc);
}


// ------------------------------------------------------------------------------------------- blocking
// Rows per block: a block of query rows is the unit of the logit GEMM, in the forward and in the backward alike
// (the same GEMM call on the same rows: the same logits, hence the same kept set). Its [rows, L] buffer stays within
// kBlockBytes; the blocks of a head are balanced. A function of L and the dtype only, never of the thread count.
int64_t rows_per_block(int64_t L, int64_t elem_size) {
  const int64_t fit = std::max<int64_t>(block_bytes(kBlockBytes) / (std::max<int64_t>(L, 1) * elem_size), 1);
  const int64_t blocks = (L + fit - 1) / std::max<int64_t>(std::min(fit, L), 1);
  return (L + blocks - 1) / std::max<int64_t>(blocks, 1);
}

// Least number of row blocks per at::parallel_for task: about kTaskCells cells of [rows, L + Dh] GEMM output.
int64_t block_grain(int64_t rb, int64_t L, int64_t Dh) { return cpu::grain(rb * (L + Dh), kTaskCells); }

// Logit buffers kept by each thread between calls (two slots: P and dP), 64-byte aligned like ATen's (the BLAS
// sees the same alignment in the forward and the backward). Allocating them on every call cost a page-faulting
// first touch each time (about 0.3 ms of a 1.5 ms fwd+bwd at L = 65, B H = 32: 2 MiB of fresh pages). They only
// grow, and stay small: a chunk of heads is at most kChunkBytes (or one head of L < kMinBlockedL rows), a row
// block at most kBlockBytes (or one row); AUGCL_CPU_BLOCK_BYTES can raise both.
template <typename A>
A* thread_buffer(int slot, int64_t n) {
  struct Cache {
    void* p[2] = {nullptr, nullptr};
    size_t bytes[2] = {0, 0};
    ~Cache() {
      c10::free_cpu(p[0]);
      c10::free_cpu(p[1]);
    }
  };
  thread_local Cache cache;
  const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(A);
  if (cache.bytes[slot] < bytes) {
    c10::free_cpu(cache.p[slot]);
    cache.p[slot] = nullptr;
    cache.bytes[slot] = 0;
    cache.p[slot] = c10::alloc_cpu(bytes);
    cache.bytes[slot] = bytes;
  }
  return static_cast<A*>(cache.p[slot]);
}

// ------------------------------------------------------------------------------------------- sparse products
// When each query keeps few of its L keys, the products after the selection need not be dense: out_i = sum over
// the kept j of P_ij v_j touches kk = top_k + keep_first rows of v instead of L, and so do the backward's dP_ij (only
// the kept cells), dq, dk and dv. The forward takes them when asked to save the kept keys (save_kept; the caller,
// augcl/ops/topk_attention.py, asks when kk <= 0.4 L): per row, the kept keys are compacted (compact_row), out_i is
// gathered over them with 8-wide FMAs (topk_attention_rows.h), and their indices are written to kept [N, L, kk]
// (-1 past the last). The backward then needs neither the logit GEMM nor the selection: it recomputes only the kept
// logits (kk dots per row), so the kept set is the forward's by construction (backward_from_kept). Without saved
// keys the forward runs dense GEMMs over P (exact zeros off K(i)) and the backward recomputes the logits and the
// selection from q and k with the same GEMM calls.
// Per-task scratch of the sparse forward: one row's kept indices and exp2 arguments (kk + kCompactSlack entries
// each: compact_row stores whole vectors).
template <typename A>
struct SparseScratch {
  explicit SparseScratch(int64_t kk)
      : idx(static_cast<size_t>(kk + kCompactSlack)), val(static_cast<size_t>(kk + kCompactSlack)) {}
  std::vector<int32_t> idx;
  std::vector<A> val;
};

// The forward of one row from its exp2 arguments xr [L] (after the row pass): out_i = sum_kept P v / sum, and
// lse_i = log(sum) + (the row max, held in lse_i until now); the kept indices to kept_i [kk] (-1 past the last, all
// -1 for a non-finite row). v: the row's head [L, Dh].
template <typename A>
void forward_row_sparse(const A* xr, int64_t L, int64_t Dh, int64_t kk, const RowOps<A>& ops, bool vec,
                        const A* v, A* orow, A* lse_i, int32_t* kept_i, SparseScratch<A>& ss) {
  if (xr[0] != xr[0]) {  // a non-finite row (all NaN, lse already NaN): a NaN output row, as the dense products
    std::fill(orow, orow + Dh, std::numeric_limits<A>::quiet_NaN());
    std::fill(kept_i, kept_i + kk, int32_t(-1));
    return;
  }
  const int64_t c = ops.compact(xr, L, kk, ss.idx.data(), ss.val.data());
  std::copy(ss.idx.data(), ss.idx.data() + c, kept_i);
  std::fill(kept_i + c, kept_i + kk, int32_t(-1));
  const A sum = exp2_row_sum<A>(ss.val.data(), c, vec);
  ops.combine(orow, ss.val.data(), ss.idx.data(), c, v, Dh);
  for (int64_t d = 0; d < Dh; ++d) orow[d] /= sum;
  *lse_i = std::log(sum) + *lse_i;
}

// One head's q, k, v, ... [L, Dh] inside an [N, L, Dh] tensor.
template <typename A>
struct Head {
  const A* q;
  const A* k;
  const A* v;
};

// Forward of rows [r0, r0 + m) of one head: the logit GEMM, the row pass (steps 1-3), exp2 and the row sums, P v,
// the division by the sums; lse of the rows. ss: the sparse products' scratch, nullptr for the dense GEMM; kept: the
// head's [L, kk] kept keys (sparse products only).
template <typename A>
void forward_block(const Head<A>& hd, int64_t L, int64_t Dh, int64_t r0, int64_t m, A s, int64_t top_k,
                   bool keep_first, bool vec, A* x, A* out, A* lse, Scratch<A>& sc, SparseScratch<A>* ss,
                   int32_t* kept) {
  gemm_rm<A>(false, true, m, L, Dh, A(1), hd.q + r0 * Dh, Dh, hd.k, Dh, A(0), x, L);
  A* mx = lse + r0;  // the row maxima, until they become lse
  rows_to_exp2_args<A>(x, mx, nullptr, 0, m, L, s, top_k, keep_first, sc, vec);
  A* o = out + r0 * Dh;
  if (ss != nullptr) {  // sparse products
    const int64_t kk = top_k + (keep_first ? 1 : 0);
    const RowOps<A> ops = row_ops<A>(vec);
    for (int64_t r = 0; r < m; ++r) {
      forward_row_sparse<A>(x + r * L, L, Dh, kk, ops, vec, hd.v, o + r * Dh, mx + r, kept + (r0 + r) * kk, *ss);
    }
    return;
  }
  std::vector<A>& sums = sc.cand;  // free again after the row pass
  sums.resize(static_cast<size_t>(m));
  for (int64_t r = 0; r < m; ++r) sums[r] = exp2_row_sum<A>(x + r * L, L, vec);
  gemm_rm<A>(false, false, m, Dh, L, A(1), x, L, hd.v, Dh, A(0), o, Dh);
  for (int64_t r = 0; r < m; ++r) {
    const A sum = sums[r];
    A* orow = o + r * Dh;
    for (int64_t d = 0; d < Dh; ++d) orow[d] /= sum;
    mx[r] = std::log(sum) + mx[r];
  }
}

// out [N, L, Dh] and lse [N, L] (accumulation dtype) of q, k, v [N, L, Dh]. One task = one block of rows of one
// head: GEMMs on one thread (the blocks fill the threads), the row pass between them while the block's logits are
// in cache; nothing of size [N, L, L].
template <typename A>
void forward_blocked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, A s, int64_t top_k,
                    bool keep_first, at::Tensor& out, at::Tensor& lse, int32_t* kept) {
  const int64_t N = q.size(0), L = q.size(1), Dh = q.size(2);
  const int64_t rb = rows_per_block(L, sizeof(A)), nrb = (L + rb - 1) / rb;
  const bool vec = cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed();
  const A *qd = q.const_data_ptr<A>(), *kd = k.const_data_ptr<A>(), *vd = v.const_data_ptr<A>();
  A *od = out.data_ptr<A>(), *ld = lse.data_ptr<A>();
  const int64_t kk = top_k + (keep_first ? 1 : 0);
  const bool sparse = kept != nullptr;
  at::parallel_for(0, N * nrb, block_grain(rb, L, Dh), [&](int64_t t0, int64_t t1) {
    A* x = thread_buffer<A>(0, rb * L);
    Scratch<A> sc(std::max(L, rb));
    SparseScratch<A> ss(kk);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = t / nrb, r0 = (t % nrb) * rb, m = std::min(rb, L - r0);
      const Head<A> hd{qd + h * L * Dh, kd + h * L * Dh, vd + h * L * Dh};
      forward_block<A>(hd, L, Dh, r0, m, s, top_k, keep_first, vec, x, od + h * L * Dh, ld + h * L, sc,
                       sparse ? &ss : nullptr, sparse ? kept + h * L * kk : nullptr);
    }
  });
}

// dq, dk, dv [N, L, Dh] (accumulation dtype) from g = dO, out and lse. A task is a whole head when there are enough
// heads to fill the threads (its dk and dv accumulate over its row blocks in the GEMMs, beta = 1), otherwise one
// row block, whose dk and dv go to a slot of a [N, blocks, L, Dh] buffer summed afterwards. Either way the logits
// of a block come from the forward's GEMM call.
template <typename A>
void backward_blocked(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& out, const at::Tensor& lse, A s, int64_t top_k, bool keep_first,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t N = q.size(0), L = q.size(1), Dh = q.size(2);
  const int64_t rb = rows_per_block(L, sizeof(A)), nrb = (L + rb - 1) / rb;
  const bool vec = cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed();
  const bool per_head = nrb == 1 || N >= at::get_num_threads();
  at::Tensor dk_part, dv_part;
  if (!per_head) {
    dk_part = at::empty({N, nrb, L, Dh}, q.options());
    dv_part = at::empty({N, nrb, L, Dh}, q.options());
  }
  const A *qd = q.const_data_ptr<A>(), *kd = k.const_data_ptr<A>(), *vd = v.const_data_ptr<A>();
  const A *gd = g.const_data_ptr<A>(), *od = out.const_data_ptr<A>(), *ld = lse.const_data_ptr<A>();
  A *dqd = dq.data_ptr<A>(), *dkd = dk.data_ptr<A>(), *dvd = dv.data_ptr<A>();
  A* dkp = per_head ? nullptr : dk_part.data_ptr<A>();
  A* dvp = per_head ? nullptr : dv_part.data_ptr<A>();
  const int64_t tasks = per_head ? N : N * nrb, blocks_per_task = per_head ? nrb : 1;
  // in whole heads, the forward's grain rounded down: the backward runs inline (the GEMMs then free to use the BLAS's
  // threads) exactly when the forward did, so the logit GEMMs are the same calls
  const int64_t grain = per_head ? block_grain(rb, L, Dh) / nrb : block_grain(rb, L, Dh);
  at::parallel_for(0, tasks, grain, [&](int64_t t0, int64_t t1) {
    A* p = thread_buffer<A>(0, rb * L);
    A* dp = thread_buffer<A>(1, rb * L);
    Scratch<A> sc(L);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t h = per_head ? t : t / nrb, b0 = per_head ? 0 : t % nrb;
      const int64_t off = h * L * Dh;
      const Head<A> hd{qd + off, kd + off, vd + off};
      for (int64_t b = b0; b < b0 + blocks_per_task; ++b) {
        const int64_t r0 = b * rb, m = std::min(rb, L - r0);
        const A* gb = gd + off + r0 * Dh;
        const A* qb = hd.q + r0 * Dh;
        // the dk, dv target of this block and whether it adds to what earlier blocks left there
        A* dk_t = per_head ? dkd + off : dkp + (h * nrb + b) * L * Dh;
        A* dv_t = per_head ? dvd + off : dvp + (h * nrb + b) * L * Dh;
        const A beta = per_head && b > 0 ? A(1) : A(0);
        gemm_rm<A>(false, true, m, L, Dh, A(1), qb, Dh, hd.k, Dh, A(0), p, L);  // the forward's call
        rows_to_exp2_args<A>(p, nullptr, ld + h * L + r0, 0, m, L, s, top_k, keep_first, sc, vec);
        for (int64_t r = 0; r < m; ++r) exp2_row_sum<A>(p + r * L, L, vec);  // P: exactly 0 off K(i)
        gemm_rm<A>(true, false, L, Dh, m, A(1), p, L, gb, Dh, beta, dv_t, Dh);           // dv (+)= P^T dO
        gemm_rm<A>(false, true, m, L, Dh, A(1), gb, Dh, hd.v, Dh, A(0), dp, L);          // dP = dO v^T
        // dS = P (.) (dP - D), D_i = <dO_i, out_i>, in place in dp
        for (int64_t r = 0; r < m; ++r) {
          const A* grow = gb + r * Dh;
          const A* orow = od + off + (r0 + r) * Dh;
          A di = 0;
          for (int64_t d = 0; d < Dh; ++d) di += grow[d] * orow[d];
          A* row = dp + r * L;
          const A* pr = p + r * L;
          for (int64_t j = 0; j < L; ++j) row[j] = pr[j] * (row[j] - di);
        }
        gemm_rm<A>(false, false, m, Dh, L, s, dp, L, hd.k, Dh, A(0), dqd + off + r0 * Dh, Dh);  // dq = s dS k
        gemm_rm<A>(true, false, L, Dh, m, s, dp, L, qb, Dh, beta, dk_t, Dh);                   // dk (+)= s dS^T q
      }
    }
  });
  if (!per_head) {
    at::sum_out(dk, dk_part, {1});
    at::sum_out(dv, dv_part, {1});
  }
}

// The forward's and the backward's row pass over one chunk's buffer x [n, L, L] of raw dots: steps 1-3, then exp2
// in place (P, unnormalised in the forward), with the row sums written to sums[r] when sums is given.
template <typename A>
void chunk_to_exp(at::Tensor& x, A* shift, const A* lse, int64_t L, A s, int64_t top_k, bool keep_first, A* sums,
                  bool vec) {
  A* xd = x.data_ptr<A>();
  const int64_t rows = x.size(0) * L;
  at::parallel_for(0, rows, cpu::grain(L, kRowGrainCells), [&](int64_t r0, int64_t r1) {
    Scratch<A> sc(L);
    rows_to_exp2_args<A>(xd, shift, lse, r0, r1, L, s, top_k, keep_first, sc, vec);
    for (int64_t r = r0; r < r1; ++r) {
      const A sum = exp2_row_sum<A>(xd + r * L, L, vec);
      if (sums != nullptr) sums[r] = sum;
    }
  });
}

// dq, dk, dv [N, L, Dh] from g = dO, out, lse and the forward's kept keys kept [N, L, kk] (the sparse products'
// backward; see "sparse products"). Heads in chunks whose per-row arrays stay within kChunkBytes. Phase 1 (over
// rows): the kept logits S_ij = s <q_i, k_j> (kk dots), P_ij = exp(S_ij - lse_i), D_i = <dO_i, out_i>,
// s dS_ij = s P_ij (<dO_i, v_j> - D_i) and dq_i = sum_j s dS_ij k_j. Phase 2 (over heads, and slices of Dh when a
// chunk has fewer heads than threads): dk_j = sum_i s dS_ij q_i and dv_j = sum_i P_ij dO_i, scattered in a fixed
// order (i ascending) by one task per (head, slice): no atomics, results independent of the thread count. A row
// with a NaN lse (the forward's mark of a non-finite row) gets a NaN dq row and NaN dk, dv for its head, as the
// dense products give.
template <typename A>
void backward_from_kept(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                        const at::Tensor& out, const at::Tensor& lse, const at::Tensor& kept, A s, at::Tensor& dq,
                        at::Tensor& dk, at::Tensor& dv) {
  const int64_t N = q.size(0), L = q.size(1), Dh = q.size(2), kk = kept.size(2);
  const bool vec = cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed();
  const RowOps<A> ops = row_ops<A>(vec);
  const A *qd = q.const_data_ptr<A>(), *kd = k.const_data_ptr<A>(), *vd = v.const_data_ptr<A>();
  const A *gd = g.const_data_ptr<A>(), *od = out.const_data_ptr<A>(), *ld = lse.const_data_ptr<A>();
  const int32_t* kept_d = kept.const_data_ptr<int32_t>();
  A *dqd = dq.data_ptr<A>(), *dkd = dk.data_ptr<A>(), *dvd = dv.data_ptr<A>();
  // per row of a chunk: kk values P, kk values s dS, the count (-1: a non-finite row); in the calling thread's
  // second buffer, so no allocation per call
  const int64_t row_bytes = kk * 2 * int64_t(sizeof(A)) + int64_t(sizeof(int32_t));
  const int64_t nh = std::min(std::max<int64_t>(block_bytes(kChunkBytes) / std::max<int64_t>(L * row_bytes, 1), 1), N);
  A* P = thread_buffer<A>(1, (nh * L * row_bytes + int64_t(sizeof(A)) - 1) / int64_t(sizeof(A)));
  A* SDS = P + nh * L * kk;
  int32_t* CNT = reinterpret_cast<int32_t*>(SDS + nh * L * kk);
  const int64_t threads = at::get_num_threads();
  for (int64_t h0 = 0; h0 < N; h0 += nh) {
    const int64_t n = std::min(nh, N - h0);
    at::parallel_for(0, n * L, cpu::grain(4 * kk * Dh, kRowGrainCells), [&](int64_t r0, int64_t r1) {
      std::vector<A> dp(static_cast<size_t>(std::max<int64_t>(kk, 1)));
      const int32_t self = 0;
      for (int64_t rl = r0; rl < r1; ++rl) {
        const int64_t r = h0 * L + rl, head = (r / L) * L * Dh;
        const A lse_r = ld[r];
        A* dq_r = dqd + r * Dh;
        if (lse_r != lse_r) {
          CNT[rl] = -1;
          std::fill(dq_r, dq_r + Dh, std::numeric_limits<A>::quiet_NaN());
          continue;
        }
        const int32_t* ir = kept_d + r * kk;
        int64_t c = 0;
        while (c < kk && ir[c] >= 0) ++c;  // the kept keys come first, -1 after
        A* pr = P + rl * kk;
        A* sdsr = SDS + rl * kk;
        const A* g_r = gd + r * Dh;
        ops.dot(pr, qd + r * Dh, ir, c, kd + head, Dh);  // the kept dots
        for (int64_t e = 0; e < c; ++e) pr[e] = to_exp2_arg<A>(s * pr[e] - lse_r);  // S_ij rounded as the forward's
        exp2_row_sum<A>(pr, c, vec);  // P_ij
        A di;
        ops.dot(&di, g_r, &self, 1, od + r * Dh, Dh);
        ops.dot(dp.data(), g_r, ir, c, vd + head, Dh);
        for (int64_t e = 0; e < c; ++e) sdsr[e] = s * (pr[e] * (dp[e] - di));
        ops.combine(dq_r, sdsr, ir, c, kd + head, Dh);
        CNT[rl] = static_cast<int32_t>(c);
      }
    });
    // slices of Dh (multiples of 8) so that a chunk with fewer heads than threads still fills them
    int64_t slices = n >= threads ? 1 : std::min((threads + n - 1) / n, std::max<int64_t>(Dh / 16, 1));
    const int64_t step = ((Dh + slices - 1) / slices + 7) / 8 * 8;
    slices = (Dh + step - 1) / step;
    at::parallel_for(0, n * slices, cpu::grain(2 * L * kk * step, kRowGrainCells), [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t hl = t / slices, d0 = (t % slices) * step, d1 = std::min(Dh, d0 + step);
        const int64_t head = (h0 + hl) * L * Dh;
        A* dkh = dkd + head;
        A* dvh = dvd + head;
        bool bad = false;
        for (int64_t i = 0; i < L; ++i) bad |= CNT[hl * L + i] < 0;
        const A init = bad ? std::numeric_limits<A>::quiet_NaN() : A(0);
        for (int64_t j = 0; j < L; ++j) {
          std::fill(dkh + j * Dh + d0, dkh + j * Dh + d1, init);
          std::fill(dvh + j * Dh + d0, dvh + j * Dh + d1, init);
        }
        if (bad) continue;
        for (int64_t i = 0; i < L; ++i) {
          const int64_t rl = hl * L + i, c = CNT[rl];
          const int32_t* ir = kept_d + (h0 * L + rl) * kk;
          ops.scatter(dkh, SDS + rl * kk, ir, c, qd + head + i * Dh, Dh, d0, d1);
          ops.scatter(dvh, P + rl * kk, ir, c, gd + head + i * Dh, Dh, d0, d1);
        }
      }
    });
  }
}

// out [N, L, Dh] and lse [N, L] (accumulation dtype) of q, k, v [N, L, Dh], in chunks of heads (short rows).
template <typename A>
void forward_chunked(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, A s, int64_t top_k,
                    bool keep_first, at::Tensor& out, at::Tensor& lse, int32_t* kept) {
  const int64_t N = q.size(0), L = q.size(1), Dh = q.size(2);
  const int64_t nh = heads_per_chunk(N, L, sizeof(A));
  const bool vec = cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed();
  const int64_t kk = top_k + (keep_first ? 1 : 0);
  const bool sparse = kept != nullptr;
  at::Tensor buf = at::from_blob(thread_buffer<A>(0, nh * L * L), {nh, L, L}, q.options());
  at::Tensor shift_buf = at::empty({nh, L}, q.options());
  for (int64_t h0 = 0; h0 < N; h0 += nh) {
    const int64_t n = std::min(nh, N - h0);
    at::Tensor x = buf.narrow(0, 0, n);
    at::Tensor shift = shift_buf.narrow(0, 0, n);
    at::bmm_out(x, q.narrow(0, h0, n), k.narrow(0, h0, n).transpose(1, 2));  // BLAS, outside parallel_for
    if (sparse) {
      A* xd = x.data_ptr<A>();
      const A* vd = v.const_data_ptr<A>() + h0 * L * Dh;
      A* od = out.data_ptr<A>() + h0 * L * Dh;
      A* ld = lse.data_ptr<A>() + h0 * L;  // the row maxima, until they become lse
      at::parallel_for(0, n * L, cpu::grain(L + kk * Dh, kRowGrainCells), [&](int64_t r0, int64_t r1) {
        Scratch<A> sc(L);
        SparseScratch<A> ss(kk);
        const RowOps<A> ops = row_ops<A>(vec);
        rows_to_exp2_args<A>(xd, ld, nullptr, r0, r1, L, s, top_k, keep_first, sc, vec);
        for (int64_t r = r0; r < r1; ++r) {
          forward_row_sparse<A>(xd + r * L, L, Dh, kk, ops, vec, vd + (r / L) * L * Dh, od + r * Dh, ld + r,
                                kept + (h0 * L + r) * kk, ss);
        }
      });
      continue;
    }
    at::Tensor l = lse.narrow(0, h0, n);  // the row sums of exp(S_ij - max_i) on K(i), until they become lse
    chunk_to_exp<A>(x, shift.data_ptr<A>(), nullptr, L, s, top_k, keep_first, l.data_ptr<A>(), vec);
    at::Tensor o = out.narrow(0, h0, n);
    at::bmm_out(o, x, v.narrow(0, h0, n));
    o.div_(l.unsqueeze(2));
    l.log_().add_(shift);
  }
}

// dq, dk, dv [N, L, Dh] (accumulation dtype) from g = dO, out and lse, in the forward's chunks of heads.
template <typename A>
void backward_chunked(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& out, const at::Tensor& lse, A s, int64_t top_k, bool keep_first,
                     at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t N = q.size(0), L = q.size(1);
  const int64_t nh = heads_per_chunk(N, L, sizeof(A));  // the forward's chunks: the same GEMMs, the same set
  at::Tensor buf = at::from_blob(thread_buffer<A>(0, nh * L * L), {nh, L, L}, q.options());
  const bool vec = cpu::cpu_has_avx2_fma() && cpu::vec_kernels_allowed();
  const int64_t Dh = q.size(2);
  at::Tensor dp_buf = at::from_blob(thread_buffer<A>(1, nh * L * L), {nh, L, L}, q.options());
  const A* g_ptr = g.const_data_ptr<A>();
  const A* o_ptr = out.const_data_ptr<A>();
  const A* lse_ptr = lse.const_data_ptr<A>();
  for (int64_t h0 = 0; h0 < N; h0 += nh) {
    const int64_t n = std::min(nh, N - h0);
    const at::Tensor qc = q.narrow(0, h0, n), kc = k.narrow(0, h0, n), vc = v.narrow(0, h0, n);
    const at::Tensor gc = g.narrow(0, h0, n);
    at::Tensor x = buf.narrow(0, 0, n);
    at::bmm_out(x, qc, kc.transpose(1, 2));  // recomputed instead of saving [N, L, L] in the forward
    chunk_to_exp<A>(x, nullptr, lse_ptr + h0 * L, L, s, top_k, keep_first, nullptr, vec);  // P: 0 off K(i)
    at::Tensor dvc = dv.narrow(0, h0, n);
    at::bmm_out(dvc, x.transpose(1, 2), gc);
    at::Tensor dp = dp_buf.narrow(0, 0, n);
    at::bmm_out(dp, gc, vc.transpose(1, 2));
    // dS = P (.) (dP - D), D_i = <dO_i, out_i>, in place in dp: one pass (no ATen op inside parallel_for)
    A* dpd = dp.data_ptr<A>();
    const A* pd = x.const_data_ptr<A>();
    const A* gd = g_ptr + h0 * L * Dh;
    const A* od = o_ptr + h0 * L * Dh;
    at::parallel_for(0, n * L, cpu::grain(L, kRowGrainCells), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        A di = 0;
        for (int64_t d = 0; d < Dh; ++d) di += gd[r * Dh + d] * od[r * Dh + d];
        A* row = dpd + r * L;
        const A* pr = pd + r * L;
        for (int64_t j = 0; j < L; ++j) row[j] = pr[j] * (row[j] - di);
      }
    });
    at::Tensor dqc = dq.narrow(0, h0, n), dkc = dk.narrow(0, h0, n);
    at::baddbmm_out(dqc, dqc, dp, kc, 0, s);  // s dS k (beta = 0: dq's old contents are ignored)
    at::baddbmm_out(dkc, dkc, dp.transpose(1, 2), qc, 0, s);
  }
}

// Which scheme runs: a function of L only, so the forward and the backward always take the same one. Short rows
// (L < kMinBlockedL) go in chunks of heads through batched GEMMs: per-head BLAS calls on 65 x 65 x 64 products
// cost more in call overhead than they save (2x slower fwd+bwd at L = 65, B H = 32, 2 threads); longer rows go in
// blocks of rows with the row pass between the GEMMs (12-18% faster at L = 197 and 257).
constexpr int64_t kMinBlockedL = 128;

template <typename A>
void forward_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, A s, int64_t top_k,
                    bool keep_first, at::Tensor& out, at::Tensor& lse, int32_t* kept) {
  if (q.size(1) >= kMinBlockedL) return forward_blocked<A>(q, k, v, s, top_k, keep_first, out, lse, kept);
  forward_chunked<A>(q, k, v, s, top_k, keep_first, out, lse, kept);
}

template <typename A>
void backward_kernel(const at::Tensor& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& out, const at::Tensor& lse, const at::Tensor& kept, A s, int64_t top_k,
                     bool keep_first, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  if (kept.size(2) > 0) return backward_from_kept<A>(g, q, k, v, out, lse, kept, s, dq, dk, dv);
  if (q.size(1) >= kMinBlockedL) return backward_blocked<A>(g, q, k, v, out, lse, s, top_k, keep_first, dq, dk, dv);
  backward_chunked<A>(g, q, k, v, out, lse, s, top_k, keep_first, dq, dk, dv);
}

// save_kept: the sparse products, and the kept keys returned as kept [B, H, L, top_k + keep_first] (int32, -1 past
// a row's last); otherwise the dense products and kept [B, H, L, 0].
std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                                  const at::Tensor& v_in, int64_t top_k, double scale,
                                                                  bool keep_first, bool save_kept) {
  check_qkv(q_in, k_in, v_in, top_k, "topk_attention");
  check_blas_sizes(q_in.size(2), q_in.size(3), "topk_attention");
  const at::ScalarType acc = acc_dtype_of(q_in.scalar_type());
  const int64_t B = q_in.size(0), H = q_in.size(1), L = q_in.size(2), Dh = q_in.size(3);
  const int64_t kk = save_kept ? top_k + (keep_first ? 1 : 0) : 0;
  at::Tensor lse = at::empty({B, H, L}, q_in.options().dtype(acc));
  at::Tensor kept = at::empty({B, H, L, kk}, q_in.options().dtype(at::kInt));
  if (q_in.numel() == 0) return {at::empty({B, H, L, Dh}, q_in.options()), lse.fill_(0), kept.fill_(-1)};
  const at::Tensor q = as_acc_heads(q_in, acc), k = as_acc_heads(k_in, acc), v = as_acc_heads(v_in, acc);
  at::Tensor out = at::empty({B * H, L, Dh}, q.options());
  at::Tensor lse3 = lse.view({B * H, L});
  int32_t* kept_d = save_kept ? kept.data_ptr<int32_t>() : nullptr;
  if (acc == at::kDouble) {
    forward_kernel<double>(q, k, v, scale, top_k, keep_first, out, lse3, kept_d);
  } else {
    // scale rounded to fp32 first, as the reference's fp32 multiply does
    forward_kernel<float>(q, k, v, static_cast<float>(scale), top_k, keep_first, out, lse3, kept_d);
  }
  return {out.view({B, H, L, Dh}).to(q_in.scalar_type()), lse, kept};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> topk_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& kept_in, int64_t top_k, double scale,
    bool keep_first) {
  constexpr const char* op = "topk_attention_backward";
  check_qkv(q_in, k_in, v_in, top_k, op);
  check_blas_sizes(q_in.size(2), q_in.size(3), op);
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
  const int64_t kk = top_k + (keep_first ? 1 : 0);
  TORCH_CHECK(kept_in.device().is_cpu() && kept_in.scalar_type() == at::kInt && kept_in.dim() == 4 &&
                  kept_in.size(0) == B && kept_in.size(1) == H && kept_in.size(2) == L &&
                  (kept_in.size(3) == 0 || kept_in.size(3) == kk),
              op, ": kept must be an int32 CPU tensor [B, H, L, 0] or [B, H, L, top_k + keep_first] = [", B, ", ", H,
              ", ", L, ", ", kk, "] (the forward's third output), got ", kept_in.scalar_type(), " ", kept_in.sizes());
  const at::ScalarType acc = acc_dtype_of(q_in.scalar_type());
  if (q_in.numel() == 0) {
    return {at::zeros_like(q_in, at::MemoryFormat::Contiguous), at::zeros_like(k_in, at::MemoryFormat::Contiguous),
            at::zeros_like(v_in, at::MemoryFormat::Contiguous)};
  }
  at::Tensor kept = kept_in.contiguous().view({B * H, L, kept_in.size(3)});
  if (kept.size(2) > 0) {
    // the kernel indexes k and v rows with these: out-of-range values would read out of bounds
    const auto range = at::aminmax(kept);
    TORCH_CHECK(std::get<0>(range).item<int32_t>() >= -1 && std::get<1>(range).item<int32_t>() < L, op,
                ": kept holds key indices outside [-1, L = ", L, ")");
  }
  const at::Tensor q = as_acc_heads(q_in, acc), k = as_acc_heads(k_in, acc), v = as_acc_heads(v_in, acc);
  const at::Tensor g = as_acc_heads(grad_out, acc), out = as_acc_heads(out_in, acc);
  const at::Tensor lse = lse_in.to(acc).contiguous().view({B * H, L});
  at::Tensor dq = at::empty({B * H, L, Dh}, q.options());
  at::Tensor dk = at::empty_like(dq), dv = at::empty_like(dq);
  if (acc == at::kDouble) {
    backward_kernel<double>(g, q, k, v, out, lse, kept, scale, top_k, keep_first, dq, dk, dv);
  } else {
    backward_kernel<float>(g, q, k, v, out, lse, kept, static_cast<float>(scale), top_k, keep_first, dq, dk, dv);
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
