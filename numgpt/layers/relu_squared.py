r"""Squared ReLU, :math:`y = \max(x, 0)^2` (So et al., "Primer", 2021; the modded-nanoGPT speedrun's MLP).

Forward
-------
.. math::  y = \operatorname{relu}(x)^2 = \max(x, 0)^2

Backward
--------
.. math::  \frac{dy}{dx} = 2 \max(x, 0), \qquad dx = 2\, \operatorname{relu}(x) \odot dy

The derivative is continuous (0 from both sides at x = 0), unlike ReLU's, but
the second derivative jumps there from 0 to 2. Derivation: docs/derivations/swiglu.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array


def relu_squared_forward(x):
    """Apply ``max(x, 0) ** 2`` element-wise to ``x`` (any shape)."""
    check_float_array("x", x)
    relu = np.maximum(x, 0)                  # (...), cached: the backward is 2 relu dy
    out = relu * relu                        # (...)
    cache = relu
    return out, cache


def relu_squared_backward(dout, cache):
    """Gradient ``dx = 2 relu(x) dout``; see docs/derivations/swiglu.md."""
    relu = cache
    check_dout(dout, relu.shape, relu.dtype)
    dx = relu * dout                         # (...)
    dx *= 2.0
    return dx
