"""How many threads NumPy's BLAS may use, read and set at run time.

Why: numgpt's training step runs one worker thread per core, each on a slice
of the batch (see ``numgpt.parallel.DataParallel``). Inside those workers every matmul
should run on its own core; a BLAS that also spawns threads per call would
oversubscribe the cores (measured here: two threaded OpenBLAS calls at once
ran slower than one). OpenBLAS exposes ``openblas_set_num_threads``; NumPy's
wheels bundle it under a prefixed name, found here through ctypes the way
threadpoolctl does it. When no OpenBLAS is found (another BLAS, another
platform), the functions do nothing and report ``None``.
"""

import contextlib
import ctypes
import re
import threading

_PREFIXES = ("scipy_openblas_", "openblas_")   # NumPy 2 wheels, NumPy 1.x wheels and system OpenBLAS
_SUFFIXES = ("64_", "")
_lock = threading.Lock()
_api = None          # (get, set) ctypes functions, or False when unavailable


def _find():
    global _api
    if _api is not None:
        return _api
    _api = False
    try:
        import numpy  # noqa: F401  (loads the BLAS library into the process)
        with open("/proc/self/maps", errors="surrogateescape") as f:     # paths need not be UTF-8
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so[.\d]*)", f.read())))
    except OSError:
        return _api
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype = ctypes.c_int
                    put.argtypes = [ctypes.c_int]
                    _api = (get, put)
                    return _api
    return _api


def set_blas_threads(n):
    """Set the BLAS thread count; returns the previous count (None when unavailable)."""
    api = _find()
    if not api:
        return None
    with _lock:
        previous = int(api[0]())
        api[1](int(n))
    return previous


@contextlib.contextmanager
def blas_threads(n):
    """Run a block with ``n`` BLAS threads, restoring the previous count afterwards."""
    previous = set_blas_threads(n)
    try:
        yield
    finally:
        if previous is not None:
            set_blas_threads(previous)
