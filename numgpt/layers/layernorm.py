r"""Layer normalisation over the last axis (GPT-2's ``ln_1``, ``ln_2``, ``ln_f``).

Forward
-------
For one row :math:`x \in \mathbb{R}^C` with weight :math:`\gamma` and bias :math:`\beta`:

.. math::
    \mu = \tfrac1C \textstyle\sum_i x_i, \quad
    \sigma^2 = \tfrac1C \textstyle\sum_i (x_i-\mu)^2 \ \text{(biased, as GPT-2)}, \quad
    r = (\sigma^2+\epsilon)^{-1/2}, \quad
    \hat x_i = (x_i-\mu)\, r, \quad
    y_i = \gamma_i \hat x_i + \beta_i

Backward
--------
With :math:`g_i = \gamma_i\, dy_i` (the gradient reaching :math:`\hat x`):

.. math::
    d\beta = \textstyle\sum_{rows} dy, \qquad
    d\gamma = \textstyle\sum_{rows} dy \odot \hat x, \qquad
    dx_i = r \left( g_i - \overline{g} - \hat x_i\, \overline{g \hat x} \right)

where the bar is the mean over the C features of the row. Hence
:math:`\sum_i dx_i = 0`. Derivation: docs/derivations/layernorm.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array, check_number_above, check_same_dtype, column_sum, row_dot, row_sum


def layernorm_forward(x, weight, bias, eps=1e-5):
    """Normalise each row of ``x`` (..., C), then scale by ``weight`` (C,) and shift by ``bias`` (C,)."""
    check_float_array("x", x, min_ndim=1)
    check_float_array("weight", weight, ndim=1)
    check_float_array("bias", bias, ndim=1)
    check_same_dtype(x=x, weight=weight, bias=bias)
    C = x.shape[-1]
    if C == 0:
        raise ValueError(f"x must have at least one feature to normalise, got shape {x.shape}")
    if weight.shape != (C,) or bias.shape != (C,):
        raise ValueError(f"weight and bias must have shape ({C},) for x of shape {x.shape}, "
                         f"got weight {weight.shape} and bias {bias.shape}")
    check_number_above("eps", eps, 0)
    mean = row_sum(x) * (1.0 / C)                          # (..., 1)
    xhat = x - mean                                        # (..., C), centred; normalised below
    var = row_dot(xhat, xhat) * (1.0 / C)                  # (..., 1), biased variance
    rstd = 1.0 / np.sqrt(var + eps)                        # (..., 1); eps a Python float keeps the dtype
    xhat *= rstd                                           # (..., C)
    out = xhat * weight                                    # (..., C)
    out += bias
    cache = (xhat, rstd, weight)
    return out, cache


def layernorm_backward(dout, cache):
    """Gradients ``(dx, dweight, dbias)``; see docs/derivations/layernorm.md."""
    xhat, rstd, weight = cache
    check_dout(dout, xhat.shape, xhat.dtype)
    C = xhat.shape[-1]
    dout2 = dout.reshape(-1, C)                            # (N, C)
    xhat2 = xhat.reshape(-1, C)                            # (N, C)
    dbias = column_sum(dout2)                              # (C,)
    dweight = np.einsum("nc,nc->c", dout2, xhat2)          # (C,) without an (N, C) temporary
    g = dout * weight                                      # (..., C), gradient w.r.t. xhat
    g_mean = row_sum(g) * (1.0 / C)                        # (..., 1)
    gx_mean = row_dot(g, xhat) * (1.0 / C)                 # (..., 1)
    dx = g
    dx -= g_mean
    dx -= xhat * gx_mean
    dx *= rstd                                             # (..., C)
    return dx, dweight, dbias
