"""Shared by the tests that bound what a reader or a child process costs."""

import textwrap
import time
import tracemalloc


def measure(load):
    """(exception, seconds, peak bytes traced by tracemalloc) of calling ``load``."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        load()
    except Exception as exc:  # noqa: BLE001 - returned for the test to check
        error = exc
    else:
        error = None
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return error, seconds, peak


# Appended to a child script: print the child's peak resident memory in KiB.
PRINT_PEAK_KIB = textwrap.dedent("""
    import sys as _sys
    try:         # Linux: this process's own peak (ru_maxrss would carry the forking parent's over exec)
        with open("/proc/self/status") as _f:
            print(next(line for line in _f if line.startswith("VmHWM:")).split()[1])
    except OSError:
        import resource
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)    # bytes on macOS
""")
