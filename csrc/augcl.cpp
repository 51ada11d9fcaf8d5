// augcl._C: operator schemas (declared once, here) and the Python module that loads them.
//
// Kernels live one file per dispatch key and register with TORCH_LIBRARY_IMPL:
//   csrc/cpu/<op>.cpp   -> CPU
//   csrc/cuda/<op>.cu   -> CUDA (only when built with AUGCL_WITH_CUDA)
// Autograd and fake (meta) kernels are registered from Python (augcl/ops/<op>.py).
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(augcl, m) {
  // contrastive_lse: masked row-wise logsumexp of scaled similarities, never materialising [M, Nc].
  //   lse[i] = log sum_{j in incl(i)} exp(scale * <anchors[i], candidates[j]>)
  //   incl(i) = { j : j in pos_idx[i] } U { j : j >= neg_start and j not in excl_idx[i] }
  // anchors [M, D], candidates [Nc, D] (fp16/bf16/fp32/fp64), scale 0-dim, pos_idx [M, P] and excl_idx [M, E]
  // int64 with -1 as padding. Returns lse [M] in fp32 (fp64 for fp64 inputs). See augcl/reference/contrastive.py.
  m.def("contrastive_lse(Tensor anchors, Tensor candidates, Tensor scale, Tensor pos_idx, Tensor excl_idx, "
        "int neg_start) -> Tensor");
  // Backward of contrastive_lse: with p_ij = exp(scale*<a_i,c_j> - lse_i) on incl(i) and G_ij = grad_lse_i * p_ij:
  //   grad_anchors[i]    = scale * sum_j G_ij c_j          (dtype of anchors)
  //   grad_candidates[j] = scale * sum_i G_ij a_i          (dtype of candidates)
  //   grad_scale         = sum_ij G_ij <a_i, c_j>          (0-dim, dtype of scale)
  m.def("contrastive_lse_backward(Tensor grad_lse, Tensor anchors, Tensor candidates, Tensor scale, Tensor lse, "
        "Tensor pos_idx, Tensor excl_idx, int neg_start) -> (Tensor, Tensor, Tensor)");
  // sinkhorn: SwAV's single-process Sinkhorn-Knopp equipartition, computed in the exp domain when the range of
  // scores / epsilon allows it, else in the log domain (csrc/cpu/sinkhorn.cpp).
  //   Q = exp(scores / epsilon)^T; Q /= sum(Q); iterations x (normalise rows of Q, /K; columns, /B); codes = B * Q^T
  // scores [B, K] (fp16/bf16/fp32/fp64, any strides). Returns codes [B, K] in fp32 (fp64 for fp64 scores), no grad.
  m.def("sinkhorn(Tensor scores, float epsilon, int iterations) -> Tensor");
  // soft_ce: SwAV's swapped prediction per crop, the soft-target cross-entropy of scores z [B, K] (fp16/bf16/fp32/
  // fp64) against targets t [B, K] (fp32/fp64), fused: one pass over each row (csrc/cpu/soft_ce.cpp).
  //   lse_b = logsumexp_k(z_bk * inv_temp),  rows_b = (sum_k t_bk) * lse_b - inv_temp * <t_b, z_b>
  // Returns (rows [B], lse [B]) in the accumulation dtype (fp64 if z or t is fp64, else fp32).
  m.def("soft_ce(Tensor z, Tensor t, float inv_temp) -> (Tensor, Tensor)");
  // Backward of soft_ce from lse (softmax recomputed), w_b = sum_k t_bk, g = grad_rows:
  //   dz_bk = g_b * inv_temp * (w_b * exp(z_bk * inv_temp - lse_b) - t_bk)   (dtype of z)
  //   dt_bk = g_b * (lse_b - z_bk * inv_temp)                                 (dtype of t; [0] if not compute_dt)
  m.def("soft_ce_backward(Tensor grad_rows, Tensor z, Tensor t, Tensor lse, float inv_temp, bool compute_dt) -> "
        "(Tensor, Tensor)");
  // hallucinate: the Hallucinator generator with the extrapolation folded into the first layer.
  //   x~ = x + lam * (x - k);  a1 = relu([x, x~] W1^T + b1);  a2 = relu(a1 W2^T + b2);  h = a2 W3^T + b3
  // x, k [B, D]; lam [B] (per-sample, any float dtype); w1 [H, 2D], b1 [H], w2 [H, H], b2 [H], w3 [D, H], b3 [D]
  // (nn.Linear layout, x's dtype: fp16/bf16/fp32/fp64, fp32 accumulation). Returns (h [B, D], a1 [B, H],
  // a2 [B, H]) in x's dtype; a1/a2 are the post-ReLU activations saved for the backward.
  m.def("hallucinate(Tensor x, Tensor k, Tensor lam, Tensor w1, Tensor b1, Tensor w2, Tensor b2, Tensor w3, "
        "Tensor b3) -> (Tensor, Tensor, Tensor)");
  // Backward of hallucinate from the saved a1, a2 (no GEMM recomputed); lam is not differentiated:
  //   returns (grad_x, grad_k, grad_w1, grad_b1, grad_w2, grad_b2, grad_w3, grad_b3), see augcl/reference/hallucinator.py
  m.def("hallucinate_backward(Tensor grad_h, Tensor x, Tensor k, Tensor lam, Tensor w1, Tensor w2, Tensor w3, "
        "Tensor a1, Tensor a2) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // mix_images: Un-Mix mixup / CutMix of each row with a partner row, fused uint8 conversion and normalisation.
  //   mixup row i: v = lam[i] * x[i] + (1 - lam[i]) * x[partner[i]];  CutMix row i: v = x[partner[i]] inside the
  //   half-open box (y0, y1, x0, x1) = boxes[i], x[i] outside;  v /= 255 for uint8;  out = (v - mean[c]) / std[c].
  // x [B, C, H, W] (fp16/bf16/fp32/fp64/uint8, NCHW or channels_last), lam [B] fp32, cutmix [B] bool,
  // boxes [B, 4] int64, partner [B] int64, mean/std None or [C]. Returns out_dtype, in x's memory format.
  // See augcl/reference/unmix.py.
  m.def("mix_images(Tensor x, Tensor lam, Tensor cutmix, Tensor boxes, Tensor partner, Tensor? mean, Tensor? std, "
        "ScalarType out_dtype) -> Tensor");
  // Backward of mix_images w.r.t. x (linear): grad_x[j] = own_j + sum_{i: partner[i] = j} cross_i, in x_dtype.
  m.def("mix_images_backward(Tensor grad_out, Tensor lam, Tensor cutmix, Tensor boxes, Tensor partner, "
        "Tensor? std, ScalarType x_dtype) -> Tensor");
  // topk_attention: MixedAE's homologous attention, per (batch, head) of q, k, v [B, H, L, Dh] (fp16/bf16/fp32/fp64,
  // any strides): S = scale * q k^T; each query keeps its top_k largest logits, ties to the lower key index (plus
  // key 0 when keep_first); softmax over the kept ones; out = P v (csrc/cpu/topk_attention.cpp).
  // Returns (out [B, H, L, Dh] in q's dtype, lse [B, H, L] of the kept logits in fp32, fp64 for fp64 inputs, kept):
  // with save_kept, kept [B, H, L, top_k + keep_first] int32 holds each row's kept key indices (-1 past its last)
  // and the products run over the kept keys only (augcl/ops/topk_attention.py asks for it when they are few);
  // otherwise kept is [B, H, L, 0].
  m.def("topk_attention(Tensor q, Tensor k, Tensor v, int top_k, float scale, bool keep_first, bool save_kept) -> "
        "(Tensor, Tensor, Tensor)");
  // Backward of topk_attention from out, lse and kept, the kept set held constant, D_i = <dO_i, out_i>:
  //   dS = P (.) (dO v^T - D);  dq = scale dS k;  dk = scale dS^T q;  dv = P^T dO   (dtypes of q, k, v)
  // The kept set is kept's where it has columns, else recomputed from q and k as the forward selected it.
  m.def("topk_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor kept, int top_k, float scale, bool keep_first) -> (Tensor, Tensor, Tensor)");
}

// A plain CPython module (no pybind11): importing augcl._C loads this library, which runs the
// TORCH_LIBRARY registrations above and in the kernel files. It also records what was compiled.
static struct PyModuleDef augcl_module = {PyModuleDef_HEAD_INIT, "_C", "augcl compiled operators", -1, nullptr};

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&augcl_module);
  if (mod == nullptr) return nullptr;
#ifdef AUGCL_WITH_CUDA
  PyModule_AddIntConstant(mod, "with_cuda", 1);
#else
  PyModule_AddIntConstant(mod, "with_cuda", 0);
#endif
#ifdef _OPENMP
  PyModule_AddIntConstant(mod, "with_openmp", 1);
#else
  PyModule_AddIntConstant(mod, "with_openmp", 0);
#endif
  return mod;
}
