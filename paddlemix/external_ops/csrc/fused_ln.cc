// fused_ln: layer norm over the last dimension, y = (x - mean) * invvar * weight + bias, with the
// row statistics (float32) as outputs for the backward pass. CPU kernels for float32 and float64:
// rows split over OpenMP threads, inner loops over independent partial sums that GCC vectorises.
// GPU tensors go to the CUDA kernels (fused_ops_cuda.h) where Paddle has CUDA.
#include <omp.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_threads.h"
#include "fused_ops_cuda.h"
#include "paddle/extension.h"

namespace {

constexpr int kLanes = 16;  // independent partial sums per row (vectorisable without -ffast-math)

template <typename T>
using Acc = typename std::conditional<std::is_same<T, double>::value, double, float>::type;

template <typename T>
Acc<T> RowSum(const T* v, int64_t n) {
  Acc<T> lanes[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += v[i + j];
  Acc<T> total = 0;
  for (; i < n; ++i) total += v[i];
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

template <typename T>
Acc<T> RowCenteredSquares(const T* v, int64_t n, Acc<T> mean) {
  Acc<T> lanes[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) {
      Acc<T> d = v[i + j] - mean;
      lanes[j] += d * d;
    }
  Acc<T> total = 0;
  for (; i < n; ++i) {
    Acc<T> d = v[i] - mean;
    total += d * d;
  }
  for (int j = 0; j < kLanes; ++j) total += lanes[j];
  return total;
}

void CheckInputs(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& bias, float epsilon) {
  PD_CHECK(x.shape().size() >= 1, "fused_ln: x must have at least one dimension");
  const int64_t cols = x.shape().back();
  PD_CHECK(weight.shape().size() == 1 && weight.shape()[0] == cols, "fused_ln: weight must have shape [", cols,
           "] (x's last dimension)");
  PD_CHECK(bias.shape().size() == 1 && bias.shape()[0] == cols, "fused_ln: bias must have shape [", cols,
           "] (x's last dimension)");
  PD_CHECK(epsilon > 0.0f, "fused_ln: epsilon must be > 0, got ", epsilon);
  PD_CHECK(weight.place() == x.place() && bias.place() == x.place(), "fused_ln: weight and bias must be on x's device");
}

void CheckCpuDtypes(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& bias) {
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 || x.dtype() == paddle::DataType::FLOAT64,
           "fused_ln: on CPU x must be float32 or float64, got ", x.dtype());
  PD_CHECK(weight.dtype() == x.dtype() && bias.dtype() == x.dtype(), "fused_ln: weight and bias must have x's dtype ",
           x.dtype(), ", got ", weight.dtype(), " and ", bias.dtype());
}

template <typename T>
void Forward(const T* x, const T* w, const T* b, T* y, float* mean_out, float* invvar_out, int64_t rows, int64_t cols,
             float epsilon, int threads) {
#pragma omp parallel for num_threads(paddlemix_cpu::KernelThreads(threads, rows, cols)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const Acc<T> mean = RowSum(xr, cols) / cols;
    const Acc<T> var = RowCenteredSquares(xr, cols, mean) / cols;
    const Acc<T> invvar = 1 / std::sqrt(var + static_cast<Acc<T>>(epsilon));
    for (int64_t i = 0; i < cols; ++i) yr[i] = static_cast<T>((xr[i] - mean) * invvar * w[i] + b[i]);
    mean_out[r] = static_cast<float>(mean);
    invvar_out[r] = static_cast<float>(invvar);
  }
}

// Rows whose dweight / dbias terms a thread adds up in Acc<T> before moving the block sum into its
// double column sums: float accumulation over a few rows, double over all of them.
constexpr int64_t kRowsPerBlock = 16;

template <typename T>
void Backward(const T* x, const T* w, const float* mean, const float* invvar, const T* dy, T* dx, T* dw, T* db,
              int64_t rows, int64_t cols, int threads) {
  const int team = paddlemix_cpu::KernelThreads(threads, rows, cols);
  std::vector<double> column_sums(static_cast<size_t>(team) * 2 * cols, 0);  // per thread: dweight, dbias
#pragma omp parallel num_threads(team)
  {
    double* my_dw = column_sums.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * cols;
    double* my_db = my_dw + cols;
    std::vector<Acc<T>> block_dw(cols), block_db(cols);
    int64_t rows_in_block = 0;
    auto flush = [&] {
      for (int64_t i = 0; i < cols; ++i) {
        my_dw[i] += block_dw[i];
        my_db[i] += block_db[i];
        block_dw[i] = block_db[i] = 0;
      }
      rows_in_block = 0;
    };
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      const T* dyr = dy + r * cols;
      const Acc<T> m = mean[r], iv = invvar[r];
      // one pass: the row sums of g = dy * weight and of g * xhat, and the column terms
      Acc<T> g_lanes[kLanes] = {0}, gx_lanes[kLanes] = {0};
      int64_t i = 0;
      for (; i + kLanes <= cols; i += kLanes)
        for (int j = 0; j < kLanes; ++j) {
          const Acc<T> xhat = (xr[i + j] - m) * iv, g = dyr[i + j] * w[i + j];
          g_lanes[j] += g;
          gx_lanes[j] += g * xhat;
          block_dw[i + j] += dyr[i + j] * xhat;
          block_db[i + j] += dyr[i + j];
        }
      Acc<T> g_sum = 0, gx_sum = 0;
      for (; i < cols; ++i) {
        const Acc<T> xhat = (xr[i] - m) * iv, g = dyr[i] * w[i];
        g_sum += g;
        gx_sum += g * xhat;
        block_dw[i] += dyr[i] * xhat;
        block_db[i] += dyr[i];
      }
      for (int j = 0; j < kLanes; ++j) {
        g_sum += g_lanes[j];
        gx_sum += gx_lanes[j];
      }
      const Acc<T> g_mean = g_sum / cols, gx_mean = gx_sum / cols;
      T* dxr = dx + r * cols;
      for (int64_t k = 0; k < cols; ++k) {
        const Acc<T> xhat = (xr[k] - m) * iv;
        dxr[k] = static_cast<T>(iv * (dyr[k] * w[k] - g_mean - xhat * gx_mean));
      }
      if (++rows_in_block == kRowsPerBlock) flush();
    }
    flush();
  }
  for (int64_t i = 0; i < cols; ++i) {
    double sw = 0, sb = 0;
    for (int t = 0; t < team; ++t) {
      sw += column_sums[static_cast<size_t>(t) * 2 * cols + i];
      sb += column_sums[static_cast<size_t>(t) * 2 * cols + cols + i];
    }
    dw[i] = static_cast<T>(sw);
    db[i] = static_cast<T>(sb);
  }
}

std::vector<int64_t> RowShape(const std::vector<int64_t>& x_shape) {
  return std::vector<int64_t>(x_shape.begin(), x_shape.end() - 1);
}

}  // namespace

std::vector<paddle::Tensor> FusedLnForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                           const paddle::Tensor& bias, float epsilon, int threads) {
  CheckInputs(x, weight, bias, epsilon);
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) return FusedLnCudaForward(x, weight, bias, epsilon);
#endif
  PD_CHECK(x.is_cpu(), "fused_ln: this build has the CPU kernel only; x is on ", x.place());
  CheckCpuDtypes(x, weight, bias);
  const int64_t cols = x.shape().back();
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty(RowShape(x.shape()), paddle::DataType::FLOAT32, x.place());
  auto invvar = paddle::empty(RowShape(x.shape()), paddle::DataType::FLOAT32, x.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_ln", ([&] {
    Forward<data_t>(x.data<data_t>(), weight.data<data_t>(), bias.data<data_t>(), y.data<data_t>(),
                    mean.data<float>(), invvar.data<float>(), rows, cols, epsilon, threads);
  }));
  return {y, mean, invvar};
}

std::vector<paddle::Tensor> FusedLnBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                            const paddle::Tensor& mean, const paddle::Tensor& invvar,
                                            const paddle::Tensor& dy, float epsilon, int threads) {
#ifdef PADDLE_WITH_CUDA
  if (x.is_gpu()) return FusedLnCudaBackward(x, weight, mean, invvar, dy, epsilon);
#endif
  const int64_t cols = x.shape().back();
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  auto db = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  PD_DISPATCH_FLOATING_TYPES(x.type(), "fused_ln_grad", ([&] {
    Backward<data_t>(x.data<data_t>(), weight.data<data_t>(), mean.data<float>(), invvar.data<float>(),
                     dy.data<data_t>(), dx.data<data_t>(), dw.data<data_t>(), db.data<data_t>(), rows, cols,
                     threads);
  }));
  return {dx, dw, db};
}

std::vector<std::vector<int64_t>> FusedLnInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& weight,
                                                    const std::vector<int64_t>& bias, float epsilon, int threads) {
  return {x, RowShape(x), RowShape(x)};
}

std::vector<paddle::DataType> FusedLnInferDtype(const paddle::DataType& x, const paddle::DataType& weight,
                                                const paddle::DataType& bias) {
  return {x, paddle::DataType::FLOAT32, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(fused_ln)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Y", "Mean", "Invvar"})
    .Attrs({"epsilon: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(FusedLnForward))
    .SetInferShapeFn(PD_INFER_SHAPE(FusedLnInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(FusedLnInferDtype));

PD_BUILD_GRAD_OP(fused_ln)
    .Inputs({"X", "Weight", "Mean", "Invvar", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"epsilon: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(FusedLnBackward));
