// fused_bias_gelu: y = act(x + bias) over x [..., C] with bias [C], where act is exact (erf) GELU or,
// with `quick`, QuickGELU z * sigmoid(1.702 z). The backward pass recomputes act'(x + bias) from x
// and bias (nothing else is kept) and gives dx and dbias (dx summed over rows).
//
// CPU kernels for float32 and float64, rows split over OpenMP threads. float32 uses erf and exp
// approximations written as straight-line arithmetic so that GCC vectorises the loops (std::erf and
// std::exp would not be, without -ffast-math): erf is Eigen's rational approximation (4e-7 absolute
// error), exp is Cephes' expf (Cody-Waite reduction, degree-5 polynomial, about 1 ulp). float64
// uses std::erf and std::exp. GPU tensors go to the CUDA kernels (fused_ops_cuda.h) where Paddle
// has CUDA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_threads.h"
#include "fused_ops_cuda.h"
#include "paddle/extension.h"

namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kQuickGeluSlope = 1.702;

inline float Erf(float x) {
  x = std::min(std::max(x, -4.0f), 4.0f);  // erf is +-1 in float32 beyond |x| = 4
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 - 2.10102402082508e-06f;
  p = p * x2 - 5.69250639462346e-05f;
  p = p * x2 - 7.34990630326855e-04f;
  p = p * x2 - 2.95459980854025e-03f;
  p = p * x2 - 1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 - 2.13374055278905e-04f;
  q = q * x2 - 1.68282697438203e-03f;
  q = q * x2 - 7.37332916720468e-03f;
  q = q * x2 - 1.42647390514189e-02f;
  return x * p / q;
}

inline float Exp(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);  // keeps 2^k a normal float
  // k = round(x / ln 2) by the 1.5 * 2^23 trick (std::floor would keep GCC from vectorising)
  const float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // ln 2 in two parts (Cody-Waite)
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float poly = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return poly * scale;
}

inline double Erf(double x) { return std::erf(x); }
inline double Exp(double x) { return std::exp(x); }

template <typename T>
inline T Activation(T z, bool quick) {
  if (quick) return z / (T(1) + Exp(static_cast<T>(-kQuickGeluSlope) * z));
  return static_cast<T>(0.5) * z * (T(1) + Erf(z * static_cast<T>(kInvSqrt2)));
}

template <typename T>
inline T ActivationSlope(T z, bool quick) {
  if (quick) {
    const T s = T(1) / (T(1) + Exp(static_cast<T>(-kQuickGeluSlope) * z));
    return s + static_cast<T>(kQuickGeluSlope) * z * s * (T(1) - s);
  }
  const T cdf = static_cast<T>(0.5) * (T(1) + Erf(z * static_cast<T>(kInvSqrt2)));
  return cdf + z * static_cast<T>(kInvSqrt2Pi) * Exp(static_cast<T>(-0.5) * z * z);
}

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
