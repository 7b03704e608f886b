"""What the benchmarks share: the machine they ran on, the median rate of a repeated step, peak memory."""

import statistics
import subprocess
import time


def cpu_description() -> str:
    """lscpu's model name and the CPU flags that decide the kernels (figures compare on one CPU only)."""
    output = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(":", 1) for line in output.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    wanted = [flag for flag in flags if flag.startswith(("avx", "amx", "fma"))]
    return f"{fields.get('Model name', '?').strip()} ({' '.join(wanted)})"


def machine_line(threads: int) -> str:
    """The line every benchmark prints first: CPU model, its vector flags, and the threads used."""
    return f"CPU {cpu_description()}, {threads} threads"


def peak_memory_mib() -> float:
    """This process's peak resident set in MiB (VmHWM)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1024


def median_rate(step, batch: int, steps: int, warmup: int) -> float:
    """batch / median wall time of `step()` over `steps` runs after `warmup` untimed ones."""
    times = []
    for index in range(warmup + steps):
        start = time.perf_counter()
        step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return batch / statistics.median(times)
