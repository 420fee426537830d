r"""Softmax over the last axis, the building block of attention and cross-entropy.

Forward
-------
.. math::  p_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}}, \qquad m = \max_j x_j

Subtracting the row max changes nothing mathematically (softmax is shift
invariant) and keeps every exponent <= 0, so nothing overflows. Masked entries
hold a large finite negative number, never -inf: a row that is masked
everywhere then becomes uniform instead of 0/0 = NaN.

Backward
--------
The Jacobian is :math:`\partial p_i/\partial x_j = p_i(\delta_{ij} - p_j)`; it is
never built. Its product with the upstream gradient is one row-wise expression:

.. math::  dx_i = p_i \left( dp_i - \textstyle\sum_j dp_j\, p_j \right)

Derivation: docs/derivations/softmax.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array, row_dot, row_sum


def softmax_forward(x):
    """Softmax of ``x`` (..., K) over its last axis; returns ``(probs, cache)``.

    The cache holds ``probs`` itself (no copy): modify the returned array in
    place and the backward changes with it.
    """
    check_float_array("x", x, min_ndim=1)
    if x.shape[-1] == 0:
        raise ValueError(f"x must have at least one entry on the softmax axis, got shape {x.shape}")
    probs = x - x.max(axis=-1, keepdims=True)     # (..., K), every entry <= 0
    np.exp(probs, out=probs)
    probs /= row_sum(probs)
    return probs, (probs,)


def softmax_backward(dout, cache):
    """Gradient ``dx`` from ``dprobs``; see docs/derivations/softmax.md."""
    (probs,) = cache
    check_dout(dout, probs.shape, probs.dtype)
    return softmax_backward_from_probs(dout, probs)


def softmax_backward_from_probs(dprobs, probs, out=None):
    """``p * (dp - sum(dp * p))`` row-wise, the vector-Jacobian product of softmax.

    ``out`` receives the result (it may be ``dprobs`` itself: the row sums are taken first).
    """
    dx = np.subtract(dprobs, row_dot(dprobs, probs), out=out)   # (..., K): dp_i - sum_j dp_j p_j
    dx *= probs
    return dx
