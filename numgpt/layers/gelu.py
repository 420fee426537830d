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
``|x|`` of about 1.2e13 in float32 (9e102 in float64), where dx is NaN (docs/derivations/gelu.md, 4.1).
With the gate :math:`s = \tfrac12(1 + t)` (the forward needs it for y = x s anyway)
and :math:`1 - t^2 = 4 s (1 - s)`:

.. math::  \frac{dy}{dx} = s + x \cdot 2 s (1 - s) \cdot k (1 + 3 a x^2)

The forward evaluates this derivative too, block by block while x and s are still in
cache, and caches it alone; the backward is then one product, dx = dout * dy/dx (one
array cached instead of two, and one pass over memory in the backward instead of nine).
The code computes the gate without tanh, through the identity
:math:`\tfrac12(1 + \tanh u) = \sigma(2u) = 1/(1 + e^{-2u})` (one exp, one add, one
reciprocal: about a quarter faster than tanh and its two passes on this project's
machine). The forward runs in cache-sized blocks (numgpt/layers/_blocks.py).

Derivation: docs/derivations/gelu.md.
"""

import math

import numpy as np

from ._blocks import BLOCK, flat, row_blocks
from ._checks import check_dout, check_float_array

GELU_K = math.sqrt(2.0 / math.pi)   # Python floats: NEP 50 keeps float32 arrays float32
GELU_A = 0.044715


def gelu_forward(x, derivative=True):
    """Apply tanh-approximate GELU element-wise to ``x`` (any shape); the cache is ``(dy/dx,)``.

    ``derivative=False`` is for inference: it skips dy/dx (seven of the fifteen passes) and
    the cache is None, so there is no backward.
    """
    check_float_array("x", x)
    if not isinstance(derivative, bool):
        raise TypeError(f"derivative must be True or False, got {derivative!r}")
    x_flat = flat(x)                             # (n,), a view of x when it is contiguous
    out = np.empty_like(x_flat)                  # (n,)
    n_block = min(BLOCK, x_flat.size)
    # f'(x), the whole cache; without it, its x^2 goes to a block-sized scratch buffer.
    dydx = np.empty_like(x_flat) if derivative else np.empty(n_block, dtype=x_flat.dtype)
    s = np.empty(n_block, dtype=x_flat.dtype)    # one block's gate s = (1 + tanh u) / 2
    s_1ms = np.empty_like(s)                     # one block's s (1 - s) = (1 - t^2) / 4
    # Far left e^{-2u} overflows to inf and s = 1 / inf is exactly 0, as (1 + tanh u) / 2 is there;
    # s (1 - s) of a tiny s may underflow to 0, harmlessly. Beyond |x| ~ 1.2e13 (float32) the
    # derivative's cubic overflows and 0 * inf makes f' NaN: y is still right, and the NaN
    # reaches the gradient, where the trainer stops (docs/derivations/gelu.md, 4.3).
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for b in row_blocks(x_flat.size, 1):     # hot path: the chain on one L2-sized block at a time
            xb = x_flat[b]
            db = dydx[b] if derivative else dydx[:len(xb)]
            sb, s_1ms_b = s[:len(xb)], s_1ms[:len(xb)]
            # x * x * x, not x ** 3: float32 ** goes through pow and is ~25x slower.
            np.multiply(xb, xb, out=db)          # x^2, used twice
            np.multiply(db, -2.0 * GELU_K * GELU_A, out=sb)
            sb -= 2.0 * GELU_K
            sb *= xb                             # -2u = -2 k (x + a x^3)
            np.exp(sb, out=sb)
            sb += 1.0
            np.reciprocal(sb, out=sb)            # s = 1 / (1 + e^{-2u}) = (1 + tanh u) / 2
            np.multiply(xb, sb, out=out[b])      # y = x s
            if not derivative:
                continue
            db *= 6.0 * GELU_K * GELU_A
            db += 2.0 * GELU_K
            db *= xb                             # 2 x du/dx = 2 x k (1 + 3 a x^2)
            np.subtract(1.0, sb, out=s_1ms_b)
            s_1ms_b *= sb                        # s (1 - s) = (1 - t^2) / 4
            db *= s_1ms_b                        # x (1 - t^2)/2 * du/dx
            db += sb                             # f'(x) = s + 2 x s (1 - s) du/dx
    cache = (dydx.reshape(x.shape),) if derivative else None
    return out.reshape(x.shape), cache


def gelu_backward(dout, cache):
    """Gradient ``dx = dout * f'(x)``, f' from the forward; see docs/derivations/gelu.md."""
    (dydx,) = cache
    check_dout(dout, dydx.shape, dydx.dtype)
    return np.multiply(dout, dydx)               # (same shape as x)
