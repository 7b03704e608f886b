// Exact (erf) GELU and QuickGELU, z * sigmoid(1.702 z), and their slopes, and the sigmoid, for the CPU
// kernels of fused_bias_gelu.cc and onednn_linear.cc. float32 uses erf and exp approximations written as
// straight-line arithmetic so that GCC vectorises the loops (std::erf and std::exp would not be,
// without -ffast-math; Exp's float-to-int conversion also needs -fno-trapping-math, see
// build_flags.py): erf is Eigen's rational approximation (4e-7 absolute error), exp is Cephes' expf
// (Cody-Waite reduction, degree-5 polynomial, about 1 ulp). float64 uses std::erf and std::exp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace paddlemix_cpu {

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
inline T Sigmoid(T z) {
  return T(1) / (T(1) + Exp(-z));
}

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

}  // namespace paddlemix_cpu
