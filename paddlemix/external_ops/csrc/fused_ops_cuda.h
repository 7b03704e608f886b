// The CUDA entry points of the fused ops (fused_ops_cuda.cu), declared for the op files
// (fused_ln.cc, fused_bias_gelu.cc), which call them for GPU tensors. Compiled only where Paddle
// has CUDA (PADDLE_WITH_CUDA); the kernels themselves are in fused_ops_kernels.cuh, which needs no Paddle.
#pragma once

#ifdef PADDLE_WITH_CUDA
#include <vector>

#include "paddle/extension.h"

// y (x's dtype), mean and invvar (float32, x's shape without the last dimension).
// x: float32, float16 or bfloat16; weight and bias: x's dtype or float32.
std::vector<paddle::Tensor> FusedLnCudaForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               const paddle::Tensor& bias, float epsilon);
// dx (x's dtype), dweight and dbias (weight's dtype).
std::vector<paddle::Tensor> FusedLnCudaBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                const paddle::Tensor& mean, const paddle::Tensor& invvar,
                                                const paddle::Tensor& dy, float epsilon);
// y = gelu(x + bias) (exact erf GELU, or x * sigmoid(1.702 x) with `quick`); bias has x's dtype.
std::vector<paddle::Tensor> FusedBiasGeluCudaForward(const paddle::Tensor& x, const paddle::Tensor& bias, bool quick);
// dx (x's dtype) and dbias (bias's dtype, dx summed over rows).
std::vector<paddle::Tensor> FusedBiasGeluCudaBackward(const paddle::Tensor& x, const paddle::Tensor& bias,
                                                      const paddle::Tensor& dy, bool quick);
#endif
