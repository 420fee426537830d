r"""Inverted dropout.

Forward
-------
Draw a keep-mask :math:`m_i \sim \mathrm{Bernoulli}(1-p)` and scale what is kept,
so the expected output equals the input and evaluation needs no rescaling:

.. math::  y_i = x_i\, \frac{m_i}{1-p}

``p = 0`` is the identity (no random numbers are drawn).

Backward
--------
For a fixed mask the layer is linear and diagonal:

.. math::  dx_i = dy_i\, \frac{m_i}{1-p}

Derivation: docs/derivations/dropout.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array


def dropout_forward(x, p, rng):
    """Zero each element of ``x`` with probability ``p`` and scale the rest by 1/(1-p).

    ``rng`` is a ``numpy.random.Generator`` (or anything with its ``random(shape, dtype=...)``);
    the same generator state gives the same mask.
    """
    check_float_array("x", x)
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a number in [0, 1), got {p!r}")
    if p == 0:
        return x.copy(), (None, x.shape, x.dtype)
    # A Generator, or anything with its random(shape, dtype=...); the legacy RandomState has no dtype.
    if isinstance(rng, np.random.RandomState) or not callable(getattr(rng, "random", None)):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    # Drawing in x's dtype keeps float32 runs free of float64 temporaries.
    mask = rng.random(x.shape, dtype=x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
    mask = np.where(mask >= p, x.dtype.type(1.0 / (1.0 - p)), x.dtype.type(0.0))   # (...) 0 or 1/(1-p)
    out = x * mask
    return out, (mask, x.shape, x.dtype)


def dropout_backward(dout, cache):
    """Gradient ``dx``; see docs/derivations/dropout.md."""
    mask, shape, dtype = cache
    check_dout(dout, shape, dtype)
    if mask is None:
        return dout.copy()
    return dout * mask
