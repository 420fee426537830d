r"""Affine map, with the weight stored (in, out) as in GPT-2's Conv1D checkpoints.

Forward
-------
.. math::  Y = X W + b, \qquad X \in \mathbb{R}^{N \times C_{in}},\ W \in \mathbb{R}^{C_{in} \times C_{out}},\ b \in \mathbb{R}^{C_{out}}

(any leading shape of ``x`` is flattened into N rows).

Backward
--------
.. math::  dX = dY\, W^\top, \qquad dW = X^\top dY, \qquad db = \textstyle\sum_n dY_{n,:}

Derivation: docs/derivations/linear.md.
"""


import math

from ._checks import check_dout, check_float_array, check_same_dtype, column_sum


def linear_forward(x, w, b=None):
    """``x`` (..., in) @ ``w`` (in, out) + ``b`` (out,) -> (..., out)."""
    check_float_array("x", x, min_ndim=1)
    check_float_array("w", w, ndim=2)
    if b is not None:
        check_float_array("b", b, ndim=1)
    check_same_dtype(x=x, w=w, b=b)
    if x.shape[-1] != w.shape[0]:
        raise ValueError(f"x has {x.shape[-1]} input features (shape {x.shape}) but w expects "
                         f"{w.shape[0]} (w shape {w.shape}, stored (in, out))")
    if b is not None and b.shape != (w.shape[1],):
        raise ValueError(f"b must have shape ({w.shape[1]},) to match w {w.shape}, got {b.shape}")
    # One 2-D GEMM over all rows: a 3-D ``x @ w`` runs as B separate small matmuls.
    N = math.prod(x.shape[:-1])
    out = (x.reshape(N, w.shape[0]) @ w).reshape(x.shape[:-1] + (w.shape[1],))   # (..., out)
    if b is not None:
        out += b
    cache = (x, w, b is not None)
    return out, cache


def linear_backward(dout, cache):
    """Gradients ``(dx, dw, db)``; ``db`` is None when the forward had no bias.

    See docs/derivations/linear.md.
    """
    x, w, has_bias = cache
    check_dout(dout, x.shape[:-1] + (w.shape[1],), x.dtype)
    N = math.prod(x.shape[:-1])
    x2 = x.reshape(N, w.shape[0])            # (N, in)
    dout2 = dout.reshape(N, w.shape[1])      # (N, out)
    dx = (dout2 @ w.T).reshape(x.shape)      # (..., in); a transposed view costs BLAS nothing
    dw = x2.T @ dout2                        # (in, out)
    db = column_sum(dout2) if has_bias else None   # (out,)
    return dx, dw, db
