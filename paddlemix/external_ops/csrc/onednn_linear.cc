// onednn_linear: y = act(x W + b) over x [..., K], W [K, N], b [N], where act is none, exact (erf) GELU or
// QuickGELU. The forward GEMM and both backward GEMMs (dx = dz W^T, dW = x^T dz) run in oneDNN's
// matmul primitive from the libdnnl.so.3 that Paddle ships, which picks its kernels at run time
// from the CPU's instruction sets (AVX2, AVX-512, AMX) on Intel and AMD alike.
//
// Epilogues: the bias is added inside the GEMM. Without gradients the activation is a post-op of
// the same primitive too. With gradients the GEMM writes z = x W + b, kept for the backward pass,
// and one pass over z gives y; the backward pass computes dz = dy act'(z) and db (dz summed over
// rows) in one pass, then the two GEMMs.
//
// With `bf16`, the GEMMs may multiply in bfloat16 (oneDNN's fpmath mode bf16: float32 tensors, bf16
// products, float32 sums) where the CPU has bf16 instructions; elsewhere they stay float32.
// Primitives are created once per shape and kept. CPU, float32.
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "activation.h"
#include "cpu_threads.h"
#include "onednn_api.h"
#include "paddle/extension.h"

namespace {

enum ActivationKind { kNoActivation = 0, kGelu = 1, kQuickGelu = 2 };

void Check(dnnl_status_t status, const char* call) {
  PD_CHECK(status == onednn::kSuccess, "onednn_linear: oneDNN's ", call, " failed with status ", status);
}

// One GEMM c [m, n] = a [m, k] b [k, n] (+ bias [n]) (then act), a and/or b read transposed.
struct GemmShape {
  int64_t m, k, n;
  bool transpose_a, transpose_b, bias;
  int post_activation, fpmath, threads;
  bool operator==(const GemmShape& o) const {
    return m == o.m && k == o.k && n == o.n && transpose_a == o.transpose_a && transpose_b == o.transpose_b &&
           bias == o.bias && post_activation == o.post_activation && fpmath == o.fpmath && threads == o.threads;
  }
};

struct GemmShapeHash {
  size_t operator()(const GemmShape& s) const {
    size_t h = std::hash<int64_t>()(s.m);
    for (int64_t v : {s.k, s.n, int64_t(s.transpose_a), int64_t(s.transpose_b), int64_t(s.bias),
                      int64_t(s.post_activation), int64_t(s.fpmath), int64_t(s.threads)})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

// A matmul primitive and the memory descriptors its arguments are wrapped in.
struct Gemm {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_desc_t src = nullptr, weights = nullptr, bias = nullptr, dst = nullptr;
};

dnnl_memory_desc_t MatrixDesc(int64_t rows, int64_t cols, bool transposed) {
  dnnl_dims_t dims = {rows, cols};
  dnnl_dims_t strides = {transposed ? 1 : cols, transposed ? rows : 1};  // transposed: stored as [cols, rows]
  dnnl_memory_desc_t desc;
  Check(dnnl_memory_desc_create_with_strides(&desc, 2, dims, onednn::kFloat32, strides), "memory_desc_create");
  return desc;
}

// Sets the OpenMP threads of this thread (oneDNN's parallel regions use them) and restores them.
class ThreadsScope {
 public:
  explicit ThreadsScope(int threads) : saved_(omp_get_max_threads()) { omp_set_num_threads(threads); }
  ~ThreadsScope() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// The CPU engine and the primitives made so far (at most kCapacity shapes, then all are dropped).
class GemmCache {
 public:
  static GemmCache& Get() {
    static GemmCache cache;
    return cache;
  }

  void Run(const GemmShape& shape, const float* a, const float* b, const float* bias, float* c) {
    const Gemm& gemm = Find(shape);
    thread_local dnnl_stream_t stream = nullptr;
    if (stream == nullptr) Check(dnnl_stream_create(&stream, engine_, onednn::kInOrder), "stream_create");
    dnnl_memory_t memories[4] = {nullptr, nullptr, nullptr, nullptr};
    dnnl_exec_arg_t args[4];
    int count = 0;
    auto add = [&](int arg, dnnl_memory_desc_t desc, const float* data) {
      Check(dnnl_memory_create(&memories[count], desc, engine_, const_cast<float*>(data)), "memory_create");
      args[count] = {arg, memories[count]};
      ++count;
    };
    add(onednn::kArgSrc, gemm.src, a);
    add(onednn::kArgWeights, gemm.weights, b);
    if (shape.bias) add(onednn::kArgBias, gemm.bias, bias);
    add(onednn::kArgDst, gemm.dst, c);
    dnnl_status_t status;
    {
      ThreadsScope scope(shape.threads);
      status = dnnl_primitive_execute(gemm.primitive, stream, count, args);
    }
    for (int i = 0; i < count; ++i) dnnl_memory_destroy(memories[i]);
    Check(status, "primitive_execute");
  }

 private:
  static constexpr size_t kCapacity = 512;

  GemmCache() {
    const dnnl_version_t* version = dnnl_version();
    PD_CHECK(version->major == 3, "onednn_linear: built for oneDNN 3.x, Paddle's libdnnl is ", version->major, ".",
             version->minor);
    Check(dnnl_engine_create(&engine_, onednn::kCpuEngine, 0), "engine_create");
  }

  const Gemm& Find(const GemmShape& shape) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto found = cache_.find(shape);
    if (found != cache_.end()) return found->second;
    if (cache_.size() >= kCapacity) cache_.clear();  // shapes of one model are few; a sweep of many starts over
    Gemm gemm;
    gemm.src = MatrixDesc(shape.m, shape.k, shape.transpose_a);
    gemm.weights = MatrixDesc(shape.k, shape.n, shape.transpose_b);
    gemm.dst = MatrixDesc(shape.m, shape.n, false);
    if (shape.bias) gemm.bias = MatrixDesc(1, shape.n, false);
    dnnl_primitive_attr_t attr;
    Check(dnnl_primitive_attr_create(&attr), "primitive_attr_create");
    Check(dnnl_primitive_attr_set_fpmath_mode(attr, shape.fpmath), "set_fpmath_mode");
    if (shape.post_activation != kNoActivation) {
      dnnl_post_ops_t post_ops;
      Check(dnnl_post_ops_create(&post_ops), "post_ops_create");
      const bool quick = shape.post_activation == kQuickGelu;
      Check(dnnl_post_ops_append_eltwise(post_ops, quick ? onednn::kSwish : onednn::kGeluErf,
                                         quick ? 1.702f : 0.0f, 0.0f),
            "post_ops_append_eltwise");
      Check(dnnl_primitive_attr_set_post_ops(attr, post_ops), "set_post_ops");
      dnnl_post_ops_destroy(post_ops);
    }
    dnnl_primitive_desc_t desc;
    {
      ThreadsScope scope(shape.threads);
      Check(dnnl_matmul_primitive_desc_create(&desc, engine_, gemm.src, gemm.weights, gemm.bias, gemm.dst, attr),
            "matmul_primitive_desc_create");
      Check(dnnl_primitive_create(&gemm.primitive, desc), "primitive_create");
    }
    dnnl_primitive_desc_destroy(desc);
    dnnl_primitive_attr_destroy(attr);
    return cache_.emplace(shape, gemm).first->second;
  }

  dnnl_engine_t engine_ = nullptr;
  std::mutex mutex_;
  std::unordered_map<GemmShape, Gemm, GemmShapeHash> cache_;
};

// y = act(z), row by row.
void ActivationForward(const float* z, float* y, int64_t rows, int64_t cols, int activation, int threads) {
  const bool quick = activation == kQuickGelu;
#pragma omp parallel for num_threads(paddlemix_cpu::KernelThreads(threads, rows, cols)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* zr = z + r * cols;
    float* yr = y + r * cols;
    if (quick) {
      for (int64_t i = 0; i < cols; ++i) yr[i] = paddlemix_cpu::Activation(zr[i], true);
    } else {
      for (int64_t i = 0; i < cols; ++i) yr[i] = paddlemix_cpu::Activation(zr[i], false);
    }
  }
}

// dz = dy act'(z) (dz = dy without activation: then only the sums) and dbias = dz summed over rows.
void ActivationBackward(const float* z, const float* dy, float* dz, float* dbias, int64_t rows, int64_t cols,
                        int activation, int threads) {
  const int team = paddlemix_cpu::KernelThreads(threads, rows, cols);
  std::vector<float> partial(static_cast<size_t>(team) * cols, 0.0f);  // per-thread column sums
#pragma omp parallel num_threads(team)
  {
    float* mine = partial.data() + static_cast<size_t>(omp_get_thread_num()) * cols;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float* dyr = dy + r * cols;
      if (activation == kNoActivation) {
        for (int64_t i = 0; i < cols; ++i) mine[i] += dyr[i];
        continue;
      }
      const float* zr = z + r * cols;
      float* dzr = dz + r * cols;
      if (activation == kQuickGelu) {
        for (int64_t i = 0; i < cols; ++i) dzr[i] = dyr[i] * paddlemix_cpu::ActivationSlope(zr[i], true);
      } else {
        for (int64_t i = 0; i < cols; ++i) dzr[i] = dyr[i] * paddlemix_cpu::ActivationSlope(zr[i], false);
      }
      for (int64_t i = 0; i < cols; ++i) mine[i] += dzr[i];
    }
  }
  std::memcpy(dbias, partial.data(), cols * sizeof(float));
  for (int t = 1; t < team; ++t)
    for (int64_t i = 0; i < cols; ++i) dbias[i] += partial[static_cast<size_t>(t) * cols + i];
}

std::vector<int64_t> OutputShape(const std::vector<int64_t>& x, const std::vector<int64_t>& weight) {
  std::vector<int64_t> shape(x.begin(), x.end() - 1);
  shape.push_back(weight[1]);
  return shape;
}

void CheckInputs(const paddle::Tensor& x, const paddle::Tensor& weight, const paddle::Tensor& bias, int activation) {
  PD_CHECK(activation >= kNoActivation && activation <= kQuickGelu, "onednn_linear: activation must be 0 (none), ",
           "1 (GELU) or 2 (QuickGELU), got ", activation);
  PD_CHECK(x.is_cpu() && weight.is_cpu() && bias.is_cpu(), "onednn_linear: CPU tensors only (oneDNN's CPU engine)");
  for (const paddle::Tensor* t : {&x, &weight, &bias})
    PD_CHECK(t->dtype() == paddle::DataType::FLOAT32, "onednn_linear: float32 tensors only, got ", t->dtype());
  PD_CHECK(x.shape().size() >= 1, "onednn_linear: x must have at least one dimension");
  PD_CHECK(weight.shape().size() == 2 && weight.shape()[0] == x.shape().back(), "onednn_linear: weight must be [",
           x.shape().back(), ", out] (x's last dimension first)");
  PD_CHECK(bias.shape().size() == 1 && bias.shape()[0] == weight.shape()[1], "onednn_linear: bias must be [",
           weight.shape()[1], "]");
}

int Fpmath(bool bf16) { return bf16 ? onednn::kFpmathBf16 : onednn::kFpmathStrict; }

}  // namespace

std::vector<paddle::Tensor> LinearForward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                          const paddle::Tensor& bias, int activation, bool keep_preactivation,
                                          bool bf16, int threads) {
  CheckInputs(x, weight, bias, activation);
  const int64_t k = weight.shape()[0], n = weight.shape()[1], m = k == 0 ? 0 : x.numel() / k;
  auto y = paddle::empty(OutputShape(x.shape(), weight.shape()), x.dtype(), x.place());
  const bool keep = keep_preactivation && activation != kNoActivation;
  auto z = keep ? paddle::empty(y.shape(), x.dtype(), x.place()) : paddle::empty({0}, x.dtype(), x.place());
  if (m == 0 || n == 0) return {y, z};
  if (k == 0) {  // no products: z is the bias on every row
    float* out = (keep ? z : y).data<float>();
    for (int64_t r = 0; r < m; ++r) std::memcpy(out + r * n, bias.data<float>(), n * sizeof(float));
    if (activation != kNoActivation)
      ActivationForward(out, y.data<float>(), m, n, activation, threads);
    return {y, z};
  }
  GemmShape shape{m, k, n, false, false, true, keep ? kNoActivation : activation, Fpmath(bf16), threads};
  GemmCache::Get().Run(shape, x.data<float>(), weight.data<float>(), bias.data<float>(),
                       keep ? z.data<float>() : y.data<float>());
  if (keep) ActivationForward(z.data<float>(), y.data<float>(), m, n, activation, threads);
  return {y, z};
}

std::vector<paddle::Tensor> LinearBackward(const paddle::Tensor& x, const paddle::Tensor& weight,
                                           const paddle::Tensor& bias, const paddle::Tensor& z,
                                           const paddle::Tensor& dy, int activation, bool keep_preactivation,
                                           bool bf16, int threads) {
  const int64_t k = weight.shape()[0], n = weight.shape()[1], m = k == 0 ? 0 : x.numel() / k;
  PD_CHECK(activation == kNoActivation || z.numel() == dy.numel(),
           "onednn_linear: the backward pass needs the pre-activation, which the forward ran without "
           "(keep_preactivation=False)");
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dweight = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  auto dbias = paddle::empty(bias.shape(), bias.dtype(), bias.place());
  auto dz = activation == kNoActivation ? dy : paddle::empty(dy.shape(), dy.dtype(), dy.place());
  if (m == 0 || n == 0 || k == 0) {  // empty products: the gradients are zeros
    for (auto* t : {&dx, &dweight, &dbias}) std::memset(t->data<float>(), 0, t->numel() * sizeof(float));
    if (m == 0 || n == 0) return {dx, dweight, dbias};
  }
  ActivationBackward(activation == kNoActivation ? nullptr : z.data<float>(), dy.data<float>(),
                     activation == kNoActivation ? nullptr : dz.data<float>(), dbias.data<float>(), m, n, activation,
                     threads);
  if (k == 0) return {dx, dweight, dbias};
  const int fpmath = Fpmath(bf16);
  // dx [m, k] = dz [m, n] W^T, W^T read from W [k, n] transposed
  GemmCache::Get().Run({m, n, k, false, true, false, kNoActivation, fpmath, threads}, dz.data<float>(),
                       weight.data<float>(), nullptr, dx.data<float>());
  // dW [k, n] = x^T [k, m] dz [m, n], x^T read from x [m, k] transposed
  GemmCache::Get().Run({k, m, n, true, false, false, kNoActivation, fpmath, threads}, x.data<float>(),
                       dz.data<float>(), nullptr, dweight.data<float>());
  return {dx, dweight, dbias};
}

std::vector<std::vector<int64_t>> LinearInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& weight,
                                                   const std::vector<int64_t>& bias, int activation,
                                                   bool keep_preactivation, bool bf16, int threads) {
  const auto y = OutputShape(x, weight);
  const bool keep = keep_preactivation && activation != kNoActivation;
  return {y, keep ? y : std::vector<int64_t>{0}};
}

std::vector<paddle::DataType> LinearInferDtype(const paddle::DataType& x, const paddle::DataType& weight,
                                               const paddle::DataType& bias) {
  return {x, x};
}

PD_BUILD_OP(onednn_linear)
    .Inputs({"X", "Weight", "Bias"})
    .Outputs({"Y", "Preactivation"})
    .Attrs({"activation: int", "keep_preactivation: bool", "bf16: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(LinearForward))
    .SetInferShapeFn(PD_INFER_SHAPE(LinearInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(LinearInferDtype));

PD_BUILD_GRAD_OP(onednn_linear)
    .Inputs({"X", "Weight", "Bias", "Preactivation", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X"), paddle::Grad("Weight"), paddle::Grad("Bias")})
    .Attrs({"activation: int", "keep_preactivation: bool", "bf16: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(LinearBackward));
