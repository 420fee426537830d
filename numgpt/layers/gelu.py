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

Computing sech² as 1 - t² = 4 s (1 - s) reuses the forward's gate and never overflows
(``1/cosh(u)**2`` does for large ``|u|``); the polynomial factor does, only beyond
``|x|`` of about 1.2e13 in float32 (9e102 in float64), where dx is NaN (docs/derivations/gelu.md, 4.1). The forward caches
:math:`s = \tfrac12(1 + t)` (it needs it for y = x s anyway), and
:math:`1 - t^2 = 4 s (1 - s)`, so

.. math::  \frac{dy}{dx} = s + x \cdot 2 s (1 - s) \cdot k (1 + 3 a x^2)

The code computes the gate without tanh, through the identity
:math:`\tfrac12(1 + \tanh u) = \sigma(2u) = 1/(1 + e^{-2u})` (one exp, one add, one
reciprocal: about a quarter faster than tanh and its two passes on this project's
machine). Both functions run in cache-sized blocks (numgpt/layers/_blocks.py).

Derivation: docs/derivations/gelu.md.
"""

import math

import numpy as np

from ._blocks import BLOCK, flat, row_blocks
from ._checks import check_dout, check_float_array

GELU_K = math.sqrt(2.0 / math.pi)   # Python floats: NEP 50 keeps float32 arrays float32
GELU_A = 0.044715


def gelu_forward(x):
    """Apply tanh-approximate GELU element-wise to ``x`` (any shape)."""
    check_float_array("x", x)
    x_flat = flat(x)                             # (n,), a view of x when it is contiguous
    s = np.empty_like(x_flat)                    # (n,), the gate s = (1 + tanh u) / 2
    out = np.empty_like(x_flat)                  # (n,)
    # Far left e^{-2u} overflows to inf and s = 1 / inf is exactly 0, as (1 + tanh u) / 2 is there.
    with np.errstate(over="ignore", under="ignore"):
        for b in row_blocks(x_flat.size, 1):     # hot path: the chain on one L2-sized block at a time
            xb, sb = x_flat[b], s[b]
            # x * x * x, not x ** 3: float32 ** goes through pow and is ~25x slower.
            np.multiply(xb, xb, out=sb)
            sb *= -2.0 * GELU_K * GELU_A
            sb -= 2.0 * GELU_K
            sb *= xb                             # -2u = -2 k (x + a x^3)
            np.exp(sb, out=sb)
            sb += 1.0
            np.reciprocal(sb, out=sb)            # s = 1 / (1 + e^{-2u}) = (1 + tanh u) / 2
            np.multiply(xb, sb, out=out[b])      # y = x s
    cache = (x_flat.reshape(x.shape), s.reshape(x.shape))
    return out.reshape(x.shape), cache


def gelu_backward(dout, cache):
    """Gradient ``dx``; see docs/derivations/gelu.md.

    With s = (1 + t)/2 cached, sech^2 u / 2 = (1 - t^2)/2 = 2 s (1 - s), so
    dy/dx = s + x * 2 s (1 - s) * k (1 + 3 a x^2): nine passes, no tanh, no cosh.
    """
    x, s = cache
    check_dout(dout, x.shape, x.dtype)
    x_flat, s_flat, dout_flat = flat(x), flat(s), flat(dout)    # (n,) each
    dx = np.empty_like(x_flat)                   # (n,)
    du_dx2 = np.empty(min(BLOCK, x_flat.size), dtype=x.dtype)   # one block's 2 x du/dx
    with np.errstate(under="ignore"):            # s (1 - s) of a tiny s may round to 0: harmless
        for b in row_blocks(x_flat.size, 1):     # hot path: as in the forward
            xb, sb, dxb = x_flat[b], s_flat[b], dx[b]
            du_dx2_b = du_dx2[:len(xb)]
            np.multiply(xb, xb, out=du_dx2_b)
            du_dx2_b *= 6.0 * GELU_K * GELU_A
            du_dx2_b += 2.0 * GELU_K
            du_dx2_b *= xb                       # 2 x du/dx = 2 x k (1 + 3 a x^2)
            np.subtract(1.0, sb, out=dxb)        # 1 - s
            dxb *= sb                            # s (1 - s) = (1 - t^2) / 4
            dxb *= du_dx2_b                      # x (1 - t^2)/2 * du/dx
            dxb += sb                            # dy/dx
            dxb *= dout_flat[b]
    return dx.reshape(x.shape)
