// token_embedding: out[..., :] = weight[ids[...], :], with the dense weight gradient (as nn.Embedding's,
// sparse=False) for float32 on CPU. Paddle's CPU kernel spends 380 ms on the gradient of CLIP's
// [49408, 512] token table at batch 32 x 77 tokens (2 threads); here the table's gradient is zeroed in
// parallel slices and each thread adds the rows of the ids that fall in its own slice (no atomics):
// a few ms. Ids outside [0, vocabulary) are an error naming the first one.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_threads.h"
#include "paddle/extension.h"

namespace {

template <typename Id>
void CheckIds(const Id* ids, int64_t count, int64_t vocabulary) {
  for (int64_t i = 0; i < count; ++i)
    PD_CHECK(ids[i] >= 0 && ids[i] < vocabulary, "token_embedding: id ", static_cast<int64_t>(ids[i]), " at position ", i,
             " is outside the vocabulary [0, ", vocabulary, ")");
}

template <typename Id>
void Gather(const Id* ids, const float* weight, float* out, int64_t count, int64_t width, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < count; ++i) std::memcpy(out + i * width, weight + ids[i] * width, width * sizeof(float));
}

template <typename Id>
void ScatterAdd(const Id* ids, const float* dout, float* dweight, int64_t count, int64_t vocabulary, int64_t width,
                int threads) {
#pragma omp parallel num_threads(threads)
  {
    const int team = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t first = vocabulary * me / team, last = vocabulary * (me + 1) / team;  // this thread's rows
    std::memset(dweight + first * width, 0, (last - first) * width * sizeof(float));
    for (int64_t i = 0; i < count; ++i) {
      const int64_t row = ids[i];
      if (row < first || row >= last) continue;
      float* target = dweight + row * width;
      const float* source = dout + i * width;
      for (int64_t j = 0; j < width; ++j) target[j] += source[j];
    }
  }
}

void CheckInputs(const paddle::Tensor& ids, const paddle::Tensor& weight) {
  PD_CHECK(ids.is_cpu() && weight.is_cpu(), "token_embedding: CPU tensors only");
  PD_CHECK(ids.dtype() == paddle::DataType::INT64 || ids.dtype() == paddle::DataType::INT32,
           "token_embedding: ids must be int64 or int32, got ", ids.dtype());
  PD_CHECK(weight.dtype() == paddle::DataType::FLOAT32, "token_embedding: weight must be float32, got ", weight.dtype());
  PD_CHECK(weight.shape().size() == 2, "token_embedding: weight must be [vocabulary, width]");
}

template <typename Fn>
void DispatchIds(const paddle::Tensor& ids, Fn&& fn) {
  if (ids.dtype() == paddle::DataType::INT64) {
    fn(ids.data<int64_t>());
  } else {
    fn(ids.data<int32_t>());
  }
}

}  // namespace

std::vector<paddle::Tensor> EmbeddingForward(const paddle::Tensor& ids, const paddle::Tensor& weight, int threads) {
  CheckInputs(ids, weight);
  threads = paddlemix_cpu::AllowedThreads(threads);
  const int64_t vocabulary = weight.shape()[0], width = weight.shape()[1];
  std::vector<int64_t> shape = ids.shape();
  shape.push_back(width);
  auto out = paddle::empty(shape, weight.dtype(), weight.place());
  DispatchIds(ids, [&](auto* id) {
    CheckIds(id, ids.numel(), vocabulary);
    Gather(id, weight.data<float>(), out.data<float>(), ids.numel(), width, threads);
  });
  return {out};
}

std::vector<paddle::Tensor> EmbeddingBackward(const paddle::Tensor& ids, const paddle::Tensor& weight,
                                              const paddle::Tensor& dout, int threads) {
  threads = paddlemix_cpu::AllowedThreads(threads);
  const int64_t vocabulary = weight.shape()[0], width = weight.shape()[1];
  auto dweight = paddle::empty(weight.shape(), weight.dtype(), weight.place());
  DispatchIds(ids, [&](auto* id) {
    ScatterAdd(id, dout.data<float>(), dweight.data<float>(), ids.numel(), vocabulary, width, threads);
  });
  return {dweight};
}

std::vector<std::vector<int64_t>> EmbeddingInferShape(const std::vector<int64_t>& ids,
                                                      const std::vector<int64_t>& weight, int threads) {
  std::vector<int64_t> shape = ids;
  shape.push_back(weight[1]);
  return {shape};
}

std::vector<paddle::DataType> EmbeddingInferDtype(const paddle::DataType& ids, const paddle::DataType& weight) {
  return {weight};
}

PD_BUILD_OP(token_embedding)
    .Inputs({"Ids", "Weight"})
    .Outputs({"Out"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(EmbeddingForward))
    .SetInferShapeFn(PD_INFER_SHAPE(EmbeddingInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(EmbeddingInferDtype));

PD_BUILD_GRAD_OP(token_embedding)
    .Inputs({"Ids", "Weight", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Weight")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(EmbeddingBackward));
