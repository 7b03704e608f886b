// cpu_attention: O = softmax(scale Q K^T + mask) V over token-major [batch, tokens, heads, head_dim] float32
// tensors (Paddle's layout), forward and backward, on CPU. The mask is additive (0 / -inf entries; finite
// entries work too) and broadcast over heads: [queries, keys], shared by the batch rows (a causal mask the
// main case), or [batch, queries, keys], one per batch row (a text tower that masks each caption's padding),
// or an empty [0] tensor for none. Outputs: O, and lse = log(sum(exp(scores))) [batch, heads, queries]
// (float32), the only thing the backward needs besides Q, K, V: the probabilities [batch, heads, queries,
// keys] are never stored.
//
// Algorithm. OpenMP threads take (batch, head) pairs. Each gathers its head's rows into padded, aligned
// local buffers (K^T and V for the forward; K, K^T, V^T and blocks of Q, dO for the backward; the
// transposes a vector-wide square block at a time in registers), so that every product is C = A B with
// B's rows whole, aligned vectors. One register-blocked kernel does them all: a tile of 4 rows x up to 3 vectors of C
// stays in 12 registers while A's elements are broadcast and B's row is held in registers; it is written
// with GCC's vector types, so it compiles to broadcast + FMA at the build's vector width (16 floats with
// AVX-512). A is read through strides, so P^T dO and dS^T Q need no transposes.
// Forward, per tile of 4 queries: S = (scale Q) K^T, the softmax of S + mask over the tile in L1,
// O = P V, lse = max + log(sum). Backward, per block of up to 128 queries, flash-attention style:
// P = exp(S + mask - lse) recomputed, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = scale dS K; then
// dV += P^T dO and dK += dS^T (scale Q) over the block.
// Masked keys are skipped: a query's keys end at its last finite mask entry and a key's queries start at
// the first query that sees it (per batch row where the mask is), so a causal mask costs about half the
// products of none, and a caption's padded keys at the end of its row cost nothing.
// A query that sees no key (mask row all -inf, or no keys at all) gets output 0, lse +inf and zero
// gradients, where the einsum formula gives NaN.
//
// Measured on a 2-core AMD EPYC (lscpu: AVX2, no AVX-512) with 2 threads, medians in ms, forward / forward + backward:
//                                      einsum path     this op        torch 2.13 SDPA
//   ViT-B-32  (32, 50, 50, 12 heads)   14.5 / 43.1     5.0 / 15.7     6.9 / 21.4
//   text      (32, 77, 77, 8, causal)  24.6 / 60.1     4.5 / 13.5     9.2 / 27.8
//   ViT-B-16  (8, 197, 197, 12)        38.9 / 131.4   10.5 / 31.3    12.4 / 42.6
// (Shared machine: single runs vary by up to 30%.) The products alone run at 60-90 GFLOPS per core (peak
// about 100), the whole op at 50-55; oneDNN's batched matmul on the strided layout (gemm:jit:f32) reached
// 48-70 GFLOPS per core for the same products, unfused: no gain. Memory kept for the backward per layer:
// lse instead of the probabilities (ViT-B-32 at batch 32: 75 KiB instead of 3.7 MiB; the einsum path
// also keeps scale Q), so the graph holds Q, K, V and lse, as torch's SDPA does.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "activation.h"
#include "cpu_threads.h"
#include "paddle/extension.h"

namespace {

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // floats per vector register
#else
constexpr int kLanes = 8;
#endif
typedef float FloatVector __attribute__((vector_size(kLanes * sizeof(float))));

constexpr int kTileRows = 4;  // rows of C per register tile of up to 3 vectors: 12 of AVX2's 16 registers
constexpr int64_t kQueryBlock = 128;  // backward: queries per block (a multiple of kTileRows)
constexpr float kExpUnderflow = -87.0f;  // exp below it is taken as 0 (Exp clamps there)
constexpr float kInfinity = std::numeric_limits<float>::infinity();

int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Whole vectors at vector-aligned addresses.
inline FloatVector Load(const float* p) { return *reinterpret_cast<const FloatVector*>(p); }
inline void Store(float* p, FloatVector v) { *reinterpret_cast<FloatVector*>(p) = v; }

// Operand A of a product C = A B: element (i, k) at data[i * row_stride + k * column_stride].
struct StridedMatrix {
  const float* data;
  int64_t row_stride, column_stride;
};

// Operand B (const float) or C (float) of a product: rows of whole vectors, aligned, row_stride apart.
template <typename T>
struct VectorRows {
  T* data;
  int64_t row_stride;
};

// Keeps v in a register: GCC would otherwise fold each use of a row of B into its FMA as a memory operand,
// 12 vector loads per 12 FMAs instead of 3, and the loads, not the FMAs, would bound the kernel (measured
// on Zen 3: 60-70 -> 76-92 GFLOPS for one core's products of attention's sizes).
inline void PinInRegister(FloatVector& v) {
#if defined(__x86_64__)
  asm("" : "+v"(v));
#endif
}

// C[kRows, kVectors vectors] (kAccumulate: +)= sum over k in [k_begin, k_end) of A(i, k) B[k, :].
template <int kRows, int kVectors, bool kAccumulate>
inline void ProductTile(StridedMatrix a, const float* b, int64_t b_stride, float* c, int64_t c_stride,
                        int64_t k_begin, int64_t k_end) {
  FloatVector acc[kRows][kVectors];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v)
      acc[r][v] = kAccumulate ? Load(c + r * c_stride + v * kLanes) : FloatVector{};
  for (int64_t k = k_begin; k < k_end; ++k) {
    FloatVector b_row[kVectors];
    for (int v = 0; v < kVectors; ++v) {
      b_row[v] = Load(b + k * b_stride + v * kLanes);
      PinInRegister(b_row[v]);
    }
    for (int r = 0; r < kRows; ++r) {
      const float a_element = a.data[r * a.row_stride + k * a.column_stride];
      for (int v = 0; v < kVectors; ++v) acc[r][v] += a_element * b_row[v];
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) Store(c + r * c_stride + v * kLanes, acc[r][v]);
}

// C[kRows, columns] (+)= A[kRows, k_begin:k_end] B[k_begin:k_end, columns], columns a multiple of kLanes:
// tiles of 3 vectors, then of 2 (a row of 7 vectors is 3 + 2 + 2): a 1-vector tile, whose 4 accumulators
// cannot hide the FMA latency, only where a row has a single vector.
template <int kRows, bool kAccumulate>
void ProductRows(StridedMatrix a, VectorRows<const float> b, VectorRows<float> c, int64_t columns,
                 int64_t k_begin, int64_t k_end) {
  int64_t j = 0, vectors_left = columns / kLanes;
  for (; vectors_left >= 3 && vectors_left != 4; vectors_left -= 3, j += 3 * kLanes)
    ProductTile<kRows, 3, kAccumulate>(a, b.data + j, b.row_stride, c.data + j, c.row_stride, k_begin, k_end);
  for (; vectors_left >= 2; vectors_left -= 2, j += 2 * kLanes)
    ProductTile<kRows, 2, kAccumulate>(a, b.data + j, b.row_stride, c.data + j, c.row_stride, k_begin, k_end);
  if (vectors_left == 1)
    ProductTile<kRows, 1, kAccumulate>(a, b.data + j, b.row_stride, c.data + j, c.row_stride, k_begin, k_end);
}

// The same for 1 to kTileRows rows of C.
template <bool kAccumulate>
void Product(int rows, StridedMatrix a, VectorRows<const float> b, VectorRows<float> c, int64_t columns,
             int64_t k_begin, int64_t k_end) {
  static_assert(kTileRows == 4, "one case per tile height");
  switch (rows) {
    case 4: return ProductRows<4, kAccumulate>(a, b, c, columns, k_begin, k_end);
    case 3: return ProductRows<3, kAccumulate>(a, b, c, columns, k_begin, k_end);
    case 2: return ProductRows<2, kAccumulate>(a, b, c, columns, k_begin, k_end);
    case 1: return ProductRows<1, kAccumulate>(a, b, c, columns, k_begin, k_end);
  }
}

float HorizontalSum(FloatVector v) {
  float total = 0.0f;
  for (int i = 0; i < kLanes; ++i) total += v[i];
  return total;
}

float HorizontalMax(FloatVector v) {
  float best = v[0];
  for (int i = 1; i < kLanes; ++i) best = std::max(best, v[i]);
  return best;
}

// p[j] = exp(s[j] + mask[j] - shift) for j < count (a multiple of kLanes), 0 where that underflows or
// is masked (-inf). A plain float loop: GCC vectorises Exp.
void ShiftedExp(const float* s, const float* mask, float shift, float* p, int64_t count) {
  for (int64_t j = 0; j < count; ++j) {
    const float x = s[j] + mask[j] - shift;
    p[j] = x < kExpUnderflow ? 0.0f : paddlemix_cpu::Exp(x);
  }
}

void Zero(float* p, int64_t count) {
  if (count > 0) std::memset(p, 0, count * sizeof(float));
}

// Float buffer aligned to a vector (std::vector of vectors: C++17's aligned new), zero-filled.
class Buffer {
 public:
  explicit Buffer(int64_t floats) : vectors_(RoundUp(floats, kLanes) / kLanes) {}
  float* data() { return reinterpret_cast<float*>(vectors_.data()); }
  const float* data() const { return reinterpret_cast<const float*>(vectors_.data()); }

 private:
  std::vector<FloatVector> vectors_;
};

// Sizes of one call: queries Tq, keys Tk, their head_dim padded to vectors.
struct Shape {
  int64_t batch, queries, keys, heads, head_dim;
  int64_t keys_padded, head_dim_padded;
};

// Rows of head_dim floats of a contiguous [batch, tokens, heads, head_dim] tensor.
template <typename T>
struct TokenMajor {
  T* data;
  int64_t tokens, heads, head_dim;
  T* Row(int64_t b, int64_t t, int64_t h) const { return data + ((b * tokens + t) * heads + h) * head_dim; }
};

template <typename T>
TokenMajor<T> View(T* data, const std::vector<int64_t>& shape) {
  return {data, shape[1], shape[2], shape[3]};
}

// The mask rows of each batch row, and which keys each query sees (read-only, shared by the threads). One
// [queries, keys] mask serves every batch row, or each batch row has its own (a text tower's padding).
class KeyRange {
 public:
  KeyRange(const paddle::Tensor& mask, const Shape& shape)
      : masks_(mask.shape().size() == 3 ? shape.batch : mask.shape().size() == 2 ? 1 : 0),
        queries_(shape.queries),
        keys_(shape.keys),
        keys_padded_(shape.keys_padded),
        padded_mask_(std::max<int64_t>(1, masks_ * shape.queries) * shape.keys_padded),
        query_keys_(std::max<int64_t>(1, masks_) * shape.queries, shape.keys),
        first_query_(std::max<int64_t>(1, masks_) * shape.keys, 0) {
    if (masks_ == 0)  // one row of zeros for every query, -inf past the keys
      std::fill(padded_mask_.data() + keys_, padded_mask_.data() + keys_padded_, -kInfinity);
    const float* source = masks_ > 0 ? mask.data<float>() : nullptr;
    for (int64_t row = 0; row < masks_ * queries_; ++row) {
      const float* entries = source + row * keys_;
      float* padded = padded_mask_.data() + row * keys_padded_;
      std::memcpy(padded, entries, keys_ * sizeof(float));
      std::fill(padded + keys_, padded + keys_padded_, -kInfinity);
      int64_t end = keys_;
      while (end > 0 && entries[end - 1] == -kInfinity) --end;
      query_keys_[row] = end;
    }
    for (int64_t m = 0; m < masks_; ++m) {
      int64_t* first_query = first_query_.data() + m * keys_;
      std::fill(first_query, first_query + keys_, queries_);
      for (int64_t i = queries_ - 1; i >= 0; --i)
        for (int64_t k = 0; k < query_keys_[m * queries_ + i]; ++k) first_query[k] = i;
    }
  }

  // The mask row of query i of batch row b, keys_padded long (-inf past the keys; zeros without a mask).
  const float* MaskRow(int64_t b, int64_t i) const {
    return padded_mask_.data() + (masks_ > 0 ? (MaskOf(b) * queries_ + i) * keys_padded_ : 0);
  }

  // Keys that queries [first, first + count) of batch row b may see: [0, result); all later ones are masked.
  int64_t KeysOf(int64_t b, int64_t first, int64_t count) const {
    const auto begin = query_keys_.begin() + MaskOf(b) * queries_ + first;
    return *std::max_element(begin, begin + count);
  }

  // The first query of batch row b that may see one of keys [first, first + count).
  int64_t FirstQueryOf(int64_t b, int64_t first, int64_t count) const {
    const auto begin = first_query_.begin() + MaskOf(b) * keys_ + first;
    return *std::min_element(begin, begin + count);
  }

 private:
  int64_t MaskOf(int64_t b) const { return masks_ > 1 ? b : 0; }

  int64_t masks_;  // 0 (no mask), 1 (shared by the batch rows) or one per batch row
  int64_t queries_, keys_, keys_padded_;
  Buffer padded_mask_;
  std::vector<int64_t> query_keys_;
  std::vector<int64_t> first_query_;
};

int TeamSize(int threads, const Shape& shape) {
  const int64_t allowed = paddlemix_cpu::AllowedThreads(threads);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(allowed, shape.batch * shape.heads)));
}

// rows[t][0:head_dim] of head (b, h) of x, times `factor`, into buffer rows of `stride` floats.
void GatherRows(const TokenMajor<const float>& x, int64_t b, int64_t h, int64_t first, int64_t count,
                int64_t head_dim, float factor, float* buffer, int64_t stride) {
  for (int64_t t = 0; t < count; ++t) {
    const float* source = x.Row(b, first + t, h);
    float* row = buffer + t * stride;
    for (int64_t d = 0; d < head_dim; ++d) row[d] = factor * source[d];
  }
}

// Transposes a kLanes x kLanes block held as kLanes row vectors: log2(kLanes) rounds of interleaving
// row i with row i + kLanes / 2 (the perfect shuffle) turn rows into columns.
void TransposeBlock(FloatVector (&rows)[kLanes]) {
  typedef int32_t IndexVector __attribute__((vector_size(kLanes * sizeof(int32_t))));
  IndexVector low, high;  // interleave the first halves, the second halves of two vectors
  for (int i = 0; i < kLanes; ++i) {
    low[i] = i / 2 + (i % 2) * kLanes;
    high[i] = kLanes / 2 + low[i];
  }
  for (int width = 1; width < kLanes; width *= 2) {
    FloatVector next[kLanes];
    for (int i = 0; i < kLanes / 2; ++i) {
      next[2 * i] = __builtin_shuffle(rows[i], rows[i + kLanes / 2], low);
      next[2 * i + 1] = __builtin_shuffle(rows[i], rows[i + kLanes / 2], high);
    }
    std::copy(next, next + kLanes, rows);
  }
}

// columns[d][t] = row_of(t)[d] for t < count, d < dim: whole kLanes x kLanes blocks in registers, the
// edges element by element.
template <typename RowOf>
void Transpose(RowOf row_of, int64_t count, int64_t dim, float* columns, int64_t column_stride) {
  const int64_t whole_count = count / kLanes * kLanes, whole_dim = dim / kLanes * kLanes;
  for (int64_t t = 0; t < whole_count; t += kLanes)
    for (int64_t d = 0; d < whole_dim; d += kLanes) {
      FloatVector block[kLanes];
      for (int i = 0; i < kLanes; ++i) std::memcpy(&block[i], row_of(t + i) + d, sizeof(FloatVector));
      TransposeBlock(block);
      for (int i = 0; i < kLanes; ++i)
        std::memcpy(columns + (d + i) * column_stride + t, &block[i], sizeof(FloatVector));
    }
  for (int64_t t = 0; t < count; ++t)
    for (int64_t d = t < whole_count ? whole_dim : 0; d < dim; ++d) columns[d * column_stride + t] = row_of(t)[d];
}

// y[b, first + t, h, :] = (row_factors[t], else factor) * buffer rows[t][0:head_dim].
void ScatterRows(const float* buffer, int64_t stride, int64_t b, int64_t h, int64_t first, int64_t count,
                 int64_t head_dim, const float* row_factors, float factor, const TokenMajor<float>& y) {
  for (int64_t t = 0; t < count; ++t) {
    const float* row = buffer + t * stride;
    float* target = y.Row(b, first + t, h);
    const float f = row_factors != nullptr ? row_factors[t] : factor;
    for (int64_t d = 0; d < head_dim; ++d) target[d] = f * row[d];
  }
}

// Keys [0, limit) of a tile of queries, the limit rounded up to whole vectors (past the keys the mask
// row is -inf).
int64_t VectorLimit(int64_t keys, const Shape& shape) {
  return std::min(shape.keys_padded, RoundUp(keys, kLanes));
}

// One row of exp(S + mask - max) in place over [0, limit); returns 1 / its sum and stores lse = max + log(sum).
// A row with every key masked gets 0s, 1 / sum = 0 and lse = +inf (the backward then gives it 0s too).
float SoftmaxRow(float* s, const float* mask, int64_t limit, float* lse) {
  FloatVector running_max = FloatVector{} - kInfinity;
  for (int64_t j = 0; j < limit; j += kLanes) {
    const FloatVector x = Load(s + j) + Load(mask + j);
    running_max = x > running_max ? x : running_max;
  }
  const float row_max = HorizontalMax(running_max);
  if (row_max == -kInfinity) {
    Zero(s, limit);
    *lse = kInfinity;
    return 0.0f;
  }
  ShiftedExp(s, mask, row_max, s, limit);
  FloatVector sums{};
  for (int64_t j = 0; j < limit; j += kLanes) sums += Load(s + j);
  const float sum = HorizontalSum(sums);
  *lse = row_max + std::log(sum);
  return 1.0f / sum;
}

void AttentionForwardKernel(const TokenMajor<const float>& q, const TokenMajor<const float>& k,
                            const TokenMajor<const float>& v, const KeyRange& range, const Shape& shape, float scale,
                            int threads, const TokenMajor<float>& out, float* lse) {
  const int64_t dim = shape.head_dim, dim_padded = shape.head_dim_padded, keys_padded = shape.keys_padded;
#pragma omp parallel num_threads(TeamSize(threads, shape))
  {
    Buffer keys_transposed(dim * keys_padded), values(shape.keys * dim_padded);
    Buffer queries(kTileRows * dim_padded), scores(kTileRows * keys_padded), output(kTileRows * dim_padded);
    float inverse_sums[kTileRows];
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < shape.batch * shape.heads; ++pair) {
      const int64_t b = pair / shape.heads, h = pair % shape.heads;
      Transpose([&](int64_t t) { return k.Row(b, t, h); }, shape.keys, dim, keys_transposed.data(), keys_padded);
      GatherRows(v, b, h, 0, shape.keys, dim, 1.0f, values.data(), dim_padded);
      float* pair_lse = lse + pair * shape.queries;
      for (int64_t first = 0; first < shape.queries; first += kTileRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kTileRows, shape.queries - first));
        const int64_t seen = range.KeysOf(b, first, rows), limit = VectorLimit(seen, shape);
        GatherRows(q, b, h, first, rows, dim, scale, queries.data(), dim_padded);
        Product<false>(rows, {queries.data(), dim_padded, 1}, {keys_transposed.data(), keys_padded},
                       {scores.data(), keys_padded}, limit, 0, dim);
        for (int r = 0; r < rows; ++r)
          inverse_sums[r] = SoftmaxRow(scores.data() + r * keys_padded, range.MaskRow(b, first + r), limit,
                                       pair_lse + first + r);
        Product<false>(rows, {scores.data(), keys_padded, 1}, {values.data(), dim_padded},
                       {output.data(), dim_padded}, dim_padded, 0, std::min(seen, shape.keys));
        ScatterRows(output.data(), dim_padded, b, h, first, rows, dim, inverse_sums, 1.0f, out);
      }
    }
  }
}

void AttentionBackwardKernel(const TokenMajor<const float>& q, const TokenMajor<const float>& k,
                             const TokenMajor<const float>& v, const KeyRange& range, const float* lse,
                             const TokenMajor<const float>& d_out, const Shape& shape, float scale, int threads,
                             const TokenMajor<float>& d_q, const TokenMajor<float>& d_k,
                             const TokenMajor<float>& d_v) {
  const int64_t dim = shape.head_dim, dim_padded = shape.head_dim_padded, keys_padded = shape.keys_padded;
  const int64_t block = std::min(kQueryBlock, RoundUp(shape.queries, kTileRows));
#pragma omp parallel num_threads(TeamSize(threads, shape))
  {
    Buffer keys(shape.keys * dim_padded), keys_transposed(dim * keys_padded), values_transposed(dim * keys_padded);
    Buffer d_keys(shape.keys * dim_padded), d_values(shape.keys * dim_padded);
    Buffer queries(block * dim_padded), d_outputs(block * dim_padded), d_queries(kTileRows * dim_padded);
    Buffer probabilities(block * keys_padded), d_scores(block * keys_padded);
#pragma omp for schedule(static)
    for (int64_t pair = 0; pair < shape.batch * shape.heads; ++pair) {
      const int64_t b = pair / shape.heads, h = pair % shape.heads;
      GatherRows(k, b, h, 0, shape.keys, dim, 1.0f, keys.data(), dim_padded);
      Transpose([&](int64_t t) { return keys.data() + t * dim_padded; }, shape.keys, dim, keys_transposed.data(),
                keys_padded);
      Transpose([&](int64_t t) { return v.Row(b, t, h); }, shape.keys, dim, values_transposed.data(), keys_padded);
      Zero(d_keys.data(), shape.keys * dim_padded);
      Zero(d_values.data(), shape.keys * dim_padded);
      const float* pair_lse = lse + pair * shape.queries;
      for (int64_t first = 0; first < shape.queries; first += block) {
        const int64_t count = std::min(block, shape.queries - first);
        GatherRows(q, b, h, first, count, dim, scale, queries.data(), dim_padded);
        GatherRows(d_out, b, h, first, count, dim, 1.0f, d_outputs.data(), dim_padded);
        // per tile of queries: P (recomputed), dS, dQ; P and dS rows are kept for the block's dK and dV
        for (int64_t tile = 0; tile < count; tile += kTileRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kTileRows, count - tile));
          const int64_t seen = range.KeysOf(b, first + tile, rows), limit = VectorLimit(seen, shape);
          float* p = probabilities.data() + tile * keys_padded;
          float* ds = d_scores.data() + tile * keys_padded;
          Product<false>(rows, {queries.data() + tile * dim_padded, dim_padded, 1},
                         {keys_transposed.data(), keys_padded}, {p, keys_padded}, limit, 0, dim);
          Product<false>(rows, {d_outputs.data() + tile * dim_padded, dim_padded, 1},
                         {values_transposed.data(), keys_padded}, {ds, keys_padded}, limit, 0, dim);
          for (int r = 0; r < rows; ++r) {
            float* p_row = p + r * keys_padded;
            float* ds_row = ds + r * keys_padded;  // dP on entry
            ShiftedExp(p_row, range.MaskRow(b, first + tile + r), pair_lse[first + tile + r], p_row, limit);
            FloatVector products{};
            for (int64_t j = 0; j < limit; j += kLanes) products += Load(p_row + j) * Load(ds_row + j);
            const FloatVector row_dot = FloatVector{} + HorizontalSum(products);
            for (int64_t j = 0; j < limit; j += kLanes)
              Store(ds_row + j, Load(p_row + j) * (Load(ds_row + j) - row_dot));
            Zero(p_row + limit, keys_padded - limit);
            Zero(ds_row + limit, keys_padded - limit);
          }
          Product<false>(rows, {ds, keys_padded, 1}, {keys.data(), dim_padded}, {d_queries.data(), dim_padded},
                         dim_padded, 0, std::min(seen, shape.keys));
          ScatterRows(d_queries.data(), dim_padded, b, h, first + tile, rows, dim, nullptr, scale, d_q);
        }
        // dV += P^T dO and dK += dS^T (scale Q), over the block's queries that see each tile of keys
        for (int64_t key = 0; key < shape.keys; key += kTileRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kTileRows, shape.keys - key));
          const int64_t begin = std::max<int64_t>(0, range.FirstQueryOf(b, key, rows) - first);
          if (begin >= count) continue;
          Product<true>(rows, {probabilities.data() + key, 1, keys_padded}, {d_outputs.data(), dim_padded},
                        {d_values.data() + key * dim_padded, dim_padded}, dim_padded, begin, count);
          Product<true>(rows, {d_scores.data() + key, 1, keys_padded}, {queries.data(), dim_padded},
                        {d_keys.data() + key * dim_padded, dim_padded}, dim_padded, begin, count);
        }
      }
      ScatterRows(d_keys.data(), dim_padded, b, h, 0, shape.keys, dim, nullptr, 1.0f, d_k);
      ScatterRows(d_values.data(), dim_padded, b, h, 0, shape.keys, dim, nullptr, 1.0f, d_v);
    }
  }
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) text += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

void CheckTokenMajor(const paddle::Tensor& t, const char* name) {
  PD_CHECK(t.is_cpu(), "cpu_attention: ", name, " must be a CPU tensor");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, "cpu_attention: ", name, " must be float32, got ", t.dtype());
  PD_CHECK(t.shape().size() == 4, "cpu_attention: ", name, " must be [batch, tokens, heads, head_dim], got rank ",
           t.shape().size());
  PD_CHECK(t.is_contiguous(), "cpu_attention: ", name, " must be contiguous");
}

Shape CheckInputs(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v,
                  const paddle::Tensor& mask, int threads) {
  CheckTokenMajor(q, "Q");
  CheckTokenMajor(k, "K");
  CheckTokenMajor(v, "V");
  const auto& qs = q.shape();
  const auto& ks = k.shape();
  PD_CHECK(k.shape() == v.shape(), "cpu_attention: K and V must have the same shape [batch, keys, heads, head_dim]");
  PD_CHECK(ks[0] == qs[0] && ks[2] == qs[2] && ks[3] == qs[3], "cpu_attention: K must be [", qs[0], ", keys, ",
           qs[2], ", ", qs[3], "] (Q's batch, heads and head_dim)");
  PD_CHECK(mask.is_cpu() && mask.dtype() == paddle::DataType::FLOAT32 && mask.is_contiguous(),
           "cpu_attention: Mask must be a contiguous float32 CPU tensor");
  const auto& ms = mask.shape();
  PD_CHECK(ms == std::vector<int64_t>{0} || ms == std::vector<int64_t>({qs[1], ks[1]}) ||
               ms == std::vector<int64_t>({qs[0], qs[1], ks[1]}),
           "cpu_attention: Mask must be [", qs[1], ", ", ks[1], "] ([queries, keys], shared by the batch rows) or [",
           qs[0], ", ", qs[1], ", ", ks[1], "] ([batch, queries, keys], one per batch row), additive, or an empty [0] "
           "tensor for none; got ", ShapeText(ms));
  PD_CHECK(threads >= 1, "cpu_attention: threads must be >= 1, got ", threads);
  return {qs[0], qs[1], ks[1], qs[2], qs[3], RoundUp(ks[1], kLanes), RoundUp(qs[3], kLanes)};
}

}  // namespace

std::vector<paddle::Tensor> AttentionForward(const paddle::Tensor& q, const paddle::Tensor& k,
                                             const paddle::Tensor& v, const paddle::Tensor& mask, float scale,
                                             int threads) {
  const Shape shape = CheckInputs(q, k, v, mask, threads);
  auto out = paddle::empty(q.shape(), paddle::DataType::FLOAT32, q.place());
  auto lse = paddle::empty({shape.batch, shape.heads, shape.queries}, paddle::DataType::FLOAT32, q.place());
  KeyRange range(mask, shape);
  AttentionForwardKernel(View(q.data<float>(), q.shape()), View(k.data<float>(), k.shape()),
                         View(v.data<float>(), v.shape()), range, shape, scale, threads,
                         View(out.data<float>(), out.shape()), lse.data<float>());
  return {out, lse};
}

std::vector<paddle::Tensor> AttentionBackward(const paddle::Tensor& q, const paddle::Tensor& k,
                                              const paddle::Tensor& v, const paddle::Tensor& mask,
                                              const paddle::Tensor& lse, const paddle::Tensor& d_out, float scale,
                                              int threads) {
  const Shape shape = CheckInputs(q, k, v, mask, threads);
  PD_CHECK(d_out.shape() == q.shape() && d_out.dtype() == paddle::DataType::FLOAT32 && d_out.is_contiguous(),
           "cpu_attention: the output's gradient must be a contiguous float32 tensor of Q's shape");
  PD_CHECK(lse.shape() == std::vector<int64_t>({shape.batch, shape.heads, shape.queries}) && lse.is_contiguous(),
           "cpu_attention: LSE must be [batch, heads, queries], the forward's second output");
  auto d_q = paddle::empty(q.shape(), paddle::DataType::FLOAT32, q.place());
  auto d_k = paddle::empty(k.shape(), paddle::DataType::FLOAT32, k.place());
  auto d_v = paddle::empty(v.shape(), paddle::DataType::FLOAT32, v.place());
  KeyRange range(mask, shape);
  AttentionBackwardKernel(View(q.data<float>(), q.shape()), View(k.data<float>(), k.shape()),
                          View(v.data<float>(), v.shape()), range, lse.data<float>(),
                          View(d_out.data<float>(), d_out.shape()), shape, scale, threads,
                          View(d_q.data<float>(), d_q.shape()), View(d_k.data<float>(), d_k.shape()),
                          View(d_v.data<float>(), d_v.shape()));
  return {d_q, d_k, d_v};
}

std::vector<std::vector<int64_t>> AttentionInferShape(const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                                                      const std::vector<int64_t>& v,
                                                      const std::vector<int64_t>& mask) {
  return {q, {q[0], q[2], q[1]}};
}

std::vector<paddle::DataType> AttentionInferDtype(const paddle::DataType& q, const paddle::DataType& k,
                                                  const paddle::DataType& v, const paddle::DataType& mask) {
  return {q, paddle::DataType::FLOAT32};
}

PD_BUILD_OP(cpu_attention)
    .Inputs({"Q", "K", "V", "Mask"})
    .Outputs({"Out", "LSE"})
    .Attrs({"scale: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(AttentionForward))
    .SetInferShapeFn(PD_INFER_SHAPE(AttentionInferShape))
    .SetInferDtypeFn(PD_INFER_DTYPE(AttentionInferDtype));

PD_BUILD_GRAD_OP(cpu_attention)
    .Inputs({"Q", "K", "V", "Mask", "LSE", paddle::Grad("Out")})
    .Outputs({paddle::Grad("Q"), paddle::Grad("K"), paddle::Grad("V")})
    .Attrs({"scale: float", "threads: int"})
    .SetKernelFn(PD_KERNEL(AttentionBackward));
