r"""GELU, in the tanh approximation GPT-2 uses.

Forward
-------
.. math::
    u = k\,(x + a x^3), \quad k = \sqrt{2/\pi},\ a = 0.044715, \qquad
    y = \tfrac12\, x\, (1 + \tanh u)

Backward
--------
With :math:`t = \tanh u` and :math:`\operatorname{sech}^2 u = 1 - t^2`:

.. math::
    \frac{dy}{dx} = \tfrac12 (1 + t) + \tfrac12\, x\, (1 - t^2)\, k\, (1 + 3 a x^2)

Computing sech² as 1 - t² reuses the forward's tanh and never overflows
(``1/cosh(u)**2`` does for large ``|u|``). The forward caches
:math:`s = \tfrac12(1 + t)` (it needs it for y = x s anyway), and
:math:`1 - t^2 = 4 s (1 - s)`, so

.. math::  \frac{dy}{dx} = s + x \cdot 2 s (1 - s) \cdot k (1 + 3 a x^2)

Derivation: docs/derivations/gelu.md.
"""

import math

import numpy as np

from ._checks import check_dout, check_float_array

GELU_K = math.sqrt(2.0 / math.pi)   # Python floats: NEP 50 keeps float32 arrays float32
GELU_A = 0.044715


def gelu_forward(x):
    """Apply tanh-approximate GELU element-wise to ``x`` (any shape)."""
    check_float_array("x", x)
    # x * x * x, not x ** 3: float32 ** goes through pow and is ~25x slower.
    s = x * x                    # (...), becomes u, then tanh u, then s = (1 + tanh u) / 2
    s *= GELU_K * GELU_A
    s += GELU_K
    s *= x                       # u = k (x + a x^3)
    np.tanh(s, out=s)            # t = tanh u
    s *= 0.5
    s += 0.5                     # s = (1 + t) / 2
    out = x * s                  # y = x (1 + t) / 2
    cache = (x, s)
    return out, cache


def gelu_backward(dout, cache):
    """Gradient ``dx``; see docs/derivations/gelu.md.

    With s = (1 + t)/2 cached, sech^2 u / 2 = (1 - t^2)/2 = 2 s (1 - s), so
    dy/dx = s + x * 2 s (1 - s) * k (1 + 3 a x^2): nine passes, no tanh, no cosh.
    """
    x, s = cache
    check_dout(dout, x.shape, x.dtype)
    du_dx2 = x * x                            # (...), becomes 2 x du/dx = 2 x k (1 + 3 a x^2)
    du_dx2 *= 6.0 * GELU_K * GELU_A
    du_dx2 += 2.0 * GELU_K
    du_dx2 *= x
    dx = np.subtract(1.0, s, dtype=s.dtype)  # (...), 1 - s
    dx *= s                                   # s (1 - s) = (1 - t^2) / 4
    dx *= du_dx2                              # x (1 - t^2)/2 * du/dx
    dx += s                                   # dy/dx
    dx *= dout
    return dx
