r"""The SwiGLU gate (Shazeer 2020, "GLU Variants Improve Transformer"; Llama's MLP) as an activation pair.

A SwiGLU MLP is three linear maps around this gate,
``out = swiglu(x W_gate, x W_up) W_down``; numgpt composes it from
:mod:`numgpt.layers.linear` and the pair below, which acts on the two
pre-activations (as ``gelu_forward`` acts on GPT-2's one).

Forward
-------
With the logistic sigmoid :math:`\sigma(a) = 1 / (1 + e^{-a})` and
:math:`\operatorname{silu}(a) = a\, \sigma(a)` (also called swish):

.. math::  y = \operatorname{silu}(a) \odot u, \qquad a = \text{gate}, \ u = \text{up}

Backward
--------
.. math::
    du = dy \odot \operatorname{silu}(a), \qquad
    da = dy \odot u \odot \sigma(a) \big(1 + a\, (1 - \sigma(a))\big)

The sigmoid is computed from :math:`e^{-|a|}`, which never overflows and never
cancels. Derivation: docs/derivations/swiglu.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array, check_same_dtype


def sigmoid(a):
    """The logistic sigmoid, stable for every finite ``a``: ``e**-|a|`` lies in (0, 1]."""
    e = np.exp(-np.abs(a))                              # (...)
    sig = np.where(a >= 0, 1.0, e).astype(a.dtype)      # numerator: 1 for a >= 0, e^a for a < 0
    sig /= 1.0 + e
    return sig


def swiglu_forward(gate, up):
    """``silu(gate) * up`` element-wise; ``gate`` and ``up`` share a shape (..., F)."""
    check_float_array("gate", gate)
    check_float_array("up", up)
    check_same_dtype(gate=gate, up=up)
    if gate.shape != up.shape:
        raise ValueError(f"gate and up must have one shape, got gate {gate.shape} and up {up.shape}")
    sig = sigmoid(gate)                                 # (...), sigma(a)
    silu = gate * sig                                   # (...), silu(a) = a sigma(a)
    out = silu * up                                     # (...)
    cache = (gate, up, sig, silu)
    return out, cache


def swiglu_backward(dout, cache):
    """Gradients ``(dgate, dup)``; see docs/derivations/swiglu.md."""
    gate, up, sig, silu = cache
    check_dout(dout, gate.shape, gate.dtype)
    dup = dout * silu                                   # (...)
    dsilu = np.subtract(1.0, sig, dtype=sig.dtype)      # (...), 1 - sigma
    dsilu *= gate                                       # a (1 - sigma)
    dsilu += 1.0
    dsilu *= sig                                        # silu'(a) = sigma (1 + a (1 - sigma))
    dgate = dsilu
    dgate *= up
    dgate *= dout                                       # dy u silu'(a)
    return dgate, dup
