"""Keep freed activation buffers in the process instead of handing them back to the OS.

Why: a training step allocates and frees the same few hundred arrays every
step. Left alone, glibc's malloc gives many of them back to the kernel when
they are freed, and every step the kernel hands out and zeroes the same pages
again. Three ways it does so, and the setting (``mallopt``) that stops each:

- Blocks above the mmap threshold (128 KiB at start, adapting upwards slowly,
  32 MiB at most) get their own ``mmap`` and are unmapped when freed.
  ``M_MMAP_MAX = 0`` serves every block from the heap instead. Raising the
  threshold to its 32 MiB maximum was the first fix: the 4 x 128 model's step
  went from 56 ms to 37 ms (a GELU backward alone from 1.8 ms to 0.2 ms). But
  GPT-2's (512, 50257) logits and their gradient, 103 MB each per half batch,
  stayed above any threshold.
- When the free space at the top of the heap exceeds the trim threshold, it
  is returned to the kernel. GPT-2 124M frees about 1.4 GB of activations at
  the end of each backward (its peak RSS, 3.5 GB, less 2 GB of parameters,
  gradients and AdamW moments), so a 512 MiB threshold still returned them
  every step.
  ``M_TRIM_THRESHOLD = -1`` turns trimming off.
- Each thread that allocates gets its own arena, and a thread's arena is made
  of 64 MiB heaps, so a bigger block in a worker thread is always mmapped.
  ``M_ARENA_MAX = 1`` keeps every thread in the main heap, which has no such
  limit; the threads then share its lock, which a step takes once per array
  allocated or freed (a few hundred arrays per worker).

Measured (benchmarks/README.md, "Fresh pages for every temporary"): GPT-2 124M
on two worker threads spent 0.6-1.1 s of system time per step in about 320
huge-page faults (640 MB zeroed) with only the thresholds raised, and 30-70 ms
with these settings; its step took 0.94-0.99 of the time (median 0.98).

The cost: the process keeps the heap its largest step needed instead of
returning the free part between steps. A training step reaches that size again
every step, so the peak RSS does not change. Only glibc (Linux) has
``mallopt``; elsewhere this does nothing. Set ``NUMGPT_MALLOC_TUNING=0`` to
leave malloc alone.
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_done = False


def tune_malloc():
    """Apply the settings once per process; returns True when they were applied.

    Call it before the process starts worker threads: a thread that has already
    allocated keeps the arena it has.
    """
    global _done
    if _done:
        return True
    if os.environ.get("NUMGPT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):      # not glibc (musl, ...)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
    _done = all([bool(mallopt(option, value)) for option, value in settings])   # a list: every one is applied
    return _done
