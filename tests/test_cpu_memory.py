"""paddlemix.utils.cpu_memory: `keep_freed_cpu_memory()` (called by the entry scripts, never by the
import) makes Paddle's CPU ops reuse freed memory instead of page-faulting on fresh memory for every
output; the opt-out and glibc's own variables leave malloc alone."""

import os
import subprocess
import sys
import textwrap

import pytest

FAULTS_PER_ADD = textwrap.dedent("""
    import resource
    import sys
    import paddlemix
    import paddle
    from paddlemix.utils.cpu_memory import keep_freed_cpu_memory
    if sys.argv[1] == "call":
        keep_freed_cpu_memory()
    x = paddle.randn([32, 50, 3072])  # 19.6 MB: glibc's default would unmap each freed output
    for _ in range(20):
        y = x + x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        y = x + x
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def page_faults_per_add(call: bool = True, **env) -> float:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env)
    output = subprocess.run([sys.executable, "-c", FAULTS_PER_ADD, "call" if call else "import-only"], env=environment, capture_output=True, text=True,
                            check=True).stdout
    return float(output.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_cpu_memory_stops_cpu_ops_faulting_on_fresh_memory_and_the_import_alone_does_not():
    pages = 32 * 50 * 3072 * 4 // 4096
    assert page_faults_per_add() < pages / 20
    assert page_faults_per_add(call=False) > pages / 2  # importing paddlemix leaves the process's malloc alone
    assert page_faults_per_add(PPMIX_KEEP_FREED_CPU_MEMORY="0") > pages / 2
    assert page_faults_per_add(MALLOC_ARENA_MAX="2", MALLOC_TRIM_THRESHOLD_="131072") > pages / 2
