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
(``1/cosh(u)**2`` does for large ``|u|``). Derivation: docs/derivations/gelu.md.
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
    t = x * x                    # (...), reused as x^2, then u, then tanh u
    t *= GELU_A
    t += 1.0
    t *= x
    t *= GELU_K                  # u = k (x + a x^3)
    np.tanh(t, out=t)            # t = tanh u
    out = t + 1.0
    out *= x
    out *= 0.5                   # y = x (1 + t) / 2
    cache = (x, t)
    return out, cache


def gelu_backward(dout, cache):
    """Gradient ``dx``; see docs/derivations/gelu.md."""
    x, t = cache
    check_dout(dout, x.shape, x.dtype)
    x2 = x * x                               # (...)
    du_dx = x2 * (3.0 * GELU_A)
    du_dx += 1.0
    du_dx *= GELU_K                          # k (1 + 3 a x^2)
    sech2 = t * t
    np.subtract(1.0, sech2, out=sech2)       # 1 - t^2
    dx = sech2 * du_dx
    dx *= x
    dx += 1.0
    dx += t                                  # (1 + t) + x (1 - t^2) du/dx
    dx *= 0.5
    dx *= dout
    return dx
