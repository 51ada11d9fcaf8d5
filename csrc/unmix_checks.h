// Argument checks and the layout rule of augcl::mix_images and mix_images_backward, shared by the CPU kernel
// (csrc/cpu/unmix.cpp) and the CUDA kernel (csrc/cuda/unmix.cu), so that both raise the same messages. Host code
// only; each kernel adds the limits of its own (the CUDA grid's rows).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace augcl {
namespace unmix {

// Whether a kernel works on t in channels_last order: the rule of augcl.reference.unmix.mix_memory_format.
inline bool use_channels_last(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

// t4 (x or grad_out, `name` in the messages) [B, C, H, W]; lam [B] float32, cutmix [B] bool, boxes [B, 4] int64,
// partner [B] int64, all on t4's device.
inline void check_row_params(const at::Tensor& t4, const at::Tensor& lam, const at::Tensor& cutmix,
                             const at::Tensor& boxes, const at::Tensor& partner, const char* name) {
  TORCH_CHECK(t4.dim() == 4, "mix_images: ", name, " must be 4-D [B, C, H, W], got ", t4.sizes());
  const int64_t B = t4.size(0);
  TORCH_CHECK(lam.dim() == 1 && lam.size(0) == B && lam.scalar_type() == at::kFloat,
              "mix_images: lam must be a [B] float32 tensor");
  TORCH_CHECK(cutmix.dim() == 1 && cutmix.size(0) == B && cutmix.scalar_type() == at::kBool,
              "mix_images: cutmix must be a [B] bool tensor");
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(0) == B && boxes.size(1) == 4 && boxes.scalar_type() == at::kLong,
              "mix_images: boxes must be a [B, 4] int64 tensor");
  TORCH_CHECK(partner.dim() == 1 && partner.size(0) == B && partner.scalar_type() == at::kLong,
              "mix_images: partner must be a [B] int64 tensor");
  for (const at::Tensor* t : {&lam, &cutmix, &boxes, &partner}) {
    TORCH_CHECK(t->device() == t4.device(), "mix_images: every argument must be on ", t4.device());
  }
}

// The forward's arguments: the row parameters, x float16 / bfloat16 / float32 / float64 / uint8, out_dtype floating.
inline void check_forward(const at::Tensor& x, const at::Tensor& lam, const at::Tensor& cutmix,
                          const at::Tensor& boxes, const at::Tensor& partner, at::ScalarType out_dtype) {
  check_row_params(x, lam, cutmix, boxes, partner, "x");
  const auto st = x.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16 || st == at::kByte,
              "mix_images: x must be float16, bfloat16, float32, float64 or uint8, got ", st);
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kDouble || out_dtype == at::kHalf ||
                  out_dtype == at::kBFloat16,
              "mix_images: out_dtype must be float16, bfloat16, float32 or float64, got ", out_dtype);
}

// The backward's arguments: the row parameters, grad_out and x_dtype floating.
inline void check_backward(const at::Tensor& grad_out, const at::Tensor& lam, const at::Tensor& cutmix,
                           const at::Tensor& boxes, const at::Tensor& partner, at::ScalarType x_dtype) {
  check_row_params(grad_out, lam, cutmix, boxes, partner, "grad_out");
  const auto gt = grad_out.scalar_type();
  TORCH_CHECK(gt == at::kFloat || gt == at::kDouble || gt == at::kHalf || gt == at::kBFloat16,
              "mix_images_backward: grad_out must be floating, got ", gt);
  TORCH_CHECK(x_dtype == at::kFloat || x_dtype == at::kDouble || x_dtype == at::kHalf || x_dtype == at::kBFloat16,
              "mix_images_backward: x_dtype must be floating, got ", x_dtype);
}

}  // namespace unmix
}  // namespace augcl
