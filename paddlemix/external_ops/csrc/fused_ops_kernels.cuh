// CUDA kernels of the fused ops, forward and backward: layer norm over the last dimension (fused_ln)
// and y = gelu(x + bias) (fused_bias_gelu). Inputs are float, __half or __nv_bfloat16; all arithmetic
// is float. No Paddle here: fused_ops_cuda.cu wraps the launchers at the end of this file for Paddle
// tensors, and harness/fused_ops_harness.cu checks them against a double-precision reference.
//
// Tensors are contiguous and row-major: x is [rows, cols], per-column parameters are [cols].
// Rows are read with 16-byte vector loads when cols and every pointer allow, element by element
// otherwise. Column sums (dweight, dbias) are deterministic and atomic-free: each block of the main
// kernel adds a fixed strided set of rows into its own row of a float workspace [chunks, cols], then
// SumChunksKernel adds those rows in a fixed order.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

namespace paddlemix_cuda {

constexpr int kMaxRowThreads = 512;      // layer norm: one block per row at a time, at most this wide
constexpr int kElementwiseThreads = 256;  // bias+GELU: threads per block along the columns
constexpr int kElementwiseBlocks = 1024;  // bias+GELU forward: enough blocks to fill a large GPU
constexpr int64_t kMaxRowChunks = 512;    // workspace rows of a column sum
constexpr int64_t kMaxWorkspaceFloatsPerSum = int64_t{1} << 22;  // 16 MB: fewer chunks for very wide rows
// Layer-norm backward keeps a block's dweight/dbias sums in shared memory when they fit in this much
// (cols <= 5120), and in its workspace row otherwise. Static and dynamic shared memory together must stay
// within the 48 KB a launch gets without opting in; this leaves room for the block reduction's arrays.
constexpr int64_t kSharedColumnSumsBytes = 40 * 1024;

// Rows are split into this many strided chunks for the column sums.
inline int64_t ColumnSumChunks(int64_t rows, int64_t cols) {
  const int64_t by_workspace = std::max<int64_t>(1, kMaxWorkspaceFloatsPerSum / std::max<int64_t>(cols, 1));
  return std::min({rows, kMaxRowChunks, by_workspace});
}

// Floats of workspace that LayerNormBackward needs: partial dweight and dbias, [2, chunks, cols].
inline int64_t LayerNormBackwardWorkspaceFloats(int64_t rows, int64_t cols) {
  return 2 * ColumnSumChunks(rows, cols) * cols;
}

// Floats of workspace that BiasGeluBackward needs: partial dbias, [chunks, cols].
inline int64_t BiasGeluBackwardWorkspaceFloats(int64_t rows, int64_t cols) {
  return ColumnSumChunks(rows, cols) * cols;
}

namespace detail {

constexpr unsigned kFullWarp = 0xffffffffu;
constexpr int kSumThreadsX = 32;  // SumChunksKernel: columns per block
constexpr int kSumThreadsY = 8;   // SumChunksKernel: chunk lanes per column
constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrtTwoPi = 0.39894228040143268f;
constexpr float kQuickGeluScale = 1.702f;  // sigmoid approximation of GELU (Hendrycks & Gimpel 2016), as in CLIP

// N elements loaded or stored as one aligned vector.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> LoadPack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void StorePack(T* p, const Pack<T, N>& value) {
  *reinterpret_cast<Pack<T, N>*>(p) = value;
}

template <typename T>
__device__ __forceinline__ float ToFloat(T v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(v);
  } else {
    return v;
  }
}

template <typename T>
__device__ __forceinline__ T FromFloat(float v) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(v);
  } else {
    return v;
  }
}

// Running count, mean and sum of squared deviations: one read of a row gives its mean and variance,
// without the cancellation of sum(x^2) - n mean^2 when the mean is large. Combine is Chan et al.'s merge.
struct Welford {
  float count, mean, m2;
};

__device__ __forceinline__ void Add(Welford& s, float v) {
  s.count += 1.0f;
  const float delta = v - s.mean;
  s.mean += delta / s.count;
  s.m2 += delta * (v - s.mean);
}

__device__ __forceinline__ Welford Combine(const Welford& a, const Welford& b) {
  const float count = a.count + b.count;
  if (count == 0.0f) return a;
  const float delta = b.mean - a.mean;
  const float b_share = b.count / count;
  return {count, a.mean + delta * b_share, a.m2 + b.m2 + delta * delta * a.count * b_share};
}

__device__ __forceinline__ float2 Combine(const float2& a, const float2& b) { return {a.x + b.x, a.y + b.y}; }

__device__ __forceinline__ Welford ShuffleDown(const Welford& s, int offset) {
  return {__shfl_down_sync(kFullWarp, s.count, offset), __shfl_down_sync(kFullWarp, s.mean, offset),
          __shfl_down_sync(kFullWarp, s.m2, offset)};
}

__device__ __forceinline__ float2 ShuffleDown(const float2& s, int offset) {
  return {__shfl_down_sync(kFullWarp, s.x, offset), __shfl_down_sync(kFullWarp, s.y, offset)};
}

// Combines every thread's value in a fixed tree order and returns the result to all threads.
// blockDim.x must be a multiple of 32 (and at most 1024); S{} must be Combine's identity.
template <typename S>
__device__ S BlockAllReduce(S value) {
  __shared__ S per_warp[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int offset = 16; offset > 0; offset /= 2) value = Combine(value, ShuffleDown(value, offset));
  if (lane == 0) per_warp[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < warps ? per_warp[lane] : S{};
    for (int offset = 16; offset > 0; offset /= 2) value = Combine(value, ShuffleDown(value, offset));
    if (lane == 0) per_warp[0] = value;
  }
  __syncthreads();
  const S result = per_warp[0];
  __syncthreads();  // per_warp is reused by the next call
  return result;
}

// Thread p of a row handles packs p, p + blockDim.x, ... of V elements each.
template <typename T, typename W, int V>
__global__ void __launch_bounds__(kMaxRowThreads)
    LayerNormForwardKernel(const T* __restrict__ x, const W* __restrict__ weight, const W* __restrict__ bias,
                           T* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ invvar_out,
                           int64_t rows, int cols, float epsilon) {
  const int packs = cols / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * cols;
    Welford stats{};
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> xs = LoadPack<V>(x_row + p * V);
#pragma unroll
      for (int k = 0; k < V; ++k) Add(stats, ToFloat(xs.v[k]));
    }
    stats = BlockAllReduce(stats);
    const float mean = stats.mean;
    const float invvar = rsqrtf(stats.m2 / cols + epsilon);
    T* y_row = y + row * cols;
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {  // the row is read again, mostly from L1
      const Pack<T, V> xs = LoadPack<V>(x_row + p * V);
      const Pack<W, V> ws = LoadPack<V>(weight + p * V), bs = LoadPack<V>(bias + p * V);
      Pack<T, V> ys;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        ys.v[k] = FromFloat<T>((ToFloat(xs.v[k]) - mean) * invvar * ToFloat(ws.v[k]) + ToFloat(bs.v[k]));
      }
      StorePack(y_row + p * V, ys);
    }
    if (threadIdx.x == 0) {
      mean_out[row] = mean;
      invvar_out[row] = invvar;
    }
  }
}

// dx row by row, and this block's dweight/dbias sums over its rows (row = blockIdx.x + i * gridDim.x)
// into partial_dweight/partial_dbias[blockIdx.x], each [gridDim.x, cols]. Each thread only ever touches
// its own columns of the sums, so they need no synchronisation wherever they live.
template <typename T, typename W, int V>
__global__ void __launch_bounds__(kMaxRowThreads)
    LayerNormBackwardKernel(const T* __restrict__ x, const W* __restrict__ weight, const float* __restrict__ mean,
                            const float* __restrict__ invvar, const T* __restrict__ dy, T* __restrict__ dx,
                            float* __restrict__ partial_dweight, float* __restrict__ partial_dbias, int64_t rows,
                            int cols, bool sums_in_shared) {
  extern __shared__ __align__(32) float shared_sums[];  // [2, cols] when sums_in_shared
  float* block_dweight = partial_dweight + blockIdx.x * int64_t{cols};
  float* block_dbias = partial_dbias + blockIdx.x * int64_t{cols};
  float* dweight_sums = sums_in_shared ? shared_sums : block_dweight;
  float* dbias_sums = sums_in_shared ? shared_sums + cols : block_dbias;
  const int packs = cols / V;
  for (int p = threadIdx.x; p < packs; p += blockDim.x) {
    StorePack(dweight_sums + p * V, Pack<float, V>{});
    StorePack(dbias_sums + p * V, Pack<float, V>{});
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* x_row = x + row * cols;
    const T* dy_row = dy + row * cols;
    const float row_mean = mean[row], row_invvar = invvar[row];
    float2 sums{};  // x: sum of g = dy * weight, y: sum of g * xhat
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> xs = LoadPack<V>(x_row + p * V), dys = LoadPack<V>(dy_row + p * V);
      const Pack<W, V> ws = LoadPack<V>(weight + p * V);
      Pack<float, V> dw = LoadPack<V>(dweight_sums + p * V), db = LoadPack<V>(dbias_sums + p * V);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float xhat = (ToFloat(xs.v[k]) - row_mean) * row_invvar, d = ToFloat(dys.v[k]);
        const float g = d * ToFloat(ws.v[k]);
        sums.x += g;
        sums.y += g * xhat;
        dw.v[k] += d * xhat;
        db.v[k] += d;
      }
      StorePack(dweight_sums + p * V, dw);
      StorePack(dbias_sums + p * V, db);
    }
    sums = BlockAllReduce(sums);
    const float g_mean = sums.x / cols, gx_mean = sums.y / cols;
    T* dx_row = dx + row * cols;
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      const Pack<T, V> xs = LoadPack<V>(x_row + p * V), dys = LoadPack<V>(dy_row + p * V);
      const Pack<W, V> ws = LoadPack<V>(weight + p * V);
      Pack<T, V> dxs;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float xhat = (ToFloat(xs.v[k]) - row_mean) * row_invvar;
        const float g = ToFloat(dys.v[k]) * ToFloat(ws.v[k]);
        dxs.v[k] = FromFloat<T>(row_invvar * (g - g_mean - xhat * gx_mean));
      }
      StorePack(dx_row + p * V, dxs);
    }
  }
  if (sums_in_shared) {
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
      StorePack(block_dweight + p * V, LoadPack<V>(dweight_sums + p * V));
      StorePack(block_dbias + p * V, LoadPack<V>(dbias_sums + p * V));
    }
  }
}

// out[c] = sum over chunks of partial[chunk, c], in the same order on every run.
template <typename Out>
__global__ void __launch_bounds__(kSumThreadsX * kSumThreadsY)
    SumChunksKernel(const float* __restrict__ partial, int64_t chunks, int cols, Out* __restrict__ out) {
  __shared__ float lane_sums[kSumThreadsY][kSumThreadsX];
  const int col = blockIdx.x * kSumThreadsX + threadIdx.x;
  float sum = 0.0f;
  if (col < cols) {
    for (int64_t chunk = threadIdx.y; chunk < chunks; chunk += kSumThreadsY) sum += partial[chunk * cols + col];
  }
  lane_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.0f;
    for (int lane = 0; lane < kSumThreadsY; ++lane) total += lane_sums[lane][threadIdx.x];
    out[col] = FromFloat<Out>(total);
  }
}

__device__ __forceinline__ float Gelu(float z, bool quick) {
  if (quick) return z / (1.0f + expf(-kQuickGeluScale * z));
  return 0.5f * z * (1.0f + erff(z * kSqrtHalf));
}

__device__ __forceinline__ float GeluDerivative(float z, bool quick) {
  if (quick) {
    const float s = 1.0f / (1.0f + expf(-kQuickGeluScale * z));
    return s + kQuickGeluScale * z * s * (1.0f - s);
  }
  return 0.5f * (1.0f + erff(z * kSqrtHalf)) + z * kInvSqrtTwoPi * expf(-0.5f * z * z);
}

// Thread (blockIdx.x, threadIdx.x) owns one pack of columns and walks rows blockIdx.y, + gridDim.y, ...
template <typename T, int V>
__global__ void __launch_bounds__(kElementwiseThreads)
    BiasGeluForwardKernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y, int64_t rows,
                          int cols, bool quick) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= cols / V) return;
  const Pack<T, V> bs = LoadPack<V>(bias + p * V);
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t offset = row * cols + p * V;
    const Pack<T, V> xs = LoadPack<V>(x + offset);
    Pack<T, V> ys;
#pragma unroll
    for (int k = 0; k < V; ++k) ys.v[k] = FromFloat<T>(Gelu(ToFloat(xs.v[k]) + ToFloat(bs.v[k]), quick));
    StorePack(y + offset, ys);
  }
}

// As the forward, and this thread's dbias sum over its rows into partial_dbias[blockIdx.y] ([gridDim.y, cols]).
template <typename T, int V>
__global__ void __launch_bounds__(kElementwiseThreads)
    BiasGeluBackwardKernel(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ dy,
                           T* __restrict__ dx, float* __restrict__ partial_dbias, int64_t rows, int cols,
                           bool quick) {
  const int p = blockIdx.x * blockDim.x + threadIdx.x;
  if (p >= cols / V) return;
  const Pack<T, V> bs = LoadPack<V>(bias + p * V);
  Pack<float, V> dbias{};
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t offset = row * cols + p * V;
    const Pack<T, V> xs = LoadPack<V>(x + offset), dys = LoadPack<V>(dy + offset);
    Pack<T, V> dxs;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float d = ToFloat(dys.v[k]) * GeluDerivative(ToFloat(xs.v[k]) + ToFloat(bs.v[k]), quick);
      dxs.v[k] = FromFloat<T>(d);
      dbias.v[k] += d;
    }
    StorePack(dx + offset, dxs);
  }
  StorePack(partial_dbias + blockIdx.y * int64_t{cols} + p * V, dbias);
}

inline bool Aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Whether rows can be read as packs of 16 / sizeof(T) elements: cols divides into them and every pointer
// (to T, to float weights or workspace) is aligned for a pack of its own element type.
template <typename T, typename... Pointers>
bool Vectorisable(int64_t cols, const Pointers*... pointers) {
  constexpr int kWidth = 16 / sizeof(T);
  return cols % kWidth == 0 && (Aligned(pointers, kWidth * sizeof(Pointers)) && ...);
}

// One thread per pack, in whole warps, at least one warp and at most `most` threads.
inline int ThreadsForPacks(int64_t packs, int most) {
  return static_cast<int>(std::clamp<int64_t>((packs + 31) / 32 * 32, 32, most));
}

template <typename Out>
cudaError_t SumChunks(const float* partial, int64_t chunks, int64_t cols, Out* out, cudaStream_t stream) {
  const dim3 block(kSumThreadsX, kSumThreadsY);
  const unsigned blocks = static_cast<unsigned>((cols + kSumThreadsX - 1) / kSumThreadsX);
  SumChunksKernel<Out><<<blocks, block, 0, stream>>>(partial, chunks, static_cast<int>(cols), out);
  return cudaGetLastError();
}

template <typename T, typename W, int V>
cudaError_t LaunchLayerNormForward(const T* x, const W* weight, const W* bias, T* y, float* mean, float* invvar,
                                   int64_t rows, int64_t cols, float epsilon, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(rows, INT_MAX));
  const int threads = ThreadsForPacks(cols / V, kMaxRowThreads);
  LayerNormForwardKernel<T, W, V><<<blocks, threads, 0, stream>>>(
      x, weight, bias, y, mean, invvar, rows, static_cast<int>(cols), epsilon);
  return cudaGetLastError();
}

template <typename T, typename W, int V>
cudaError_t LaunchLayerNormBackward(const T* x, const W* weight, const float* mean, const float* invvar, const T* dy,
                                    T* dx, float* partial_dweight, float* partial_dbias, int64_t chunks,
                                    int64_t rows, int64_t cols, cudaStream_t stream) {
  const int64_t sums_bytes = 2 * cols * static_cast<int64_t>(sizeof(float));
  const bool sums_in_shared = sums_bytes <= kSharedColumnSumsBytes;
  const size_t shared_bytes = sums_in_shared ? static_cast<size_t>(sums_bytes) : 0;
  const int threads = ThreadsForPacks(cols / V, kMaxRowThreads);
  LayerNormBackwardKernel<T, W, V><<<static_cast<unsigned>(chunks), threads, shared_bytes, stream>>>(
      x, weight, mean, invvar, dy, dx, partial_dweight, partial_dbias, rows, static_cast<int>(cols), sums_in_shared);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t LaunchBiasGeluForward(const T* x, const T* bias, T* y, int64_t rows, int64_t cols, bool quick,
                                  cudaStream_t stream) {
  const int threads = ThreadsForPacks(cols / V, kElementwiseThreads);
  const int64_t column_blocks = (cols / V + threads - 1) / threads;
  const int64_t row_blocks = std::min<int64_t>({rows, 65535, std::max<int64_t>(1, kElementwiseBlocks / column_blocks)});
  const dim3 grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(row_blocks));
  BiasGeluForwardKernel<T, V><<<grid, threads, 0, stream>>>(x, bias, y, rows, static_cast<int>(cols), quick);
  return cudaGetLastError();
}

template <typename T, int V>
cudaError_t LaunchBiasGeluBackward(const T* x, const T* bias, const T* dy, T* dx, float* partial_dbias,
                                   int64_t chunks, int64_t rows, int64_t cols, bool quick, cudaStream_t stream) {
  const int threads = ThreadsForPacks(cols / V, kElementwiseThreads);
  const dim3 grid(static_cast<unsigned>((cols / V + threads - 1) / threads), static_cast<unsigned>(chunks));
  BiasGeluBackwardKernel<T, V><<<grid, threads, 0, stream>>>(x, bias, dy, dx, partial_dbias, rows,
                                                             static_cast<int>(cols), quick);
  return cudaGetLastError();
}

}  // namespace detail

// y = (x - mean) * invvar * weight + bias over each row of x [rows, cols], with the row statistics mean and
// invvar = 1 / sqrt(biased variance + epsilon) ([rows], float). W is T or float (AMP keeps LN weights float).
template <typename T, typename W>
cudaError_t LayerNormForward(const T* x, const W* weight, const W* bias, T* y, float* mean, float* invvar,
                             int64_t rows, int64_t cols, float epsilon, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || cols > INT_MAX) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  constexpr int kWidth = 16 / sizeof(T);
  if (detail::Vectorisable<T>(cols, x, y, weight, bias)) {
    return detail::LaunchLayerNormForward<T, W, kWidth>(x, weight, bias, y, mean, invvar, rows, cols, epsilon, stream);
  }
  return detail::LaunchLayerNormForward<T, W, 1>(x, weight, bias, y, mean, invvar, rows, cols, epsilon, stream);
}

// dx [rows, cols], and dweight, dbias [cols] summed over all rows (zeros when rows is 0), from the forward's
// x, weight and row statistics. workspace: LayerNormBackwardWorkspaceFloats(rows, cols) floats on the device.
template <typename T, typename W>
cudaError_t LayerNormBackward(const T* x, const W* weight, const float* mean, const float* invvar, const T* dy,
                              T* dx, W* dweight, W* dbias, float* workspace, int64_t rows, int64_t cols,
                              cudaStream_t stream) {
  if (rows < 0 || cols < 0 || cols > INT_MAX) return cudaErrorInvalidValue;
  if (cols == 0) return cudaSuccess;
  const int64_t chunks = ColumnSumChunks(rows, cols);
  float* partial_dweight = workspace;
  float* partial_dbias = workspace + chunks * cols;
  if (rows > 0) {
    constexpr int kWidth = 16 / sizeof(T);
    const cudaError_t launched =
        detail::Vectorisable<T>(cols, x, dy, dx, weight, workspace)
            ? detail::LaunchLayerNormBackward<T, W, kWidth>(x, weight, mean, invvar, dy, dx, partial_dweight,
                                                            partial_dbias, chunks, rows, cols, stream)
            : detail::LaunchLayerNormBackward<T, W, 1>(x, weight, mean, invvar, dy, dx, partial_dweight,
                                                       partial_dbias, chunks, rows, cols, stream);
    if (launched != cudaSuccess) return launched;
  }
  const cudaError_t summed = detail::SumChunks(partial_dweight, chunks, cols, dweight, stream);
  if (summed != cudaSuccess) return summed;
  return detail::SumChunks(partial_dbias, chunks, cols, dbias, stream);
}

// y = gelu(x + bias) for x [rows, cols], bias [cols]: exact erf GELU, or z * sigmoid(1.702 z) when quick.
template <typename T>
cudaError_t BiasGeluForward(const T* x, const T* bias, T* y, int64_t rows, int64_t cols, bool quick,
                            cudaStream_t stream) {
  if (rows < 0 || cols < 0 || cols > INT_MAX) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  constexpr int kWidth = 16 / sizeof(T);
  if (detail::Vectorisable<T>(cols, x, bias, y)) {
    return detail::LaunchBiasGeluForward<T, kWidth>(x, bias, y, rows, cols, quick, stream);
  }
  return detail::LaunchBiasGeluForward<T, 1>(x, bias, y, rows, cols, quick, stream);
}

// dx = dy * gelu'(x + bias) [rows, cols] and dbias = dx summed over rows [cols] (zeros when rows is 0;
// summed in float before dx is rounded to T). workspace: BiasGeluBackwardWorkspaceFloats(rows, cols) floats.
template <typename T>
cudaError_t BiasGeluBackward(const T* x, const T* bias, const T* dy, T* dx, T* dbias, float* workspace,
                             int64_t rows, int64_t cols, bool quick, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || cols > INT_MAX) return cudaErrorInvalidValue;
  if (cols == 0) return cudaSuccess;
  const int64_t chunks = ColumnSumChunks(rows, cols);
  if (rows > 0) {
    constexpr int kWidth = 16 / sizeof(T);
    const cudaError_t launched =
        detail::Vectorisable<T>(cols, x, bias, dy, dx, workspace)
            ? detail::LaunchBiasGeluBackward<T, kWidth>(x, bias, dy, dx, workspace, chunks, rows, cols, quick, stream)
            : detail::LaunchBiasGeluBackward<T, 1>(x, bias, dy, dx, workspace, chunks, rows, cols, quick, stream);
    if (launched != cudaSuccess) return launched;
  }
  return detail::SumChunks(workspace, chunks, cols, dbias, stream);
}

}  // namespace paddlemix_cuda
