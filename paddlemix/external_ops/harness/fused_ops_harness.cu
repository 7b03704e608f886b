// Standalone check of csrc/fused_ops_kernels.cuh, without Paddle: fused_ln and fused_bias_gelu, forward and
// backward, for float32, float16 and bfloat16 against a double-precision CPU reference computed from the
// same (rounded) inputs. One PASS/FAIL line per case; exit status 1 if any case fails, 2 on a CUDA error.
// Outputs are poisoned with NaN before each run so an element a kernel fails to write cannot pass, and
// every backward runs twice to check that its column sums are bitwise reproducible.
// With --bench it also times both ops on CLIP shapes and reports GB/s (compulsory bytes / time) against
// the card's peak memory bandwidth (from the device attributes, or --peak-gbs).
//
// Build and run from the repository root (sm_80 code also runs on newer GPUs through its embedded PTX):
//   nvcc -O3 -std=c++17 -arch=sm_80 -o fused_ops_harness paddlemix/external_ops/harness/fused_ops_harness.cu
//   ./fused_ops_harness [--bench] [--peak-gbs GB_PER_S]
// tests/test_fused_ops_cuda.py builds it (warnings as errors) and runs it where a CUDA GPU is usable.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../csrc/fused_ops_kernels.cuh"

namespace {

constexpr float kEpsilon = 1e-5f;
constexpr double kQuickGeluScale = 1.702;
constexpr double kPi = 3.14159265358979323846;

void Check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(err));
    std::exit(2);
  }
}

// n elements on the device, starting `offset` elements into the allocation (offset 1 misaligns the
// pointer for vector loads, so the element-by-element kernels run).
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t n, size_t offset = 0) : n_(n) {
    Check(cudaMalloc(&allocation_, (n + offset + 1) * sizeof(T)), "cudaMalloc");
    data_ = allocation_ + offset;
  }
  ~DeviceArray() { cudaFree(allocation_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return data_; }
  void Upload(const std::vector<T>& host) {
    Check(cudaMemcpy(data_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  void PoisonWithNaN() { Check(cudaMemset(data_, 0xff, n_ * sizeof(T)), "poison"); }  // all-ones bits: NaN
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    Check(cudaMemcpy(host.data(), data_, n_ * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }

 private:
  size_t n_;
  T* allocation_ = nullptr;
  T* data_ = nullptr;
};

double ToDouble(float v) { return v; }
double ToDouble(__half v) { return __half2float(v); }
double ToDouble(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
T FromDouble(double v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(static_cast<float>(v));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(static_cast<float>(v));
  } else {
    return static_cast<float>(v);
  }
}

template <typename T>
const char* TypeName() {
  if constexpr (std::is_same_v<T, __half>) return "float16";
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bfloat16";
  return "float32";
}

// Allowed error relative to max(1, |reference|): about twice the rounding of the stored result.
template <typename T>
double Tolerance() {
  if constexpr (std::is_same_v<T, __half>) return 1e-3;      // 2^-11 unit roundoff
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return 8e-3;  // 2^-8
  return 1e-5;
}

// Largest |got - ref| / max(1, |ref|). Sums over rows (per_tensor_scale) are scaled by max(1, max |ref|)
// instead: a float sum of many rows is accurate relative to its terms, not to a total that cancels to ~0.
// NaN (an unwritten or broken element) counts as infinite error.
template <typename T>
double MaxError(const std::vector<T>& got, const std::vector<double>& ref, bool per_tensor_scale = false) {
  double tensor_scale = 1.0;
  for (double r : ref) tensor_scale = std::max(tensor_scale, std::abs(r));
  double worst = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double scale = per_tensor_scale ? tensor_scale : std::max(1.0, std::abs(ref[i]));
    const double error = std::abs(ToDouble(got[i]) - ref[i]) / scale;
    if (std::isnan(error)) return std::numeric_limits<double>::infinity();
    worst = std::max(worst, error);
  }
  return worst;
}

template <typename T>
bool BitwiseEqual(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Shape {
  int64_t rows, cols;
  size_t offset;  // elements by which the [rows, cols] tensors are shifted off vector alignment
};

struct Measured {
  const char* name;
  double error, tolerance;
};

// Prints one line for a case and returns whether every error is within its tolerance.
bool Report(const std::string& title, const std::vector<Measured>& errors, bool deterministic) {
  bool pass = deterministic;
  std::printf("%-52s", title.c_str());
  for (const Measured& m : errors) {
    std::printf(" %s %.1e", m.name, m.error);
    pass = pass && m.error <= m.tolerance;
  }
  std::printf("%s  %s\n", deterministic ? "" : "  NOT-REPRODUCIBLE", pass ? "PASS" : "FAIL");
  return pass;
}

std::string Title(const char* op, const std::string& types, const Shape& s) {
  return std::string(op) + " " + types + " [" + std::to_string(s.rows) + ", " + std::to_string(s.cols) + "]" +
         (s.offset ? " misaligned" : "");
}

template <typename T, typename W>
bool CheckLayerNorm(const Shape& s, std::mt19937_64& rng) {
  const int64_t rows = s.rows, cols = s.cols, n = rows * cols;
  std::normal_distribution<double> normal;
  std::vector<T> x(n), dy(n);
  std::vector<W> weight(cols), bias(cols);
  for (T& v : x) v = FromDouble<T>(3 * normal(rng) + 1);
  for (T& v : dy) v = FromDouble<T>(normal(rng));
  for (W& v : weight) v = FromDouble<W>(1 + 0.5 * normal(rng));
  for (W& v : bias) v = FromDouble<W>(normal(rng));

  DeviceArray<T> d_x(n, s.offset), d_y(n, s.offset), d_dy(n, s.offset), d_dx(n, s.offset);
  DeviceArray<W> d_weight(cols), d_bias(cols), d_dweight(cols), d_dbias(cols);
  DeviceArray<float> d_mean(rows), d_invvar(rows);
  DeviceArray<float> workspace(paddlemix_cuda::LayerNormBackwardWorkspaceFloats(rows, cols));
  d_x.Upload(x);
  d_dy.Upload(dy);
  d_weight.Upload(weight);
  d_bias.Upload(bias);
  d_y.PoisonWithNaN();
  d_mean.PoisonWithNaN();
  d_invvar.PoisonWithNaN();
  Check(paddlemix_cuda::LayerNormForward(d_x.get(), d_weight.get(), d_bias.get(), d_y.get(), d_mean.get(),
                                         d_invvar.get(), rows, cols, kEpsilon, nullptr),
        "LayerNormForward launch");
  auto run_backward = [&] {
    d_dx.PoisonWithNaN();
    d_dweight.PoisonWithNaN();
    d_dbias.PoisonWithNaN();
    Check(paddlemix_cuda::LayerNormBackward(d_x.get(), d_weight.get(), d_mean.get(), d_invvar.get(), d_dy.get(),
                                            d_dx.get(), d_dweight.get(), d_dbias.get(), workspace.get(), rows, cols,
                                            nullptr),
          "LayerNormBackward launch");
    Check(cudaDeviceSynchronize(), "fused_ln kernels");
  };
  run_backward();
  const std::vector<T> y = d_y.Download(), dx = d_dx.Download();
  const std::vector<float> mean = d_mean.Download(), invvar = d_invvar.Download();
  const std::vector<W> dweight = d_dweight.Download(), dbias = d_dbias.Download();
  run_backward();
  const bool deterministic = BitwiseEqual(dx, d_dx.Download()) && BitwiseEqual(dweight, d_dweight.Download()) &&
                             BitwiseEqual(dbias, d_dbias.Download());

  std::vector<double> ref_y(n), ref_dx(n), ref_mean(rows), ref_invvar(rows), ref_dweight(cols), ref_dbias(cols);
  std::vector<double> xhat(cols), g(cols);
  for (int64_t r = 0; r < rows; ++r) {
    const T* x_row = x.data() + r * cols;
    const T* dy_row = dy.data() + r * cols;
    double sum = 0, squares = 0, sum_g = 0, sum_gx = 0;
    for (int64_t i = 0; i < cols; ++i) sum += ToDouble(x_row[i]);
    const double m = sum / cols;
    for (int64_t i = 0; i < cols; ++i) squares += (ToDouble(x_row[i]) - m) * (ToDouble(x_row[i]) - m);
    const double iv = 1 / std::sqrt(squares / cols + static_cast<double>(kEpsilon));
    ref_mean[r] = m;
    ref_invvar[r] = iv;
    for (int64_t i = 0; i < cols; ++i) {
      const double d = ToDouble(dy_row[i]);
      xhat[i] = (ToDouble(x_row[i]) - m) * iv;
      g[i] = d * ToDouble(weight[i]);
      ref_y[r * cols + i] = xhat[i] * ToDouble(weight[i]) + ToDouble(bias[i]);
      sum_g += g[i];
      sum_gx += g[i] * xhat[i];
      ref_dweight[i] += d * xhat[i];
      ref_dbias[i] += d;
    }
    for (int64_t i = 0; i < cols; ++i) ref_dx[r * cols + i] = iv * (g[i] - sum_g / cols - xhat[i] * sum_gx / cols);
  }
  const double t = Tolerance<T>(), w = Tolerance<W>(), f = Tolerance<float>();
  return Report(Title("fused_ln", std::string(TypeName<T>()) + " w=" + TypeName<W>(), s),
                {{"y", MaxError(y, ref_y), t},
                 {"mean", MaxError(mean, ref_mean), f},
                 {"invvar", MaxError(invvar, ref_invvar), f},
                 {"dx", MaxError(dx, ref_dx), t},
                 {"dweight", MaxError(dweight, ref_dweight, true), w},
                 {"dbias", MaxError(dbias, ref_dbias, true), w}},
                deterministic);
}

double ReferenceGelu(double z, bool quick) {
  if (quick) return z / (1 + std::exp(-kQuickGeluScale * z));
  return 0.5 * z * (1 + std::erf(z / std::sqrt(2.0)));
}

double ReferenceGeluDerivative(double z, bool quick) {
  if (quick) {
    const double s = 1 / (1 + std::exp(-kQuickGeluScale * z));
    return s + kQuickGeluScale * z * s * (1 - s);
  }
  return 0.5 * (1 + std::erf(z / std::sqrt(2.0))) + z * std::exp(-0.5 * z * z) / std::sqrt(2 * kPi);
}

template <typename T>
bool CheckBiasGelu(const Shape& s, bool quick, std::mt19937_64& rng) {
  const int64_t rows = s.rows, cols = s.cols, n = rows * cols;
  std::normal_distribution<double> normal;
  std::vector<T> x(n), dy(n), bias(cols);
  for (T& v : x) v = FromDouble<T>(2 * normal(rng));
  for (T& v : dy) v = FromDouble<T>(normal(rng));
  for (T& v : bias) v = FromDouble<T>(normal(rng));

  DeviceArray<T> d_x(n, s.offset), d_y(n, s.offset), d_dy(n, s.offset), d_dx(n, s.offset);
  DeviceArray<T> d_bias(cols), d_dbias(cols);
  DeviceArray<float> workspace(paddlemix_cuda::BiasGeluBackwardWorkspaceFloats(rows, cols));
  d_x.Upload(x);
  d_dy.Upload(dy);
  d_bias.Upload(bias);
  d_y.PoisonWithNaN();
  Check(paddlemix_cuda::BiasGeluForward(d_x.get(), d_bias.get(), d_y.get(), rows, cols, quick, nullptr),
        "BiasGeluForward launch");
  auto run_backward = [&] {
    d_dx.PoisonWithNaN();
    d_dbias.PoisonWithNaN();
    Check(paddlemix_cuda::BiasGeluBackward(d_x.get(), d_bias.get(), d_dy.get(), d_dx.get(), d_dbias.get(),
                                           workspace.get(), rows, cols, quick, nullptr),
          "BiasGeluBackward launch");
    Check(cudaDeviceSynchronize(), "fused_bias_gelu kernels");
  };
  run_backward();
  const std::vector<T> y = d_y.Download(), dx = d_dx.Download(), dbias = d_dbias.Download();
  run_backward();
  const bool deterministic = BitwiseEqual(dx, d_dx.Download()) && BitwiseEqual(dbias, d_dbias.Download());

  std::vector<double> ref_y(n), ref_dx(n), ref_dbias(cols);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < cols; ++i) {
      const int64_t k = r * cols + i;
      const double z = ToDouble(x[k]) + ToDouble(bias[i]);
      ref_y[k] = ReferenceGelu(z, quick);
      ref_dx[k] = ToDouble(dy[k]) * ReferenceGeluDerivative(z, quick);
      ref_dbias[i] += ref_dx[k];
    }
  }
  const double t = Tolerance<T>();
  return Report(Title(quick ? "fused_bias_gelu quick" : "fused_bias_gelu", TypeName<T>(), s),
                {{"y", MaxError(y, ref_y), t}, {"dx", MaxError(dx, ref_dx), t},
                 {"dbias", MaxError(dbias, ref_dbias, true), t}},
                deterministic);
}

template <typename T>
bool CheckAllFor(const Shape& s, std::mt19937_64& rng) {
  bool pass = CheckLayerNorm<T, T>(s, rng);
  if constexpr (!std::is_same_v<T, float>) pass = CheckLayerNorm<T, float>(s, rng) && pass;
  pass = CheckBiasGelu<T>(s, false, rng) && pass;
  return CheckBiasGelu<T>(s, true, rng) && pass;
}

// Hidden sizes of CLIP towers and awkward ones (odd, prime-ish, one past a vector multiple), rows chosen
// so some blocks take several rows; the widest takes the global-memory column-sum path.
const Shape kShapes[] = {{5000, 64, 0},  {1300, 768, 0}, {788, 768, 1}, {129, 1000, 0}, {257, 1025, 0},
                         {300, 1408, 0}, {33, 4097, 0},  {3, 65536, 0}, {0, 768, 0}};

// Mean time of one call of `launch` in microseconds, after a warm-up.
template <typename Launch>
double MeanMicroseconds(Launch&& launch) {
  constexpr int kWarmup = 10, kIterations = 200;
  for (int i = 0; i < kWarmup; ++i) Check(launch(), "bench launch");
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start), "cudaEventCreate");
  Check(cudaEventCreate(&stop), "cudaEventCreate");
  Check(cudaEventRecord(start), "cudaEventRecord");
  for (int i = 0; i < kIterations; ++i) Check(launch(), "bench launch");
  Check(cudaEventRecord(stop), "cudaEventRecord");
  Check(cudaEventSynchronize(stop), "bench kernels");
  float milliseconds = 0;
  Check(cudaEventElapsedTime(&milliseconds, start, stop), "cudaEventElapsedTime");
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return 1000.0 * milliseconds / kIterations;
}

void PrintRate(const char* what, const std::string& types, int64_t rows, int64_t cols, double bytes,
               double microseconds, double peak_gbs) {
  const double gbs = bytes / microseconds / 1e3;
  std::printf("bench %-22s %-24s [%6lld, %5lld] %8.2f us %8.1f GB/s", what, types.c_str(),
              static_cast<long long>(rows), static_cast<long long>(cols), microseconds, gbs);
  if (peak_gbs > 0) std::printf("  %5.1f%% of peak", 100.0 * gbs / peak_gbs);
  std::printf("\n");
}

// Times both ops; bytes are what each must read and write at least (workspace traffic not counted).
template <typename T, typename W>
void Bench(int64_t rows, int64_t cols, double peak_gbs) {
  const int64_t n = rows * cols;
  std::vector<T> ones(n, FromDouble<T>(1.0));
  std::vector<W> weights(cols, FromDouble<W>(1.0));
  DeviceArray<T> x(n), y(n), dy(n), dx(n), gelu_bias(cols), gelu_dbias(cols);
  DeviceArray<W> weight(cols), bias(cols), dweight(cols), dbias(cols);
  DeviceArray<float> mean(rows), invvar(rows);
  DeviceArray<float> workspace(std::max(paddlemix_cuda::LayerNormBackwardWorkspaceFloats(rows, cols),
                                        paddlemix_cuda::BiasGeluBackwardWorkspaceFloats(rows, cols)));
  x.Upload(ones);
  dy.Upload(ones);
  weight.Upload(weights);
  bias.Upload(weights);
  gelu_bias.Upload(std::vector<T>(ones.begin(), ones.begin() + cols));
  const double t = sizeof(T), w = sizeof(W);
  const std::string types = std::string(TypeName<T>()) + " w=" + TypeName<W>();
  PrintRate("fused_ln forward", types, rows, cols, 2 * n * t + 2 * cols * w + 2 * rows * 4.0,
            MeanMicroseconds([&] {
              return paddlemix_cuda::LayerNormForward(x.get(), weight.get(), bias.get(), y.get(), mean.get(),
                                                      invvar.get(), rows, cols, kEpsilon, nullptr);
            }),
            peak_gbs);
  PrintRate("fused_ln backward", types, rows, cols, 3 * n * t + 3 * cols * w + 2 * rows * 4.0,
            MeanMicroseconds([&] {
              return paddlemix_cuda::LayerNormBackward(x.get(), weight.get(), mean.get(), invvar.get(), dy.get(),
                                                       dx.get(), dweight.get(), dbias.get(), workspace.get(), rows,
                                                       cols, nullptr);
            }),
            peak_gbs);
  PrintRate("bias_gelu forward", TypeName<T>(), rows, cols, 2 * n * t + cols * t, MeanMicroseconds([&] {
              return paddlemix_cuda::BiasGeluForward(x.get(), gelu_bias.get(), y.get(), rows, cols, false, nullptr);
            }),
            peak_gbs);
  PrintRate("bias_gelu backward", TypeName<T>(), rows, cols, 3 * n * t + 2 * cols * t, MeanMicroseconds([&] {
              return paddlemix_cuda::BiasGeluBackward(x.get(), gelu_bias.get(), dy.get(), dx.get(),
                                                      gelu_dbias.get(), workspace.get(), rows, cols, false, nullptr);
            }),
            peak_gbs);
}

// Peak DRAM bandwidth in GB/s from the device attributes (double data rate), or 0 if they are not reported.
// cudaDeviceProp::memoryClockRate is gone in CUDA 13; the attribute remains.
double PeakGBs(int device) {
  int clock_khz = 0, bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess) {
    cudaGetLastError();
    return 0.0;
  }
  return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
}

int Usage(const char* program) {
  std::fprintf(stderr, "usage: %s [--bench] [--peak-gbs GB_PER_S]\n", program);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  bool bench = false;
  double peak_gbs = 0.0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--bench") == 0) {
      bench = true;
    } else if (std::strcmp(argv[i], "--peak-gbs") == 0 && i + 1 < argc) {
      peak_gbs = std::atof(argv[++i]);
    } else {
      return Usage(argv[0]);
    }
  }
  int device = 0;
  Check(cudaGetDevice(&device), "cudaGetDevice");
  cudaDeviceProp properties;
  Check(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
  std::printf("device %d: %s (sm_%d%d, %d SMs)\n", device, properties.name, properties.major, properties.minor,
              properties.multiProcessorCount);

  std::mt19937_64 rng(20240607);
  bool pass = true;
  for (const Shape& s : kShapes) {
    pass = CheckAllFor<float>(s, rng) && pass;
    pass = CheckAllFor<__half>(s, rng) && pass;
    pass = CheckAllFor<__nv_bfloat16>(s, rng) && pass;
  }
  std::printf("%s\n", pass ? "all cases PASS" : "some cases FAIL");

  if (bench) {
    if (peak_gbs <= 0) peak_gbs = PeakGBs(device);
    if (peak_gbs > 0) std::printf("peak memory bandwidth %.0f GB/s\n", peak_gbs);
    const int64_t shapes[][2] = {{4 * 197, 768}, {8 * 257, 1024}, {32 * 50, 3072}};
    for (const auto& shape : shapes) {
      Bench<float, float>(shape[0], shape[1], peak_gbs);
      Bench<__half, float>(shape[0], shape[1], peak_gbs);
      Bench<__nv_bfloat16, float>(shape[0], shape[1], peak_gbs);
    }
  }
  return pass ? 0 : 1;
}
