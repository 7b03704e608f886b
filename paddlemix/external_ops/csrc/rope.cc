// cpu_rope: y = x M per token, x [batch, tokens, heads, head_dim], M the token's rotation
// [head_dim, head_dim] from rotations [tokens, head_dim, head_dim] or, per sample (patch dropout),
// [batch, tokens, head_dim, head_dim]. Rotary embeddings turn channel pairs (2i, 2i+1): M is
// block-diagonal with 2x2 blocks (layers/rope.py's rope_rotations), and the op reads those blocks only,
// so a token costs 2 multiply-adds per channel instead of head_dim (Paddle's einsum: 5-8 ms per call for
// EVA02-B-16 at batch 8 on 2 cores, two calls per block). With c[e] = M[e][e] and s[e] = M[e^1][e],
// y[e] = x[e] c[e] + x[e^1] s[e]. The backward pass is the same kernel with the transposed blocks,
// dx = dy M^T. The rotations get no gradient (a buffer). CPU, float32.
#include <omp.h>

#include <cstdint>
#include <vector>

#include "cpu_threads.h"
#include "paddle/extension.h"

namespace {

// out = in M (or in M^T with `transpose`) for each token, M's 2x2 diagonal blocks read from `rotations`.
void RotatePairs(const float* in, const float* rotations, float* out, int64_t batch, int64_t tokens, int64_t heads,
                 int64_t head_dim, bool per_sample, bool transpose, int threads) {
  const int64_t rows = batch * tokens, width = heads * head_dim;
#pragma omp parallel num_threads(paddlemix_cpu::KernelThreads(threads, rows, width))
  {
    std::vector<float> cos_part(head_dim), sin_part(head_dim);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const float* m = rotations + (per_sample ? row : row % tokens) * head_dim * head_dim;
      for (int64_t e = 0; e < head_dim; ++e) {
        const int64_t pair = e ^ 1;
        cos_part[e] = m[e * head_dim + e];
        sin_part[e] = transpose ? m[e * head_dim + pair] : m[pair * head_dim + e];
      }
      for (int64_t h = 0; h < heads; ++h) {
        const float* x = in + row * width + h * head_dim;
        float* y = out + row * width + h * head_dim;
        for (int64_t e = 0; e < head_dim; e += 2) {
          const float x0 = x[e], x1 = x[e + 1];
          y[e] = x0 * cos_part[e] + x1 * sin_part[e];
          y[e + 1] = x1 * cos_part[e + 1] + x0 * sin_part[e + 1];
        }
      }
    }
  }
}

void CheckInputs(const paddle::Tensor& x, const paddle::Tensor& rotations) {
  PD_CHECK(x.is_cpu() && rotations.is_cpu(), "cpu_rope: CPU tensors only");
  PD_CHECK(x.dtype() == paddle::DataType::FLOAT32 && rotations.dtype() == paddle::DataType::FLOAT32,
           "cpu_rope: float32 tensors only, got ", x.dtype(), " and ", rotations.dtype());
  const auto& shape = x.shape();
  PD_CHECK(shape.size() == 4, "cpu_rope: x must be [batch, tokens, heads, head_dim], got ", shape.size(),
           " dimensions");
  PD_CHECK(shape[3] % 2 == 0, "cpu_rope: head_dim must be even (channel pairs), got ", shape[3]);
  const auto& r = rotations.shape();
  const bool shared = r.size() == 3 && r[0] == shape[1];
  const bool per_sample = r.size() == 4 && r[0] == shape[0] && r[1] == shape[1];
  PD_CHECK((shared || per_sample) && r[r.size() - 1] == shape[3] && r[r.size() - 2] == shape[3],
           "cpu_rope: rotations must be [tokens, head_dim, head_dim] or [batch, tokens, head_dim, head_dim] = [",
           shape[0], ", ", shape[1], ", ", shape[3], ", ", shape[3], "]");
}

paddle::Tensor Rotate(const paddle::Tensor& x, const paddle::Tensor& rotations, bool transpose, int threads) {
  const auto& shape = x.shape();
  auto y = paddle::empty(shape, x.dtype(), x.place());
  if (x.numel() == 0) return y;
  RotatePairs(x.data<float>(), rotations.data<float>(), y.data<float>(), shape[0], shape[1], shape[2], shape[3],
              rotations.shape().size() == 4, transpose, threads);
  return y;
}

}  // namespace

std::vector<paddle::Tensor> RopeForward(const paddle::Tensor& x, const paddle::Tensor& rotations, int threads) {
  CheckInputs(x, rotations);
  return {Rotate(x, rotations, false, threads)};
}

std::vector<paddle::Tensor> RopeBackward(const paddle::Tensor& rotations, const paddle::Tensor& dy, int threads) {
  return {Rotate(dy, rotations, true, threads)};
}

PD_BUILD_OP(cpu_rope)
    .Inputs({"X", "Rotations"})
    .Outputs({"Y"})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(RopeForward));

PD_BUILD_GRAD_OP(cpu_rope)
    .Inputs({"Rotations", paddle::Grad("Y")})
    .Outputs({paddle::Grad("X")})
    .Attrs({"threads: int"})
    .SetKernelFn(PD_KERNEL(RopeBackward));
