"""numgpt._blas: finding NumPy's OpenBLAS to read and set its thread count."""

import os
import sys

import numpy as np

import numgpt._blas as blas


def test_a_mapped_file_whose_name_is_not_utf8_does_not_break_the_search(tmp_path, monkeypatch):
    # Token files are memory-mapped, so their names appear in /proc/self/maps; a name of bytes that are
    # not UTF-8 made reading that file raise inside every training worker.
    path = os.path.join(os.fsencode(tmp_path), b"tokens-\xfe.bin")
    np.arange(16, dtype=np.uint16).tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r")
    monkeypatch.setattr(blas, "_api", None)            # search again, with the file mapped
    try:
        previous = blas.set_blas_threads(1)
        if sys.platform.startswith("linux"):           # elsewhere there is no /proc/self/maps to search
            assert isinstance(previous, int) and previous >= 1   # NumPy's wheels bundle OpenBLAS
            assert blas.set_blas_threads(previous) == 1
    finally:
        del mapped
