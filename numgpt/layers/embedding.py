r"""Token + position embedding.

Forward
-------
For ids :math:`\mathrm{idx} \in \{0..V-1\}^{B \times T}`, a token table
:math:`W_{te} \in \mathbb{R}^{V \times C}` and a position table
:math:`W_{pe} \in \mathbb{R}^{T_{max} \times C}`:

.. math::  y_{b,t,:} = W_{te}[\mathrm{idx}_{b,t}, :] + W_{pe}[t, :]

Backward
--------
Each row of a table is read once per occurrence, so its gradient is the sum of
the upstream gradients at those occurrences:

.. math::
    \frac{\partial L}{\partial W_{te}[v,:]} = \sum_{b,t:\,\mathrm{idx}_{b,t}=v} dy_{b,t,:}
    \qquad
    \frac{\partial L}{\partial W_{pe}[t,:]} = \sum_b dy_{b,t,:}\ (t < T), \quad 0\ (t \ge T)

Repeated ids accumulate; ids that never occur get a zero row. Without a
position table (``wpe=None``, for models whose positions enter inside attention,
such as rotary embeddings) the output is the token rows alone and ``dwpe`` is None.
Derivation: docs/derivations/embedding.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array, check_int_array, check_same_dtype


def embedding_forward(idx, wte, wpe):
    """Look up token and position embeddings and add them.

    idx: int (B, T) token ids in [0, V); wte: (V, C); wpe: (T_max, C) with T <= T_max,
    or None for no position table. Returns out (B, T, C) and the cache for
    :func:`embedding_backward`.
    """
    check_int_array("idx", idx, ndim=2)
    check_float_array("wte", wte, ndim=2)
    V, C = wte.shape
    B, T = idx.shape
    if wpe is None:
        _check_ids(idx, wte)
        return wte[idx], (idx, wte.shape, None, wte.dtype)     # (B, T, C), a fresh array
    check_float_array("wpe", wpe, ndim=2)
    check_same_dtype(wte=wte, wpe=wpe)
    if wpe.shape[1] != C:
        raise ValueError(f"wpe must have shape (T_max, {C}) to match wte {wte.shape}, got {wpe.shape}")
    if T > wpe.shape[0]:
        raise ValueError(
            f"idx has T={T} positions but wpe only has {wpe.shape[0]} rows (block size); "
            f"idx shape {idx.shape}, wpe shape {wpe.shape}")
    _check_ids(idx, wte)
    out = wte[idx]          # (B, T, C), a fresh array from fancy indexing
    out += wpe[:T]          # broadcast over the batch
    cache = (idx, wte.shape, wpe.shape, wte.dtype)
    return out, cache


def _check_ids(idx, wte):
    V = wte.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= V):
        bad = idx[(idx < 0) | (idx >= V)]
        raise ValueError(f"idx holds ids outside [0, {V}) for wte of shape {wte.shape}: e.g. {bad[:5].tolist()}")


def embedding_backward(dout, cache):
    """Gradients ``(dwte, dwpe)``; see docs/derivations/embedding.md.

    dout: (B, T, C). Returns dwte (V, C) and dwpe (T_max, C), or None without a position table.
    """
    idx, wte_shape, wpe_shape, dtype = cache
    B, T = idx.shape
    V, C = wte_shape
    check_dout(dout, (B, T, C), dtype)
    dout2 = dout.reshape(B * T, C)                      # (N, C), one row per occurrence
    dwte = np.zeros(wte_shape, dtype=dtype)             # (V, C)
    scatter_add_rows(dwte, idx.reshape(-1), dout2)
    if wpe_shape is None:
        return dwte, None
    dwpe = np.zeros(wpe_shape, dtype=dtype)             # (T_max, C)
    dout.sum(axis=0, out=dwpe[:T])                      # sum over the batch; rows >= T stay 0
    return dwte, dwpe


def scatter_add_rows(target, rows, values):
    """``target[rows[i]] += values[i]`` for every i, with repeated rows accumulating.

    The plain form is ``np.add.at(target, rows, values)``, which is unbuffered and
    slow. Fast path: sort the occurrences by row, sum each run of equal rows with
    one ``np.add.reduceat`` and add the sums once per distinct row (a few vector
    ops whatever the number of ids). ``tests/layers/test_embedding.py`` proves it
    equal to ``np.add.at``.
    """
    if rows.size == 0:
        return target
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]])   # first index of each run
    sums = np.add.reduceat(values[order], starts, axis=0)                      # (n_distinct, C)
    target[sorted_rows[starts]] += sums
    return target
