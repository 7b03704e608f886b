// How many OpenMP threads a CPU kernel over rows x cols elements uses, shared by the op files.
#pragma once

#include <algorithm>
#include <cstdint>

namespace paddlemix_cpu {

constexpr int64_t kElementsPerThread = 1 << 15;  // below this a thread costs more than it saves

// At most `requested`, at most one per row, and one per kElementsPerThread elements.
inline int KernelThreads(int requested, int64_t rows, int64_t cols) {
  const int64_t useful = std::max<int64_t>(1, rows * cols / kElementsPerThread);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({static_cast<int64_t>(requested), rows, useful})));
}

}  // namespace paddlemix_cpu
