"""Cache-sized blocks for the element-wise layers' hot paths.

A layer like GELU is a chain of a dozen NumPy passes. Run each pass over a whole
(B, T, 4C) activation and every pass streams megabytes through memory; run the
whole chain on one block of rows at a time and every pass after the first finds
its block still in the core's L2 cache (1 MiB per core on this project's first machine, 512 KiB
on another). Measured on a (2048, 1536) float32 GELU forward, one core: 21-25 ms plain, 12-14 ms
in blocks of 2^16 elements. On the 512 KiB machine 2^16 was still the fastest block for GELU
(2^15 and 2^17 were slower; benchmarks/README.md). The math is unchanged; each layer's tests
compare the blocked result with the plain formula on inputs that span several blocks.
"""

import numpy as np

BLOCK = 1 << 16     # elements per block: a few arrays of one block stay in L2 or close to it (measured best)


def row_blocks(n_rows, row_len, block=BLOCK):
    """Slices covering ``range(n_rows)``, each of whole rows and about ``block`` elements (at least one row)."""
    step = max(1, block // max(1, row_len))
    return [slice(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]


def flat(x):
    """``x`` as a C-contiguous 1-D array: a view when ``x`` is contiguous, else a copy."""
    return np.ravel(x, order="C")

