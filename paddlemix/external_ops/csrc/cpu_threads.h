// How many OpenMP threads a CPU kernel uses, shared by the op files.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace paddlemix_cpu {

// At most `requested` (the cores this process may run on) and at most the threads OpenMP is set to
// in this thread, i.e. what paddle.base.core.set_num_threads chose for Paddle's own kernels (Paddle's
// default: 1), so that processes sharing a machine (paddle.distributed.launch) do not oversubscribe it.
inline int AllowedThreads(int requested) { return std::max(1, std::min(requested, omp_get_max_threads())); }

constexpr int64_t kElementsPerThread = 1 << 15;  // below this a thread costs more than it saves

// For a kernel over rows x cols elements: at most AllowedThreads(requested), at most one per row,
// and one per kElementsPerThread elements.
inline int KernelThreads(int requested, int64_t rows, int64_t cols) {
  const int64_t useful = std::max<int64_t>(1, rows * cols / kElementsPerThread);
  const int64_t allowed = AllowedThreads(requested);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({allowed, rows, useful})));
}

}  // namespace paddlemix_cpu
