// fused_bias_gelu: y = act(x + bias) over x [..., C] with bias [C], where act is exact (erf) GELU or,
// with `quick`, QuickGELU z * sigmoid(1.702 z). The backward pass recomputes act'(x + bias) from x
// and bias (nothing else is kept) and gives dx and dbias (dx summed over rows).
//
// CPU kernels for float32 and float64 (the activations of activation.h), rows split over OpenMP
// threads. GPU tensors go to the CUDA kernels (fused_ops_cuda.h) where Paddle has CUDA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activation.h"
#include "cpu_threads.h"
#include "fused_ops_cuda.h"
#include "paddle/extension.h"

namespace {

using paddlemix_cpu::Activation;
using paddlemix_cpu::ActivationSlope;

void CheckInputs(const paddle::Tensor& x, const paddle::Tensor& bias) {
  PD_CHECK(x.shape().size() >= 1, "fused_bias_gelu: x must have at least one dimension");
  const int64_t cols = x.shape().back();
  PD_CHECK(bias.shape().size() == 1 && bias.shape()[0] == cols, "fused_bias_gelu: bias must have shape [", cols,
           "] (x's last dimension)");
  PD_CHECK(bias.dtype() == x.dtype(), "fused_bias_gelu: bias must have x's dtype ", x.dtype(), ", got ",
           bias.dtype());
  PD_CHECK(bias.place() == x.place(), "fused_bias_gelu: bias must be on x's device");
}

void CheckCpuDtype(const paddle::Tensor& x) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 || x.dtype() == paddle::DataType::FLOAT64,
           "fused_bias_gelu: on CPU x must be float32 or float64, got ", x.dtype());
}

template <typename T>
void Forward(const T* x, const T* bias, T* y, int64_t rows, int64_t cols, bool quick, int threads) {
#pragma omp parallel for num_threads(paddlemix_cpu::KernelThreads(threads, rows, cols)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    if (quick) {
      for (int64_t i = 0; i < cols; ++i) yr[i] = Activation(xr[i] + bias[i], true);
    } else {
      for (int64_t i = 0; i < cols; ++i) yr[i] = Activation(xr[i] + bias[i], false);
    }
  }
}

template <typename T>
void Backward(const T* x, const T* bias, const T* dy, T* dx, T* dbias, int64_t rows, int64_t cols, bool quick,
              int threads) {
  const int team = paddlemix_cpu::KernelThreads(threads, rows, cols);
  // per-thread column sums of dx in double: dbias adds up every row
  std::vector<double> partial(static_cast<size_t>(team) * cols, 0);
#pragma omp parallel num_threads(team)
  {
    double* mine = partial.data() + static_cast<size_t>(omp_get_thread_num()) * cols;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      const T* dyr = dy + r * cols;
      T* dxr = dx + r * cols;
      if (quick) {
        for (int64_t i = 0; i < cols; ++i) dxr[i] = dyr[i] * ActivationSlope(xr[i] + bias[i], true);
      } else {
        for (int64_t i = 0; i < cols; ++i) dxr[i] = dyr[i] * ActivationSlope(xr[i] + bias[i], false);
      }
      for (int64_t i = 0; i < cols; ++i) mine[i] += dxr[i];
    }
  }
  for (int64_t i = 0; i < cols; ++i) {
    double total = 0;
    for (int t = 0; t < team; ++t) total += partial[static_cast<size_t>(t) * cols + i];
    dbias[i] = static_cast<T>(total);
  }
}

int64_t Rows(const paddle::Tensor& x) {
  const int64_t cols = x.shape().back();
  return cols == 0 ? 0 : x.numel() / cols;
}

}  // namespace

std::vector<paddle::Tensor> FusedBiasGeluForward(const paddle::Tensor& x, const paddle::Tensor& bias, bool quick,
                                                 int threads) {
  CheckInputs(x, bias);
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) return FusedBiasGeluCudaForward(x, bias, quick);
#endif
  PD_CHECK(x.is_cpu(), "fused_bias_gelu: this build has the CPU kernel only; x is on ", x.place());
  CheckCpuDtype(x);
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_bias_gelu", ([&] {
    Forward<data_t>(x.data<data_t>(), bias.data<data_t>(), y.data<data_t>(), Rows(x), x.shape().back(), quick,
                    threads);
  }));
  return {y};
}

std::vector<paddle::Tensor> FusedBiasGeluBackward(const paddle::Tensor& x, const paddle::Tensor& bias,
                                                  const paddle::Tensor& dy, bool quick, int threads) {
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) return FusedBiasGeluCudaBackward(x, bias, dy, quick);
#endif
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dbias = paddle::empty(bias.shape(), bias.dtype(), bias.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_bias_gelu_grad", ([&] {
    Backward<data_t>(x.data<data_t>(), bias.data<data_t>(), dy.data<data_t>(), dx.data<data_t>(),
                     dbias.data<data_t>(), Rows(x), x.shape().back(), quick, threads);
  }));
  return {dx, dbias};
}

std::vector<std::vector<int64_t>> FusedBiasGeluInferShape(const std::vector<int64_t>& x,
                                                          const std::vector<int64_t>& bias, bool quick, int threads) {
  return {x};
}

std::vector<paddle::DataType> FusedBiasGeluInferDtype(const paddle::DataType& x, const paddle::DataType& bias) {
  return {x};
}

PD_BUILD_OP(fused_bias_gelu)
    .Inputs({"X", "Bias"})
    .Outputs({"Y"})
    .Attrs({"quick: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(FusedBiasGeluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FusedBiasGeluInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FusedBiasGeluInferDtype));

PD_BUILD_GRAD_OP(fused_bias_gelu)
    .Inputs({"X", "Bias", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Bias")})
    .Attrs({"quick: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(FusedBiasGeluBackward));
