"""What the benchmarks share: the median rate of a repeated step."""

import statistics
import time


def median_rate(step, batch: int, steps: int, warmup: int) -> float:
    """batch / median wall time of `step()` over `steps` runs after `warmup` untimed ones."""
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
