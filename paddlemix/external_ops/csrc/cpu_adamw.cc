// cpu_adamw: one AdamW step of every float32 CPU parameter in one call, in place, with the gradients
// scaled by a global-norm clip factor on the fly.
//
// Paddle's optimizer runs its `adamw_` kernel once per parameter from Python, after the clip has
// written a scaled copy of every gradient: on the README's tiny CLIP (62 tensors, 7.2 M values, most
// of them the 49408 x 128 token table) that was ~45 ms of a ~240 ms step. Here the parameters are cut
// into equal chunks shared by the threads, and each value is read and written once.
//
// The arithmetic is Paddle's CPU AdamW kernel's (phi/kernels/cpu/adamw_kernel.cc), per value:
//   g  = grad * scale                                  (the clip's scaled gradient)
//   p  = p - lr * coeff * p                            (decoupled decay; coeff 0: none)
//   m1 = beta1 m1 + (1 - beta1) g,  m2 = beta2 m2 + (1 - beta2) g g
//   p  = p - lr sqrt(1 - beta2^t) / (1 - beta1^t) * m1 / (sqrt(m2) + eps sqrt(1 - beta2^t))
// with beta1^t, beta2^t the parameter's beta-power accumulators before the step, which then advance.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_threads.h"
#include "paddle/extension.h"

namespace {

constexpr int64_t kChunk = 1 << 14;  // values per work item: 4 arrays x 64 KiB, within L2

struct Update {  // one tensor's step constants
  float* param;
  const float* grad;
  float* moment1;
  float* moment2;
  int64_t size;
  float decay;      // lr * coeff
  float step;       // lr * sqrt(1 - beta2^t) / (1 - beta1^t)
  float epsilon;    // eps * sqrt(1 - beta2^t)
};

void Apply(const Update& u, int64_t begin, int64_t end, float scale, float beta1, float beta2) {
  float* __restrict p = u.param;
  const float* __restrict grad = u.grad;
  float* __restrict m1 = u.moment1;
  float* __restrict m2 = u.moment2;
  const float one_minus_beta1 = 1.0f - beta1, one_minus_beta2 = 1.0f - beta2;
  for (int64_t i = begin; i < end; ++i) {
    const float g = grad[i] * scale;
    const float decayed = p[i] - u.decay * p[i];
    const float first = beta1 * m1[i] + one_minus_beta1 * g;
    const float second = beta2 * m2[i] + one_minus_beta2 * g * g;
    m1[i] = first;
    m2[i] = second;
    p[i] = decayed - u.step * (first / (std::sqrt(second) + u.epsilon));
  }
}

void CheckTensor(const paddle::Tensor& t, const paddle::Tensor& param, const char* what, size_t index) {
  PD_CHECK(t.is_cpu() && t.dtype() == paddle::DataType::FLOAT32, "cpu_adamw: ", what, " ", index,
           " must be a float32 CPU tensor, got ", t.dtype());
  PD_CHECK(t.numel() == param.numel(), "cpu_adamw: ", what, " ", index, " has ", t.numel(), " values, its parameter ",
           param.numel());
}

}  // namespace

void CpuAdamW(std::vector<paddle::Tensor>& params, const std::vector<paddle::Tensor>& grads,
              std::vector<paddle::Tensor>& moment1, std::vector<paddle::Tensor>& moment2,
              std::vector<paddle::Tensor>& beta1_pows, std::vector<paddle::Tensor>& beta2_pows,
              const paddle::Tensor& grad_scale, const std::vector<float>& learning_rates,
              const std::vector<float>& decay_coeffs, float beta1, float beta2, float epsilon, int threads) {
  const size_t count = params.size();
  PD_CHECK(grads.size() == count && moment1.size() == count && moment2.size() == count && beta1_pows.size() == count &&
               beta2_pows.size() == count && learning_rates.size() == count && decay_coeffs.size() == count,
           "cpu_adamw: params, grads, moments, beta powers, learning_rates and decay_coeffs must have one entry per "
           "parameter");
  PD_CHECK(grad_scale.is_cpu() && grad_scale.dtype() == paddle::DataType::FLOAT32 && grad_scale.numel() == 1,
           "cpu_adamw: grad_scale must be one float32 CPU value");
  const float scale = grad_scale.data<float>()[0];
  std::vector<Update> updates(count);
  std::vector<int64_t> first_chunk(count + 1, 0);  // chunk numbering runs over all tensors
  for (size_t t = 0; t < count; ++t) {
    PD_CHECK(params[t].is_cpu() && params[t].dtype() == paddle::DataType::FLOAT32, "cpu_adamw: parameter ", t,
             " must be a float32 CPU tensor, got ", params[t].dtype());
    CheckTensor(grads[t], params[t], "gradient", t);
    CheckTensor(moment1[t], params[t], "moment1", t);
    CheckTensor(moment2[t], params[t], "moment2", t);
    for (const paddle::Tensor* power : {&beta1_pows[t], &beta2_pows[t]})
      PD_CHECK(power->is_cpu() && power->dtype() == paddle::DataType::FLOAT32 && power->numel() == 1,
               "cpu_adamw: beta power ", t, " must be one float32 CPU value");
    const float beta1_power = beta1_pows[t].data<float>()[0], beta2_power = beta2_pows[t].data<float>()[0];
    const float lr = learning_rates[t];
    const float bias_correction = std::sqrt(1.0f - beta2_power);
    updates[t] = {params[t].data<float>(), grads[t].data<float>(), moment1[t].data<float>(),
                  moment2[t].data<float>(), params[t].numel(), lr * decay_coeffs[t],
                  lr * (bias_correction / (1.0f - beta1_power)), epsilon * bias_correction};
    first_chunk[t + 1] = first_chunk[t] + (updates[t].size + kChunk - 1) / kChunk;
  }
  const int64_t chunks = first_chunk[count];
  const int team = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(paddlemix_cpu::AllowedThreads(threads), chunks)));
#pragma omp parallel for num_threads(team) schedule(static)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const size_t t = std::upper_bound(first_chunk.begin(), first_chunk.end(), chunk) - first_chunk.begin() - 1;
    const int64_t begin = (chunk - first_chunk[t]) * kChunk;
    Apply(updates[t], begin, std::min(begin + kChunk, updates[t].size), scale, beta1, beta2);
  }
  for (size_t t = 0; t < count; ++t) {
    beta1_pows[t].data<float>()[0] *= beta1;
    beta2_pows[t].data<float>()[0] *= beta2;
  }
}

PD_BUILD_OP(cpu_adamw)
    .Inputs({paddle::Vec("Params"), paddle::Vec("Grads"), paddle::Vec("Moment1"), paddle::Vec("Moment2"),
             paddle::Vec("Beta1Pows"), paddle::Vec("Beta2Pows"), "GradScale"})
    .Outputs({paddle::Vec("ParamsOut"), paddle::Vec("Moment1Out"), paddle::Vec("Moment2Out"),
              paddle::Vec("Beta1PowsOut"), paddle::Vec("Beta2PowsOut")})
    .SetInplaceMap({{paddle::Vec("Params"), paddle::Vec("ParamsOut")},
                    {paddle::Vec("Moment1"), paddle::Vec("Moment1Out")},
                    {paddle::Vec("Moment2"), paddle::Vec("Moment2Out")},
                    {paddle::Vec("Beta1Pows"), paddle::Vec("Beta1PowsOut")},
                    {paddle::Vec("Beta2Pows"), paddle::Vec("Beta2PowsOut")}})
    .Attrs({"learning_rates: std::vector<float>", "decay_coeffs: std::vector<float>", "beta1: float", "beta2: float",
            "epsilon: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(CpuAdamW));
