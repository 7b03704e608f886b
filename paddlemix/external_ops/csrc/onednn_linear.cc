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
// onednn_mlp: out = act(x W1 + b1) W2 + b2, a transformer MLP in one op with the same GEMMs and
// epilogues. It keeps z = x W1 + b1 for the backward pass and not act(z), which it recomputes there (one
// pass over z): the activation [tokens, hidden] is the largest tensor of a training step's graph
// (ViT-B-32 at batch 32: 20 MB per block, 480 MB over both towers).
//
// onednn_swiglu: h = silu(x W1 + b1) * (x W2 + b2), the gated half of a SwiGLU feed-forward block
// (EVA-02; its sub-LN and w3 follow as their own ops). Without gradients both products stay in
// oneDNN: the first GEMM applies silu as a post-op, the second multiplies by that result as a binary
// post-op, so no pass of its own touches the [tokens, hidden] tensors (Paddle's silu and multiply
// took 8 ms per EVA02-B-16 block at batch 8 on 2 cores). With gradients it keeps z1 = x W1 + b1 and
// z2 = x W2 + b2, computes h in one pass, and its backward recomputes silu(z1) from z1; the two
// products for dx go into one output, the second accumulated by a sum post-op.
//
// With `bf16`, the GEMMs may multiply in bfloat16 (oneDNN's fpmath mode bf16: float32 tensors, bf16
// products, float32 sums) where the CPU has bf16 instructions; elsewhere they stay float32.
// Primitives are created once per shape and kept. CPU, float32.
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "activation.h"
#include "cpu_threads.h"
#include "onednn_api.h"
#include "paddle/extension.h"

namespace {

// What a GEMM does to its result c: 0-2 are onednn_linear's `activation` attribute. kSilu: c * sigmoid(c);
// kMultiply: c times a second [m, n] tensor, elementwise; kAccumulate: c added to what the output holds.
enum PostOp { kNoActivation = 0, kGelu = 1, kQuickGelu = 2, kSilu = 3, kMultiply = 4, kAccumulate = 5 };

void Check(dnnl_status_t status, const char* call) {
  PD_CHECK(status == onednn::kSuccess, "onednn_linear: oneDNN's ", call, " failed with status ", status);
}

// One GEMM c [m, n] = a [m, k] b [k, n] (+ bias [n]) (then its PostOp), a and/or b read transposed.
struct GemmShape {
  int64_t m, k, n;
  bool transpose_a, transpose_b, bias;
  int post_op, fpmath, threads;
  bool operator==(const GemmShape& o) const {
    return m == o.m && k == o.k && n == o.n && transpose_a == o.transpose_a && transpose_b == o.transpose_b &&
           bias == o.bias && post_op == o.post_op && fpmath == o.fpmath && threads == o.threads;
  }
};

struct GemmShapeHash {
  size_t operator()(const GemmShape& s) const {
    size_t h = std::hash<int64_t>()(s.m);
    for (int64_t v : {s.k, s.n, int64_t(s.transpose_a), int64_t(s.transpose_b), int64_t(s.bias),
                      int64_t(s.post_op), int64_t(s.fpmath), int64_t(s.threads)})
      h = h * 1000003u ^ std::hash<int64_t>()(v);
    return h;
  }
};

// A matmul primitive and the memory descriptors its arguments are wrapped in (`factor`: kMultiply's tensor).
struct Gemm {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_desc_t src = nullptr, weights = nullptr, bias = nullptr, dst = nullptr, factor = nullptr;

  void Destroy() {
    dnnl_primitive_destroy(primitive);
    for (dnnl_memory_desc_t desc : {src, weights, bias, dst, factor})
      if (desc != nullptr) dnnl_memory_desc_destroy(desc);
  }
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

  // `factor`: the [m, n] tensor kMultiply multiplies by (nullptr for the other post-ops).
  void Run(const GemmShape& shape, const float* a, const float* b, const float* bias, float* c,
           const float* factor = nullptr) {
    std::lock_guard<std::mutex> lock(mutex_);  // held while the primitive runs: a full cache drops them all
    const Gemm& gemm = Find(shape);
    thread_local dnnl_stream_t stream = nullptr;
    if (stream == nullptr) Check(dnnl_stream_create(&stream, engine_, onednn::kInOrder), "stream_create");
    dnnl_memory_t memories[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    dnnl_exec_arg_t args[5];
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
    if (shape.post_op == kMultiply) add(onednn::kArgFirstPostOpSrc1, gemm.factor, factor);
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

  const Gemm& Find(const GemmShape& shape) {  // under mutex_
    auto found = cache_.find(shape);
    if (found != cache_.end()) return found->second;
    if (cache_.size() >= kCapacity) {  // shapes of one model are few; a sweep of many starts over
      for (auto& entry : cache_) entry.second.Destroy();
      cache_.clear();
    }
    Gemm gemm;
    gemm.src = MatrixDesc(shape.m, shape.k, shape.transpose_a);
    gemm.weights = MatrixDesc(shape.k, shape.n, shape.transpose_b);
    gemm.dst = MatrixDesc(shape.m, shape.n, false);
    if (shape.bias) gemm.bias = MatrixDesc(1, shape.n, false);
    dnnl_primitive_attr_t attr;
    Check(dnnl_primitive_attr_create(&attr), "primitive_attr_create");
    Check(dnnl_primitive_attr_set_fpmath_mode(attr, shape.fpmath), "set_fpmath_mode");
    if (shape.post_op != kNoActivation) {
      dnnl_post_ops_t post_ops;
      Check(dnnl_post_ops_create(&post_ops), "post_ops_create");
      if (shape.post_op == kMultiply) {
        gemm.factor = MatrixDesc(shape.m, shape.n, false);
        Check(dnnl_post_ops_append_binary(post_ops, onednn::kBinaryMul, gemm.factor), "post_ops_append_binary");
      } else if (shape.post_op == kAccumulate) {
        Check(dnnl_post_ops_append_sum(post_ops, 1.0f, 0, onednn::kDataTypeUndef), "post_ops_append_sum");
      } else {  // swish(alpha) = x * sigmoid(alpha x): QuickGELU with 1.702, silu with 1
        const int kind = shape.post_op == kGelu ? onednn::kGeluErf : onednn::kSwish;
        const float alpha = shape.post_op == kQuickGelu ? 1.702f : shape.post_op == kSilu ? 1.0f : 0.0f;
        Check(dnnl_post_ops_append_eltwise(post_ops, kind, alpha, 0.0f), "post_ops_append_eltwise");
      }
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

// c [m, n] = a [m, k] w [k, n] + bias, then `post_op` (kMultiply: times `factor` [m, n]).
void Gemm(const float* a, const float* w, const float* bias, float* c, int64_t m, int64_t k, int64_t n,
          int post_op, int fpmath, int threads, const float* factor = nullptr) {
  threads = paddlemix_cpu::AllowedThreads(threads);
  GemmCache::Get().Run({m, k, n, false, false, true, post_op, fpmath, threads}, a, w, bias, c, factor);
}

// The two GEMMs of a Linear's backward pass from dz [m, n]: dx [m, k] = dz w^T, dw [k, n] = x^T dz.
void BackwardGemms(const float* x, const float* w, const float* dz, float* dx, float* dw, int64_t m, int64_t k,
                   int64_t n, int fpmath, int threads) {
  threads = paddlemix_cpu::AllowedThreads(threads);
  GemmCache::Get().Run({m, n, k, false, true, false, kNoActivation, fpmath, threads}, dz, w, nullptr, dx);
  GemmCache::Get().Run({k, m, n, true, false, false, kNoActivation, fpmath, threads}, x, dz, nullptr, dw);
}

void CheckMlpInputs(const paddle::Tensor& x, const paddle::Tensor& w1, const paddle::Tensor& b1,
                    const paddle::Tensor& w2, const paddle::Tensor& b2, int activation) {
  CheckInputs(x, w1, b1, activation);
  PD_CHECK(w2.shape().size() == 2 && w2.shape()[0] == w1.shape()[1], "onednn_mlp: w2 must be [", w1.shape()[1],
           ", out] (w1's output first)");
  PD_CHECK(w2.dtype() == paddle::DataType::FLOAT32 && b2.dtype() == paddle::DataType::FLOAT32 && w2.is_cpu() &&
               b2.is_cpu(), "onednn_mlp: float32 CPU tensors only");
  PD_CHECK(b2.shape().size() == 1 && b2.shape()[0] == w2.shape()[1], "onednn_mlp: b2 must be [", w2.shape()[1], "]");
  PD_CHECK(x.numel() > 0 && w1.numel() > 0 && w2.numel() > 0, "onednn_mlp: empty tensors are not supported");
}


// h = silu(z1) * z2, row by row.
void SwigluProduct(const float* z1, const float* z2, float* h, int64_t rows, int64_t cols, int threads) {
#pragma omp parallel for num_threads(paddlemix_cpu::KernelThreads(threads, rows, cols)) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *z1r = z1 + r * cols, *z2r = z2 + r * cols;
    float* hr = h + r * cols;
    for (int64_t i = 0; i < cols; ++i) hr[i] = z1r[i] * paddlemix_cpu::Sigmoid(z1r[i]) * z2r[i];
  }
}

// From dh: dz1 = dh z2 silu'(z1), dz2 = dh silu(z1), and db1, db2 (dz1, dz2 summed over rows), in one pass.
// silu'(z) = s (1 + z (1 - s)) with s = sigmoid(z).
void SwigluPreactivationGradients(const float* z1, const float* z2, const float* dh, float* dz1, float* dz2,
                                  float* db1, float* db2, int64_t rows, int64_t cols, int threads) {
  const int team = paddlemix_cpu::KernelThreads(threads, rows, cols);
  std::vector<float> partial(static_cast<size_t>(team) * 2 * cols, 0.0f);  // per thread: db1's sums, db2's
#pragma omp parallel num_threads(team)
  {
    float* mine1 = partial.data() + static_cast<size_t>(omp_get_thread_num()) * 2 * cols;
    float* mine2 = mine1 + cols;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float *z1r = z1 + r * cols, *z2r = z2 + r * cols, *dhr = dh + r * cols;
      float *dz1r = dz1 + r * cols, *dz2r = dz2 + r * cols;
      for (int64_t i = 0; i < cols; ++i) {
        const float s = paddlemix_cpu::Sigmoid(z1r[i]);
        dz1r[i] = dhr[i] * z2r[i] * s * (1.0f + z1r[i] * (1.0f - s));
        dz2r[i] = dhr[i] * z1r[i] * s;
        mine1[i] += dz1r[i];
        mine2[i] += dz2r[i];
      }
    }
  }
  std::memcpy(db1, partial.data(), cols * sizeof(float));
  std::memcpy(db2, partial.data() + cols, cols * sizeof(float));
  for (int t = 1; t < team; ++t) {
    const float* sums = partial.data() + static_cast<size_t>(t) * 2 * cols;
    for (int64_t i = 0; i < cols; ++i) {
      db1[i] += sums[i];
      db2[i] += sums[cols + i];
    }
  }
}

void CheckSwigluInputs(const paddle::Tensor& x, const paddle::Tensor& w1, const paddle::Tensor& b1,
                       const paddle::Tensor& w2, const paddle::Tensor& b2) {
  CheckInputs(x, w1, b1, kNoActivation);
  PD_CHECK(w2.shape() == w1.shape() && b2.shape() == b1.shape(), "onednn_swiglu: w2 and b2 must have w1's and ",
           "b1's shapes [", w1.shape()[0], ", ", w1.shape()[1], "] and [", w1.shape()[1], "]");
  PD_CHECK(w2.dtype() == paddle::DataType::FLOAT32 && b2.dtype() == paddle::DataType::FLOAT32 && w2.is_cpu() &&
               b2.is_cpu(), "onednn_swiglu: float32 CPU tensors only");
  PD_CHECK(x.numel() > 0 && w1.numel() > 0, "onednn_swiglu: empty tensors are not supported");
}

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
  Gemm(x.data<float>(), weight.data<float>(), bias.data<float>(), keep ? z.data<float>() : y.data<float>(), m, k, n,
       keep ? kNoActivation : activation, Fpmath(bf16), threads);
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
  BackwardGemms(x.data<float>(), weight.data<float>(), dz.data<float>(), dx.data<float>(), dweight.data<float>(), m,
                k, n, Fpmath(bf16), threads);
  return {dx, dweight, dbias};
}

std::vector<paddle::Tensor> MlpForward(const paddle::Tensor& x, const paddle::Tensor& w1, const paddle::Tensor& b1,
                                       const paddle::Tensor& w2, const paddle::Tensor& b2, int activation,
                                       bool keep_preactivation, bool bf16, int threads) {
  CheckMlpInputs(x, w1, b1, w2, b2, activation);
  const int64_t k = w1.shape()[0], hidden = w1.shape()[1], n = w2.shape()[1], m = x.numel() / k;
  const int fpmath = Fpmath(bf16);
  auto out = paddle::empty(OutputShape(x.shape(), w2.shape()), x.dtype(), x.place());
  auto activated = paddle::empty({m, hidden}, x.dtype(), x.place());  // freed on return
  auto z = paddle::empty(keep_preactivation ? OutputShape(x.shape(), w1.shape()) : std::vector<int64_t>{0},
                         x.dtype(), x.place());
  if (keep_preactivation) {
    Gemm(x.data<float>(), w1.data<float>(), b1.data<float>(), z.data<float>(), m, k, hidden, kNoActivation, fpmath,
         threads);
    ActivationForward(z.data<float>(), activated.data<float>(), m, hidden, activation, threads);
  } else {
    Gemm(x.data<float>(), w1.data<float>(), b1.data<float>(), activated.data<float>(), m, k, hidden, activation,
         fpmath, threads);
  }
  Gemm(activated.data<float>(), w2.data<float>(), b2.data<float>(), out.data<float>(), m, hidden, n, kNoActivation,
       fpmath, threads);
  return {out, z};
}

std::vector<paddle::Tensor> MlpBackward(const paddle::Tensor& x, const paddle::Tensor& w1, const paddle::Tensor& b1,
                                        const paddle::Tensor& w2, const paddle::Tensor& b2, const paddle::Tensor& z,
                                        const paddle::Tensor& dout, int activation, bool keep_preactivation,
                                        bool bf16, int threads) {
  const int64_t k = w1.shape()[0], hidden = w1.shape()[1], n = w2.shape()[1], m = x.numel() / k;
  PD_CHECK(z.numel() == m * hidden, "onednn_mlp: the backward pass needs the pre-activation, which the forward ran "
           "without (keep_preactivation=False)");
  const int fpmath = Fpmath(bf16);
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw1 = paddle::empty(w1.shape(), w1.dtype(), w1.place());
  auto db1 = paddle::empty(b1.shape(), b1.dtype(), b1.place());
  auto dw2 = paddle::empty(w2.shape(), w2.dtype(), w2.place());
  auto db2 = paddle::empty(b2.shape(), b2.dtype(), b2.place());
  auto activated = paddle::empty({m, hidden}, x.dtype(), x.place());  // recomputed from z
  auto dhidden = paddle::empty({m, hidden}, x.dtype(), x.place());    // d act(z), then dz in place
  ActivationForward(z.data<float>(), activated.data<float>(), m, hidden, activation, threads);
  ActivationBackward(nullptr, dout.data<float>(), nullptr, db2.data<float>(), m, n, kNoActivation, threads);
  BackwardGemms(activated.data<float>(), w2.data<float>(), dout.data<float>(), dhidden.data<float>(),
                dw2.data<float>(), m, hidden, n, fpmath, threads);
  ActivationBackward(z.data<float>(), dhidden.data<float>(), dhidden.data<float>(), db1.data<float>(), m, hidden,
                     activation, threads);
  BackwardGemms(x.data<float>(), w1.data<float>(), dhidden.data<float>(), dx.data<float>(), dw1.data<float>(), m, k,
                hidden, fpmath, threads);
  return {dx, dw1, db1, dw2, db2};
}

std::vector<std::vector<int64_t>> MlpInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w1,
                                                const std::vector<int64_t>& b1, const std::vector<int64_t>& w2,
                                                const std::vector<int64_t>& b2, int activation,
                                                bool keep_preactivation, bool bf16, int threads) {
  return {OutputShape(x, w2), keep_preactivation ? OutputShape(x, w1) : std::vector<int64_t>{0}};
}

std::vector<paddle::DataType> MlpInferDtype(const paddle::DataType& x, const paddle::DataType& w1,
                                            const paddle::DataType& b1, const paddle::DataType& w2,
                                            const paddle::DataType& b2) {
  return {x, x};
}

PD_BUILD_OP(onednn_mlp)
    .Inputs({"X", "W1", "B1", "W2", "B2"})
    .Outputs({"Out", "Preactivation"})
    .Attrs({"activation: int", "keep_preactivation: bool", "bf16: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(MlpForward))
    .SetInferShapeFn(PD_INFER_SHAPE(MlpInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(MlpInferDtype));

PD_BUILD_GRAD_OP(onednn_mlp)
    .Inputs({"X", "W1", "B1", "W2", "B2", "Preactivation", paddle::Grad("Out")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W1"), paddle::Grad("B1"), paddle::Grad("W2"), paddle::Grad("B2")})
    .Attrs({"activation: int", "keep_preactivation: bool", "bf16: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(MlpBackward));

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

std::vector<paddle::Tensor> SwigluForward(const paddle::Tensor& x, const paddle::Tensor& w1,
                                          const paddle::Tensor& b1, const paddle::Tensor& w2,
                                          const paddle::Tensor& b2, bool keep_preactivation, bool bf16,
                                          int threads) {
  CheckSwigluInputs(x, w1, b1, w2, b2);
  const int64_t k = w1.shape()[0], hidden = w1.shape()[1], m = x.numel() / k;
  const int fpmath = Fpmath(bf16);
  const auto shape = OutputShape(x.shape(), w1.shape());
  auto h = paddle::empty(shape, x.dtype(), x.place());
  const auto kept_shape = keep_preactivation ? shape : std::vector<int64_t>{0};
  auto z1 = paddle::empty(kept_shape, x.dtype(), x.place());
  auto z2 = paddle::empty(kept_shape, x.dtype(), x.place());
  if (keep_preactivation) {
    Gemm(x.data<float>(), w1.data<float>(), b1.data<float>(), z1.data<float>(), m, k, hidden, kNoActivation, fpmath,
         threads);
    Gemm(x.data<float>(), w2.data<float>(), b2.data<float>(), z2.data<float>(), m, k, hidden, kNoActivation, fpmath,
         threads);
    SwigluProduct(z1.data<float>(), z2.data<float>(), h.data<float>(), m, hidden, threads);
  } else {
    auto gate = paddle::empty({m, hidden}, x.dtype(), x.place());  // silu(x W1 + b1), freed on return
    Gemm(x.data<float>(), w1.data<float>(), b1.data<float>(), gate.data<float>(), m, k, hidden, kSilu, fpmath,
         threads);
    Gemm(x.data<float>(), w2.data<float>(), b2.data<float>(), h.data<float>(), m, k, hidden, kMultiply, fpmath,
         threads, gate.data<float>());
  }
  return {h, z1, z2};
}

std::vector<paddle::Tensor> SwigluBackward(const paddle::Tensor& x, const paddle::Tensor& w1,
                                           const paddle::Tensor& b1, const paddle::Tensor& w2,
                                           const paddle::Tensor& b2, const paddle::Tensor& z1,
                                           const paddle::Tensor& z2, const paddle::Tensor& dh,
                                           bool keep_preactivation, bool bf16, int threads) {
  const int64_t k = w1.shape()[0], hidden = w1.shape()[1], m = x.numel() / k;
  PD_CHECK(z1.numel() == m * hidden && z2.numel() == m * hidden, "onednn_swiglu: the backward pass needs the ",
           "pre-activations, which the forward ran without (keep_preactivation=False)");
  const int fpmath = Fpmath(bf16);
  threads = paddlemix_cpu::AllowedThreads(threads);
  auto dx = paddle::empty(x.shape(), x.dtype(), x.place());
  auto dw1 = paddle::empty(w1.shape(), w1.dtype(), w1.place());
  auto db1 = paddle::empty(b1.shape(), b1.dtype(), b1.place());
  auto dw2 = paddle::empty(w2.shape(), w2.dtype(), w2.place());
  auto db2 = paddle::empty(b2.shape(), b2.dtype(), b2.place());
  auto dz1 = paddle::empty({m, hidden}, x.dtype(), x.place());
  auto dz2 = paddle::empty({m, hidden}, x.dtype(), x.place());
  SwigluPreactivationGradients(z1.data<float>(), z2.data<float>(), dh.data<float>(), dz1.data<float>(),
                               dz2.data<float>(), db1.data<float>(), db2.data<float>(), m, hidden, threads);
  GemmCache& gemms = GemmCache::Get();
  // dx = dz1 W1^T + dz2 W2^T (the second added by a sum post-op); dW1 = x^T dz1, dW2 = x^T dz2
  gemms.Run({m, hidden, k, false, true, false, kNoActivation, fpmath, threads}, dz1.data<float>(), w1.data<float>(),
            nullptr, dx.data<float>());
  gemms.Run({m, hidden, k, false, true, false, kAccumulate, fpmath, threads}, dz2.data<float>(), w2.data<float>(),
            nullptr, dx.data<float>());
  gemms.Run({k, m, hidden, true, false, false, kNoActivation, fpmath, threads}, x.data<float>(), dz1.data<float>(),
            nullptr, dw1.data<float>());
  gemms.Run({k, m, hidden, true, false, false, kNoActivation, fpmath, threads}, x.data<float>(), dz2.data<float>(),
            nullptr, dw2.data<float>());
  return {dx, dw1, db1, dw2, db2};
}

std::vector<std::vector<int64_t>> SwigluInferShape(const std::vector<int64_t>& x, const std::vector<int64_t>& w1,
                                                   const std::vector<int64_t>& b1, const std::vector<int64_t>& w2,
                                                   const std::vector<int64_t>& b2, bool keep_preactivation,
                                                   bool bf16, int threads) {
  const auto h = OutputShape(x, w1);
  const auto kept = keep_preactivation ? h : std::vector<int64_t>{0};
  return {h, kept, kept};
}

std::vector<paddle::DataType> SwigluInferDtype(const paddle::DataType& x, const paddle::DataType& w1,
                                               const paddle::DataType& b1, const paddle::DataType& w2,
                                               const paddle::DataType& b2) {
  return {x, x, x};
}

PD_BUILD_OP(onednn_swiglu)
    .Inputs({"X", "W1", "B1", "W2", "B2"})
    .Outputs({"H", "Z1", "Z2"})
    .Attrs({"keep_preactivation: bool", "bf16: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(SwigluForward))
    .SetInferShapeFn(PD_INFER_SHAPE(SwigluInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(SwigluInferDtype));

PD_BUILD_GRAD_OP(onednn_swiglu)
    .Inputs({"X", "W1", "B1", "W2", "B2", "Z1", "Z2", paddle::Grad("H")})
    .Outputs({paddle::Grad("X"), paddle::Grad("W1"), paddle::Grad("B1"), paddle::Grad("W2"), paddle::Grad("B2")})
    .Attrs({"keep_preactivation: bool", "bf16: bool", "threads: int"})
    .SetKernelFn(PD_KERNEL(SwigluBackward));
