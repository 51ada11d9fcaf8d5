// augcl::contrastive_lse and augcl::contrastive_lse_backward -- CUDA backend (chunked cuBLAS GEMMs with fused
// logsumexp / softmax-gradient kernels).
//
// Math (oracle: augcl/reference/contrastive.py). Anchors A [M, D], candidates C [Nc, D], scale s (0-dim, on the
// GPU), pos_idx [M, P], excl_idx [M, E] (int64, -1 = padding), neg_start:
//   incl(i) = { j in pos_idx[i] }  U  { j >= neg_start and j not in excl_idx[i] }
//   lse[i]  = log sum_{j in incl(i)} exp(s * <a_i, c_j>)                      ([M], fp32; fp64 for fp64 inputs)
// Backward, with p_ij = exp(s * dot_ij - lse_i) on incl(i) (0 elsewhere) and G_ij = grad_lse_i * p_ij:
//   dA_i = s * sum_j G_ij c_j,   dC_j = s * sum_i G_ij a_i,   ds = sum_ij G_ij dot_ij.
// A positive is always included (even below neg_start or when also listed as excluded); a column listed twice
// counts once; an empty incl(i) gives lse_i = -inf and zero gradients. Indices outside [0, Nc) are ignored.
//
// Chunking and memory. Anchors are processed R rows at a time, R a multiple of 64 chosen so that the logits
// buffer [R, Nc] in the accumulation type stays within kChunkBytes (256 MiB) (R = 64 at least, so for
// Nc > 1M candidates the buffer is 64 * Nc elements). The [M, Nc] matrix is never formed: memory is
// O(R * Nc + (M + Nc) * D). Per chunk:
//   forward : dots = A_chunk @ C^T (cublasGemmEx: A/C in their dtype, fp32 output and accumulation -- TF32 for
//             fp32 inputs only when torch allows TF32 in cuBLAS; fp64 in/out for fp64), then one fused kernel,
//             one thread block per row: inclusion mask + scale + online (max, sum-exp) logsumexp -> lse[i].
//   backward: the same GEMM recomputes dots; a fused kernel overwrites the buffer in place with s * G_ij (0 off
//             incl(i)) and writes the row's sum_j G_ij dot_ij; then dA_chunk = (s G) @ C and
//             dC += (s G)^T @ A_chunk, both fp32 (fp64) cuBLAS GEMMs through ATen (at::mm_out / addmm_), with
//             fp16/bf16 operands converted to fp32 (C once, A per chunk) and dC accumulated in fp32. ds is the
//             ATen sum of the per-row buffer. s is only ever read on the device: no host synchronisation.
// Everything (ATen ops, cuBLAS through torch's handle, the kernels) runs on the current CUDA stream.
//
// Why this backend exists. The Triton kernel (kernels/contrastive.py) is flash-style: it never writes logits to
// memory. This one trades that for cuBLAS tensor-core GEMMs, which reach near-peak throughput for any shape and
// dtype with no autotuning, at the cost of writing and re-reading R x Nc logits (memory-bound when D is small).
// It is a baseline and a fallback; keep it only where benchmarks show it winning (e.g. large D, fp64, or shapes
// the Triton configs handle badly).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>

namespace augcl {
namespace {

// ------------------------------------------------------------------------------------------------ policy
constexpr int64_t kChunkBytes = int64_t(256) << 20;  // bound on the [R, Nc] logits buffer
constexpr int64_t kRowAlign = 64;                      // R is a multiple of this (unless R = M)
constexpr int64_t kMaxChunkRows = int64_t(1) << 24;    // keeps grid.x and the GEMM's n far inside int range
constexpr int64_t kMaxStagedIdxBytes = 32 * 1024;      // pos/excl rows staged in shared memory up to this size

int64_t chunk_rows(int64_t m, int64_t nc, int64_t elem_size) {
  int64_t r = kChunkBytes / (std::max<int64_t>(nc, 1) * elem_size);
  r = (r / kRowAlign) * kRowAlign;
  r = std::max(r, kRowAlign);
  r = std::min(r, kMaxChunkRows);
  return std::min(r, m);
}

int row_threads(int64_t nc) {
  if (nc <= 256) return 64;
  if (nc <= 1024) return 128;
  return 256;
}

template <typename scalar_t>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

// ---------------------------------------------------------------------------------------- device helpers
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }

// Is v in the ascending array a[0, n)?
__device__ __forceinline__ bool sorted_contains(const int64_t* a, int n, int64_t v) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (a[mid] < v) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < n && a[lo] == v;
}

// j in incl(i): pos/excl are row i's sorted index lists.
__device__ __forceinline__ bool is_included(int64_t j, int64_t neg_start, const int64_t* pos, int n_pos,
                                            const int64_t* excl, int n_excl) {
  if (j >= neg_start && (n_excl == 0 || !sorted_contains(excl, n_excl, j))) return true;
  return n_pos > 0 && sorted_contains(pos, n_pos, j);
}

// Running logsumexp state: value = m + log(s). m is never NaN (a NaN input turns s into NaN instead), so the
// result propagates NaN like torch.logsumexp; +/-inf inputs are handled without inf - inf.
template <typename T>
__device__ __forceinline__ void lse_push(T& m, T& s, T x) {
  if (x > m) {
    s = s * dev_exp(m - x) + T(1);  // m = -inf: s * 0 (s is 0 or counts -inf entries, which contribute 0)
    m = x;
  } else {
    s += (x == m) ? T(1) : dev_exp(x - m);  // NaN x: exp(NaN) = NaN -> s
  }
}

template <typename T>
__device__ __forceinline__ void lse_merge(T& m, T& s, T m2, T s2) {
  const T mx = m2 > m ? m2 : m;
  const T a = (m == mx) ? s : s * dev_exp(m - mx);
  const T b = (m2 == mx) ? s2 : s2 * dev_exp(m2 - mx);
  m = mx;
  s = a + b;
}

// Block-wide logsumexp merge; the result is valid in thread 0. blockDim.x is a multiple of 32, <= 1024.
template <typename T>
__device__ __forceinline__ void block_lse_reduce(T& m, T& s) {
  __shared__ T sh_m[32];
  __shared__ T sh_s[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n_warps = blockDim.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const T s2 = __shfl_xor_sync(0xffffffffu, s, off);
    lse_merge(m, s, m2, s2);
  }
  if (lane == 0) {
    sh_m[warp] = m;
    sh_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < n_warps ? sh_m[lane] : -std::numeric_limits<T>::infinity();
    s = lane < n_warps ? sh_s[lane] : T(0);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const T m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const T s2 = __shfl_xor_sync(0xffffffffu, s, off);
      lse_merge(m, s, m2, s2);
    }
  }
}

// Block-wide sum; the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T sh[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n_warps = blockDim.x >> 5;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < n_warps ? sh[lane] : T(0);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  }
  return v;
}

// Points pos/excl at row `row`'s sorted index lists, staged in dynamic shared memory when `stage`.
// Must be called by every thread of the block (it may __syncthreads).
__device__ __forceinline__ void load_row_indices(const int64_t* __restrict__ pos_g, int n_pos,
                                                 const int64_t* __restrict__ excl_g, int n_excl, int64_t row,
                                                 bool stage, const int64_t*& pos, const int64_t*& excl) {
  extern __shared__ __align__(16) unsigned char augcl_smem_raw[];
  pos = pos_g + row * n_pos;
  excl = excl_g + row * n_excl;
  if (stage) {
    int64_t* sm = reinterpret_cast<int64_t*>(augcl_smem_raw);
    const int total = n_pos + n_excl;
    for (int k = threadIdx.x; k < total; k += blockDim.x) sm[k] = k < n_pos ? pos[k] : excl[k - n_pos];
    __syncthreads();
    pos = sm;
    excl = sm + n_pos;
  }
}

constexpr int kUnroll = 4;

// ------------------------------------------------------------------------------------------------ kernels
// One block per row of the chunk. dots: [rows, nc] row-major (unscaled). Writes lse_out[row].
template <typename acc_t>
__global__ void lse_rows_kernel(const acc_t* __restrict__ dots, int64_t nc, const acc_t* __restrict__ scale_ptr,
                                const int64_t* __restrict__ pos_g, int n_pos, const int64_t* __restrict__ excl_g,
                                int n_excl, int64_t neg_start, bool stage, acc_t* __restrict__ lse_out) {
  const int64_t row = blockIdx.x;
  const int64_t* pos;
  const int64_t* excl;
  load_row_indices(pos_g, n_pos, excl_g, n_excl, row, stage, pos, excl);

  const acc_t s = *scale_ptr;
  const acc_t* __restrict__ d = dots + row * nc;
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  acc_t sum = acc_t(0);
  // Columns below neg_start can only be included as positives.
  const int64_t start = n_pos > 0 ? 0 : neg_start;
  const int64_t stride = int64_t(blockDim.x);
  for (int64_t base = start + threadIdx.x; base < nc; base += kUnroll * stride) {
    acc_t v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t j = base + k * stride;
      v[k] = j < nc ? d[j] : acc_t(0);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t j = base + k * stride;
      if (j < nc && is_included(j, neg_start, pos, n_pos, excl, n_excl)) lse_push(m, sum, s * v[k]);
    }
  }
  block_lse_reduce(m, sum);
  if (threadIdx.x == 0) lse_out[row] = m + dev_log(sum);  // empty row: -inf + log(0) = -inf
}

// One block per row. In place: buf[row, j] = s * G_ij on incl(i), 0 elsewhere, where
// G_ij = grad_lse_i * exp(s * dot_ij - lse_i); ds_rows[row] = sum_j G_ij * dot_ij.
template <typename acc_t>
__global__ void softmax_grad_rows_kernel(acc_t* __restrict__ buf, int64_t nc, const acc_t* __restrict__ scale_ptr,
                                         const acc_t* __restrict__ grad_lse, const acc_t* __restrict__ lse,
                                         const int64_t* __restrict__ pos_g, int n_pos,
                                         const int64_t* __restrict__ excl_g, int n_excl, int64_t neg_start,
                                         bool stage, acc_t* __restrict__ ds_rows) {
  const int64_t row = blockIdx.x;
  const int64_t* pos;
  const int64_t* excl;
  load_row_indices(pos_g, n_pos, excl_g, n_excl, row, stage, pos, excl);

  const acc_t s = *scale_ptr;
  const acc_t g = grad_lse[row];
  const acc_t l = lse[row];
  acc_t* __restrict__ d = buf + row * nc;
  acc_t ds = acc_t(0);
  const int64_t stride = int64_t(blockDim.x);
  for (int64_t base = threadIdx.x; base < nc; base += kUnroll * stride) {
    acc_t v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t j = base + k * stride;
      v[k] = j < nc ? d[j] : acc_t(0);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t j = base + k * stride;
      if (j < nc) {
        acc_t out = acc_t(0);
        if (is_included(j, neg_start, pos, n_pos, excl, n_excl)) {
          const acc_t gp = g * dev_exp(s * v[k] - l);
          ds += gp * v[k];
          out = s * gp;
        }
        d[j] = out;
      }
    }
  }
  ds = block_sum(ds);
  if (threadIdx.x == 0) ds_rows[row] = ds;
}

// --------------------------------------------------------------------------------------------------- host
// Whether torch allows TF32 in fp32 cuBLAS matmuls. torch >= 2.9 keeps a per-backend fp32 precision (Python:
// torch.backends.cuda.matmul.fp32_precision), and its legacy getter allowTF32CuBLAS() throws ("mix of the legacy
// and new APIs") once a user has set the new one: every fp32 call would fail. So the new getter is read wherever
// it exists, in either of its forms -- float32Precision(Float32Backend, Float32Op) -> Float32Precision, or
// float32Precision("cuda", "matmul") -> std::string in the releases that took strings -- told apart by its
// signature, so that one source builds against every supported torch (2.6 has only the legacy getter).
template <typename R, typename B, typename O>
bool tf32_from_precision(const at::Context& ctx, R (at::Context::*get)(B, O) const) {
  using Backend = std::decay_t<B>;
  using Op = std::decay_t<O>;
  if constexpr (std::is_enum_v<Backend>) {
    return (ctx.*get)(Backend::CUDA, Op::MATMUL) == R::TF32;
  } else {
    return (ctx.*get)("cuda", "matmul") == "tf32";
  }
}

template <typename Ctx>
auto cublas_tf32_allowed(const Ctx& ctx, int) -> decltype(&Ctx::float32Precision, bool()) {
  return tf32_from_precision(ctx, &Ctx::float32Precision);
}

template <typename Ctx>
bool cublas_tf32_allowed(const Ctx& ctx, long) {  // torch < 2.9: the legacy flag is the only one
  return ctx.allowTF32CuBLAS();
}

template <typename T>
struct CudaType;
template <>
struct CudaType<float> {
  static constexpr cudaDataType_t value = CUDA_R_32F;
};
template <>
struct CudaType<double> {
  static constexpr cudaDataType_t value = CUDA_R_64F;
};
template <>
struct CudaType<at::Half> {
  static constexpr cudaDataType_t value = CUDA_R_16F;
};
template <>
struct CudaType<at::BFloat16> {
  static constexpr cudaDataType_t value = CUDA_R_16BF;
};

// Sets host pointer mode on torch's handle for the scope (our alpha/beta live on the host) and restores it.
struct HostPointerModeGuard {
  cublasHandle_t handle;
  cublasPointerMode_t previous;
  explicit HostPointerModeGuard(cublasHandle_t h) : handle(h) {
    TORCH_CUDABLAS_CHECK(cublasGetPointerMode(handle, &previous));
    if (previous != CUBLAS_POINTER_MODE_HOST) TORCH_CUDABLAS_CHECK(cublasSetPointerMode(handle, CUBLAS_POINTER_MODE_HOST));
  }
  ~HostPointerModeGuard() {
    if (previous != CUBLAS_POINTER_MODE_HOST) cublasSetPointerMode(handle, previous);  // no throw in a destructor
  }
  HostPointerModeGuard(const HostPointerModeGuard&) = delete;
  HostPointerModeGuard& operator=(const HostPointerModeGuard&) = delete;
};

// out[rows, nc] (row-major, acc_t) = a[rows, d] @ c[nc, d]^T (a, c row-major scalar_t).
// cuBLAS is column-major: a row-major [x, y] matrix is a column-major (y x x) one with ld y. So c is c_cm
// (d x nc, ld d), a is a_cm (d x rows, ld d), out is out_cm (nc x rows, ld nc), and out_cm = c_cm^T * a_cm:
// transa = T, transb = N, m = nc, n = rows, k = d.
template <typename scalar_t, typename acc_t>
void gemm_dots(cublasHandle_t handle, const scalar_t* a, int64_t rows, const scalar_t* c, int64_t nc, int64_t d,
               acc_t* out) {
  const acc_t alpha = acc_t(1);
  const acc_t beta = acc_t(0);
  cublasComputeType_t compute;
  if (std::is_same<acc_t, double>::value) {
    compute = CUBLAS_COMPUTE_64F;
  } else if (std::is_same<scalar_t, float>::value && cublas_tf32_allowed(at::globalContext(), 0)) {
    compute = CUBLAS_COMPUTE_32F_FAST_TF32;
  } else {
    compute = CUBLAS_COMPUTE_32F;
  }
  HostPointerModeGuard pointer_mode(handle);
  TORCH_CUDABLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(nc), static_cast<int>(rows),
                                    static_cast<int>(d), &alpha, c, CudaType<scalar_t>::value, static_cast<int>(d),
                                    a, CudaType<scalar_t>::value, static_cast<int>(d), &beta, out,
                                    CudaType<acc_t>::value, static_cast<int>(nc), compute, CUBLAS_GEMM_DEFAULT));
}

// Performance candidate (benchmarks/gpu_candidates.py), off unless AUGCL_CUDA_BF16_GEMM=1 (read at every call): the
// bf16 backward's two GEMMs on bf16 tensor cores -- s*G rounded to bf16 (as the Triton kernels round it), A and C as
// given, fp32 output and accumulation -- instead of fp32 CUDA-core GEMMs on operands converted to fp32. fp16 keeps
// the fp32 path: s*G of a mean over many rows is below fp16's range.
bool bf16_gemms_requested() {
  const char* v = std::getenv("AUGCL_CUDA_BF16_GEMM");
  return v != nullptr && std::string(v) == "1";
}

// Row-major out[m, n] (fp32, leading dimension n) = alpha * op(x) @ op(y) + beta * out, x and y bf16 row-major:
// op(x) = x [m, k] (trans_x false, ld k) or x^T with x [k, m] (trans_x true, ld m); likewise y [k, n] or y^T
// with y [n, k]. cuBLAS is column-major, so it computes out^T = op(y)^T @ op(x)^T.
void gemm_bf16_f32(cublasHandle_t handle, bool trans_x, bool trans_y, int64_t m, int64_t n, int64_t k,
                   const at::BFloat16* x, const at::BFloat16* y, float* out, float beta) {
  const float alpha = 1.0f;
  HostPointerModeGuard pointer_mode(handle);
  TORCH_CUDABLAS_CHECK(cublasGemmEx(
      handle, trans_y ? CUBLAS_OP_T : CUBLAS_OP_N, trans_x ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
      static_cast<int>(m), static_cast<int>(k), &alpha, y, CUDA_R_16BF, static_cast<int>(trans_y ? k : n), x,
      CUDA_R_16BF, static_cast<int>(trans_x ? m : k), &beta, out, CUDA_R_32F, static_cast<int>(n),
      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

at::ScalarType acc_scalar_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_common(const char* op, const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& scale,
                  const at::Tensor& pos_idx, const at::Tensor& excl_idx) {
  TORCH_CHECK(anchors.is_cuda(), op, ": anchors must be a CUDA tensor, got device ", anchors.device());
  TORCH_CHECK(anchors.dim() == 2, op, ": anchors must be 2-D [M, D], got shape ", anchors.sizes());
  TORCH_CHECK(candidates.dim() == 2, op, ": candidates must be 2-D [Nc, D], got shape ", candidates.sizes());
  const auto dt = anchors.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat || dt == at::kDouble, op,
              ": anchors must be float16, bfloat16, float32 or float64, got ", dt);
  TORCH_CHECK(candidates.scalar_type() == dt, op, ": candidates dtype ", candidates.scalar_type(),
              " differs from anchors dtype ", dt);
  TORCH_CHECK(candidates.device() == anchors.device(), op, ": candidates is on ", candidates.device(),
              ", anchors on ", anchors.device());
  TORCH_CHECK(candidates.size(1) == anchors.size(1), op, ": candidates has D = ", candidates.size(1),
              ", anchors has D = ", anchors.size(1));
  TORCH_CHECK(candidates.size(0) <= INT_MAX && anchors.size(1) <= INT_MAX, op,
              ": Nc and D must fit in 32-bit ints (cuBLAS), got Nc = ", candidates.size(0), ", D = ", anchors.size(1));
  TORCH_CHECK(scale.dim() == 0, op, ": scale must be a 0-dim tensor, got shape ", scale.sizes());
  TORCH_CHECK(at::isFloatingType(scale.scalar_type()), op, ": scale must be floating point, got ",
              scale.scalar_type());
  TORCH_CHECK(scale.device() == anchors.device(), op, ": scale must be on ", anchors.device(), " (no host sync), got ",
              scale.device());
  const int64_t m = anchors.size(0);
  for (const auto& pr : {std::make_pair("pos_idx", &pos_idx), std::make_pair("excl_idx", &excl_idx)}) {
    const at::Tensor& t = *pr.second;
    TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", pr.first, " must be int64, got ", t.scalar_type());
    TORCH_CHECK(t.dim() == 2 && t.size(0) == m, op, ": ", pr.first, " must be [M, K] with M = ", m, ", got shape ",
                t.sizes());
    TORCH_CHECK(t.device() == anchors.device(), op, ": ", pr.first, " is on ", t.device(), ", anchors on ",
                anchors.device());
    TORCH_CHECK(t.size(1) <= INT_MAX, op, ": ", pr.first, " has too many columns");
  }
}

// Row-sorted contiguous copy of an index matrix (binary search in the kernels); no sort for <= 1 column.
at::Tensor sorted_rows(const at::Tensor& idx) {
  if (idx.size(1) <= 1 || idx.size(0) == 0) return idx.contiguous();
  return std::get<0>(idx.sort(/*dim=*/1)).contiguous();
}

struct RowIndexArgs {
  const int64_t* pos;
  int n_pos;
  const int64_t* excl;
  int n_excl;
  bool stage;
  size_t smem;
};

RowIndexArgs row_index_args(const at::Tensor& pos, const at::Tensor& excl) {
  RowIndexArgs r;
  r.n_pos = static_cast<int>(pos.size(1));
  r.n_excl = static_cast<int>(excl.size(1));
  r.pos = pos.data_ptr<int64_t>();
  r.excl = excl.data_ptr<int64_t>();
  const int64_t bytes = (int64_t(r.n_pos) + r.n_excl) * int64_t(sizeof(int64_t));
  r.stage = bytes > 0 && bytes <= kMaxStagedIdxBytes;
  r.smem = r.stage ? static_cast<size_t>(bytes) : 0;
  return r;
}

at::Tensor contrastive_lse_cuda(const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& scale,
                                const at::Tensor& pos_idx, const at::Tensor& excl_idx, int64_t neg_start) {
  check_common("contrastive_lse", anchors, candidates, scale, pos_idx, excl_idx);
  const c10::cuda::CUDAGuard device_guard(anchors.device());
  const int64_t m = anchors.size(0), nc = candidates.size(0), d = anchors.size(1);
  const auto acc = acc_scalar_type(anchors.scalar_type());
  at::Tensor lse = at::empty({m}, anchors.options().dtype(acc));
  if (m == 0) return lse;
  if (nc == 0) return lse.fill_(-std::numeric_limits<double>::infinity());

  const at::Tensor a = anchors.contiguous();
  const at::Tensor c = candidates.contiguous();
  const at::Tensor s = scale.to(acc);
  const at::Tensor pos = sorted_rows(pos_idx);
  const at::Tensor excl = sorted_rows(excl_idx);
  const RowIndexArgs idx = row_index_args(pos, excl);
  const int64_t ns = std::min(std::max<int64_t>(neg_start, 0), nc);
  const int64_t r = chunk_rows(m, nc, at::elementSize(acc));
  at::Tensor buf = at::empty({r, nc}, anchors.options().dtype(acc));
  const int threads = row_threads(nc);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "contrastive_lse_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const scalar_t* a_ptr = a.data_ptr<scalar_t>();
    const scalar_t* c_ptr = c.data_ptr<scalar_t>();
    acc_t* buf_ptr = buf.data_ptr<acc_t>();
    acc_t* lse_ptr = lse.data_ptr<acc_t>();
    const acc_t* s_ptr = s.data_ptr<acc_t>();
    for (int64_t r0 = 0; r0 < m; r0 += r) {
      const int64_t rows = std::min(r, m - r0);
      if (d > 0) {
        gemm_dots<scalar_t, acc_t>(handle, a_ptr + r0 * d, rows, c_ptr, nc, d, buf_ptr);
      } else {
        buf.narrow(0, 0, rows).zero_();
      }
      lse_rows_kernel<acc_t><<<static_cast<unsigned int>(rows), threads, idx.smem, stream>>>(
          buf_ptr, nc, s_ptr, idx.pos + r0 * idx.n_pos, idx.n_pos, idx.excl + r0 * idx.n_excl, idx.n_excl, ns,
          idx.stage, lse_ptr + r0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return lse;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_lse_backward_cuda(
    const at::Tensor& grad_lse, const at::Tensor& anchors, const at::Tensor& candidates, const at::Tensor& scale,
    const at::Tensor& lse, const at::Tensor& pos_idx, const at::Tensor& excl_idx, int64_t neg_start) {
  check_common("contrastive_lse_backward", anchors, candidates, scale, pos_idx, excl_idx);
  const int64_t m = anchors.size(0), nc = candidates.size(0), d = anchors.size(1);
  for (const auto& pr : {std::make_pair("grad_lse", &grad_lse), std::make_pair("lse", &lse)}) {
    const at::Tensor& t = *pr.second;
    TORCH_CHECK(t.dim() == 1 && t.size(0) == m, "contrastive_lse_backward: ", pr.first, " must be [M] with M = ", m,
                ", got shape ", t.sizes());
    TORCH_CHECK(at::isFloatingType(t.scalar_type()), "contrastive_lse_backward: ", pr.first,
                " must be floating point, got ", t.scalar_type());
    TORCH_CHECK(t.device() == anchors.device(), "contrastive_lse_backward: ", pr.first, " is on ", t.device(),
                ", anchors on ", anchors.device());
  }
  const c10::cuda::CUDAGuard device_guard(anchors.device());
  const auto acc = acc_scalar_type(anchors.scalar_type());
  const auto acc_opts = anchors.options().dtype(acc);
  if (m == 0 || nc == 0) {
    return std::make_tuple(at::zeros({m, d}, anchors.options()), at::zeros({nc, d}, candidates.options()),
                           at::zeros({}, scale.options()));
  }

  const at::Tensor a = anchors.contiguous();
  const at::Tensor c = candidates.contiguous();
  const at::Tensor s = scale.to(acc);
  const at::Tensor g = grad_lse.to(acc).contiguous();
  const at::Tensor l = lse.to(acc).contiguous();
  const at::Tensor pos = sorted_rows(pos_idx);
  const at::Tensor excl = sorted_rows(excl_idx);
  const RowIndexArgs idx = row_index_args(pos, excl);
  const int64_t ns = std::min(std::max<int64_t>(neg_start, 0), nc);
  const int64_t r = chunk_rows(m, nc, at::elementSize(acc));
  const bool low_precision = a.scalar_type() != acc;  // fp16 / bf16: G GEMMs in fp32 on converted operands
  const bool bf16_gemms = a.scalar_type() == at::kBFloat16 && bf16_gemms_requested();

  at::Tensor buf = at::empty({r, nc}, acc_opts);
  at::Tensor ds_rows = at::empty({m}, acc_opts);
  const at::Tensor c_acc = low_precision && !bf16_gemms ? c.to(acc) : c;
  at::Tensor gs_bf16 = bf16_gemms ? at::empty({r, nc}, anchors.options()) : at::Tensor();
  at::Tensor grad_a = at::empty({m, d}, anchors.options());           // dtype of anchors, contiguous
  at::Tensor da_tmp = low_precision ? at::empty({r, d}, acc_opts) : at::Tensor();
  at::Tensor grad_c_acc = at::zeros({nc, d}, acc_opts);             // dC accumulator (fp32 / fp64)
  const int threads = row_threads(nc);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "contrastive_lse_backward_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const scalar_t* a_ptr = a.data_ptr<scalar_t>();
    const scalar_t* c_ptr = c.data_ptr<scalar_t>();
    acc_t* buf_ptr = buf.data_ptr<acc_t>();
    const acc_t* s_ptr = s.data_ptr<acc_t>();
    const acc_t* g_ptr = g.data_ptr<acc_t>();
    const acc_t* l_ptr = l.data_ptr<acc_t>();
    acc_t* ds_ptr = ds_rows.data_ptr<acc_t>();
    for (int64_t r0 = 0; r0 < m; r0 += r) {
      const int64_t rows = std::min(r, m - r0);
      at::Tensor gs = buf.narrow(0, 0, rows);  // [rows, nc] contiguous
      if (d > 0) {
        gemm_dots<scalar_t, acc_t>(handle, a_ptr + r0 * d, rows, c_ptr, nc, d, buf_ptr);
      } else {
        gs.zero_();
      }
      softmax_grad_rows_kernel<acc_t><<<static_cast<unsigned int>(rows), threads, idx.smem, stream>>>(
          buf_ptr, nc, s_ptr, g_ptr + r0, l_ptr + r0, idx.pos + r0 * idx.n_pos, idx.n_pos,
          idx.excl + r0 * idx.n_excl, idx.n_excl, ns, idx.stage, ds_ptr + r0);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (d == 0) continue;
      // buf now holds s * G for these rows.
      const at::Tensor a_chunk = a.narrow(0, r0, rows);
      at::Tensor da_chunk = grad_a.narrow(0, r0, rows);
      if (bf16_gemms) {
        at::Tensor gs_lp = gs_bf16.narrow(0, 0, rows);
        gs_lp.copy_(gs);
        at::Tensor t = da_tmp.narrow(0, 0, rows);
        const auto* g_lp = reinterpret_cast<const at::BFloat16*>(gs_lp.data_ptr());
        const auto* c_lp = reinterpret_cast<const at::BFloat16*>(c.data_ptr());
        const auto* a_lp = reinterpret_cast<const at::BFloat16*>(a_chunk.data_ptr());
        gemm_bf16_f32(handle, false, false, rows, d, nc, g_lp, c_lp, t.data_ptr<float>(), 0.0f);  // (s G) @ C
        da_chunk.copy_(t);
        gemm_bf16_f32(handle, true, false, nc, d, rows, g_lp, a_lp, grad_c_acc.data_ptr<float>(), 1.0f);
        continue;  // dC += (s G)^T @ A_chunk above
      }
      const at::Tensor a_chunk_acc = low_precision ? a_chunk.to(acc) : a_chunk;
      if (low_precision) {
        at::Tensor t = da_tmp.narrow(0, 0, rows);
        at::mm_out(t, gs, c_acc);  // [rows, d] = (s G) @ C
        da_chunk.copy_(t);
      } else {
        at::mm_out(da_chunk, gs, c_acc);
      }
      grad_c_acc.addmm_(gs.t(), a_chunk_acc);  // [nc, d] += (s G)^T @ A_chunk
    }
  });

  at::Tensor grad_c = low_precision ? grad_c_acc.to(candidates.scalar_type()) : grad_c_acc;
  at::Tensor grad_s = ds_rows.sum().to(scale.scalar_type());
  return std::make_tuple(grad_a, grad_c, grad_s);
}

}  // namespace
}  // namespace augcl

TORCH_LIBRARY_IMPL(augcl, CUDA, m) {
  m.impl("contrastive_lse", &augcl::contrastive_lse_cuda);
  m.impl("contrastive_lse_backward", &augcl::contrastive_lse_backward_cuda);
}
