"""A shared pool of worker threads for the hot path (DataParallel's threads and AdamW's slices).

NumPy releases the GIL inside BLAS calls and inside ufuncs on large arrays, so
plain Python threads can keep every core busy: the training step runs one
slice of the batch per thread, and the optimizer one slice of the parameter
buffer per thread. While the workers run, BLAS is held to one thread each so
the cores are not oversubscribed.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from .._blas import blas_threads

_pool = None
_pool_size = 0
_lock = threading.Lock()


def default_threads():
    """Worker threads: ``$NUMGPT_THREADS``, else the number of cores (at most 4)."""
    env = os.environ.get("NUMGPT_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"NUMGPT_THREADS must be a positive integer, got {env!r}")
        return n
    return max(1, min(os.cpu_count() or 1, 4))


def default_processes():
    """Whether training runs its extra workers as processes: ``$NUMGPT_PROCESSES``, else ``"auto"``.

    ``1`` forces forked processes, ``0`` threads, ``auto`` lets the wrapper choose
    (see ``DataParallel``).
    """
    env = os.environ.get("NUMGPT_PROCESSES", "auto").strip().lower()
    choices = {"1": True, "0": False, "auto": "auto", "": "auto"}
    if env not in choices:
        raise ValueError(f"NUMGPT_PROCESSES must be 1, 0 or auto, got {env!r}")
    return choices[env]


def _forget_the_pool():
    """In a forked child: drop the parent's pool, whose threads were not copied by the fork.

    The copy would take jobs and never run them (its idle threads exist only in
    the parent), so the child's first parallel step would wait forever; the
    child starts a pool of its own instead.
    """
    global _pool, _pool_size, _lock
    _pool, _pool_size = None, 0
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_the_pool)


def _get_pool(workers):
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size < workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="numgpt")
            _pool_size = workers
        return _pool


def run_parallel(fn, jobs, secondary=()):
    """``[fn(*job) for job in jobs]``, concurrently: the first job in this thread, the rest on the pool.

    Every job is waited for (they write into shared buffers). If any raised, the
    first exception in job order is re-raised, skipping exceptions of the types
    in ``secondary`` (a job giving up because another failed) when a real one exists.
    """
    if len(jobs) == 1:
        return [fn(*jobs[0])]
    pool = _get_pool(len(jobs) - 1)
    with blas_threads(1):
        futures = [pool.submit(fn, *job) for job in jobs[1:]]
        outcomes = []
        try:
            outcomes.append((fn(*jobs[0]), None))
        except BaseException as e:       # noqa: BLE001  (re-raised below, after the workers stop)
            outcomes.append((None, e))
        for f in futures:
            try:
                outcomes.append((f.result(), None))
            except BaseException as e:   # noqa: BLE001
                outcomes.append((None, e))
    errors = [e for _, e in outcomes if e is not None]
    if errors:
        primary = [e for e in errors if not isinstance(e, tuple(secondary))]
        raise (primary or errors)[0]
    return [r for r, _ in outcomes]


def split(n, parts):
    """``parts`` contiguous (lo, hi) ranges covering range(n), as equal as possible."""
    parts = max(1, min(parts, n))
    bounds = [n * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def parallel_add(dst, src, n_threads=None):
    """``dst += src`` for 1-D arrays, cut into ``n_threads`` contiguous parts added at once.

    Element-wise, so the result is the same for any number of threads; NumPy releases the
    interpreter lock inside the addition, so the parts use as many cores.
    """
    n_threads = default_threads() if n_threads is None else n_threads
    run_parallel(_add_part, [(dst, src, lo, hi) for lo, hi in split(dst.size, n_threads)])


def _add_part(dst, src, lo, hi):
    dst[lo:hi] += src[lo:hi]
