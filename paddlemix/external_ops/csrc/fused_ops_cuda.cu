// The CUDA entry points of fused_ln and fused_bias_gelu (declared in fused_ops_cuda.h): dtype dispatch,
// outputs and workspaces allocated on x's device, launches on x's stream, around the Paddle-free
// launchers of fused_ops_kernels.cuh. The op files validate shapes and attributes before calling these.
#ifdef PADDLE_WITH_CUDA
#include "fused_ops_cuda.h"

#include <algorithm>

#include "fused_ops_kernels.cuh"

namespace {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<T>{}) with the CUDA element type T of a float32, float16 or bfloat16 tensor. Paddle's
// float16 and bfloat16 are a uint16_t each, bit-compatible with __half and __nv_bfloat16.
template <typename Fn>
void DispatchFloatType(const paddle::Tensor& x, const char* op, Fn&& fn) {
  switch (x.dtype()) {
    case paddle::DataType::FLOAT32:
      return fn(TypeTag<float>{});
    case paddle::DataType::FLOAT16:
      return fn(TypeTag<__half>{});
    case paddle::DataType::BFLOAT16:
      return fn(TypeTag<__nv_bfloat16>{});
    default:
      PD_THROW(op, ": the CUDA kernels take float32, float16 or bfloat16 tensors, got ", x.dtype());
  }
}

template <typename T>
const T* Data(const paddle::Tensor& t) {
  return static_cast<const T*>(t.data());
}

template <typename T>
T* MutableData(paddle::Tensor& t) {
  return static_cast<T*>(t.data());
}

int64_t Columns(const paddle::Tensor& x) { return x.shape().back(); }

int64_t Rows(const paddle::Tensor& x) { return Columns(x) == 0 ? 0 : x.numel() / Columns(x); }

std::vector<int64_t> RowShape(const paddle::Tensor& x) {
  std::vector<int64_t> shape = x.shape();
  shape.pop_back();
  return shape;
}

// A float32 workspace of at least one element (so its data pointer exists even when none is needed).
paddle::Tensor Workspace(int64_t floats, const paddle::Tensor& x) {
  return paddle::empty({std::max<int64_t>(floats, 1)}, paddle::DataType::FLOAT32, x.place());
}

void CheckLaunch(cudaError_t err, const char* op) {
  PD_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

void CheckSameDtype(const paddle::Tensor& t, const paddle::Tensor& x, const char* op, const char* name) {
  PD_CHECK(t.dtype() == x.dtype(), op, ": ", name, " must have x's dtype ", x.dtype(), ", got ", t.dtype());
}

// Layer-norm weights (and bias, and their gradients) are x's dtype or float32 (AMP keeps them float32).
void CheckLayerNormWeightDtype(const paddle::Tensor& x, const paddle::Tensor& weight, const char* op) {
  PD_CHECK(weight.dtype() == x.dtype() || weight.dtype() == paddle::DataType::FLOAT32, op,
           ": weight and bias must have x's dtype or float32, got ", weight.dtype(), " with x ", x.dtype());
}

// Calls fn(TypeTag<W>{}) with W = T when weight has x's dtype, else float.
template <typename T, typename Fn>
void DispatchWeightType(const paddle::Tensor& x, const paddle::Tensor& weight, Fn&& fn) {
  if (weight.dtype() == x.dtype()) {
    fn(TypeTag<T>{});
  } else {
    fn(TypeTag<float>{});
  }
}

}  // namespace

std::vector<paddle::Tensor> FusedLnCudaForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                               const paddle::Tensor& bias, float epsilon) {
  CheckLayerNormWeightDtype(x, weight, "fused_ln");
  CheckSameDtype(bias, weight, "fused_ln", "bias");
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  auto mean = paddle::empty(RowShape(x), paddle::DataType::FLOAT32, x.place());
  auto invvar = paddle::empty(RowShape(x), paddle::DataType::FLOAT32, x.place());
  DispatchFloatType(x, "fused_ln", [&](auto x_tag) {
    using T = typename decltype(x_tag)::type;
    DispatchWeightType<T>(x, weight, [&](auto weight_tag) {
      using W = typename decltype(weight_tag)::type;
      CheckLaunch(paddlemix_cuda::LayerNormForward<T, W>(Data<T>(x), Data<W>(weight), Data<W>(bias),
                                                         MutableData<T>(y), MutableData<float>(mean),
                                                         MutableData<float>(invvar), Rows(x), Columns(x), epsilon,
                                                         x.stream()),
                  "fused_ln");
    });
  });
  return {y, mean, invvar};
}

// epsilon is unused: the saved invvar already includes it.
std::vector<paddle::Tensor> FusedLnCudaBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                                const paddle::Tensor& mean, const paddle::Tensor& invvar,
                                                const paddle::Tensor& dy, float /*epsilon*/) {
  CheckLayerNormWeightDtype(x, weight, "fused_ln_grad");
  CheckSameDtype(dy, x, "fused_ln_grad", "dy");
  PD_CHECK(mean.dtype() == paddle::DataType::FLOAT32 && invvar.dtype() == paddle::DataType::FLOAT32,
           "fused_ln_grad: mean and invvar must be float32 (the forward's outputs)");
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dweight = paddle::empty(weight.shape(), weight.dtype(), x.place());
  auto dbias = paddle::empty(weight.shape(), weight.dtype(), x.place());
  auto workspace = Workspace(paddlemix_cuda::LayerNormBackwardWorkspaceFloats(Rows(x), Columns(x)), x);
  DispatchFloatType(x, "fused_ln_grad", [&](auto x_tag) {
    using T = typename decltype(x_tag)::type;
    DispatchWeightType<T>(x, weight, [&](auto weight_tag) {
      using W = typename decltype(weight_tag)::type;
      CheckLaunch(paddlemix_cuda::LayerNormBackward<T, W>(
                      Data<T>(x), Data<W>(weight), Data<float>(mean), Data<float>(invvar), Data<T>(dy),
                      MutableData<T>(dx), MutableData<W>(dweight), MutableData<W>(dbias),
                      MutableData<float>(workspace), Rows(x), Columns(x), x.stream()),
                  "fused_ln_grad");
    });
  });
  return {dx, dweight, dbias};
}

std::vector<paddle::Tensor> FusedBiasGeluCudaForward(const paddle::Tensor& x, const paddle::Tensor& bias, bool quick) {
  CheckSameDtype(bias, x, "fused_bias_gelu", "bias");
  auto y = paddle::empty(x.shape(), x.dtype(), x.place());
  DispatchFloatType(x, "fused_bias_gelu", [&](auto x_tag) {
    using T = typename decltype(x_tag)::type;
    CheckLaunch(paddlemix_cuda::BiasGeluForward<T>(Data<T>(x), Data<T>(bias), MutableData<T>(y), Rows(x),
                                                   Columns(x), quick, x.stream()),
                "fused_bias_gelu");
  });
  return {y};
}

std::vector<paddle::Tensor> FusedBiasGeluCudaBackward(const paddle::Tensor& x, const paddle::Tensor& bias,
                                                      const paddle::Tensor& dy, bool quick) {
  CheckSameDtype(bias, x, "fused_bias_gelu_grad", "bias");
  CheckSameDtype(dy, x, "fused_bias_gelu_grad", "dy");
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dbias = paddle::empty(bias.shape(), bias.dtype(), x.place());
  auto workspace = Workspace(paddlemix_cuda::BiasGeluBackwardWorkspaceFloats(Rows(x), Columns(x)), x);
  DispatchFloatType(x, "fused_bias_gelu_grad", [&](auto x_tag) {
    using T = typename decltype(x_tag)::type;
    CheckLaunch(paddlemix_cuda::BiasGeluBackward<T>(Data<T>(x), Data<T>(bias), Data<T>(dy), MutableData<T>(dx),
                                                    MutableData<T>(dbias), MutableData<float>(workspace), Rows(x),
                                                    Columns(x), quick, x.stream()),
                "fused_bias_gelu_grad");
  });
  return {dx, dbias};
}
#endif  // PADDLE_WITH_CUDA
