r"""Root-mean-square layer normalisation over the last axis (Llama's ``RMSNorm``; QK-norm).

Forward
-------
For one row :math:`x \in \mathbb{R}^C`, with an optional weight (gain) :math:`\gamma`:

.. math::
    m = \tfrac1C \textstyle\sum_i x_i^2, \quad
    r = (m + \epsilon)^{-1/2}, \quad
    \hat x_i = x_i\, r, \quad
    y_i = \gamma_i \hat x_i \quad (y = \hat x \text{ without a weight})

No mean is subtracted and there is no bias (Zhang & Sennrich 2019; Llama). The
default :math:`\epsilon = 10^{-6}` is Llama's ``rms_norm_eps`` as Hugging Face
transformers' ``LlamaRMSNorm`` defaults it (PyTorch's ``nn.RMSNorm`` defaults to
the dtype's machine epsilon instead; pass ``eps`` to match it).

Backward
--------
With :math:`g_i = \gamma_i\, dy_i` (the gradient reaching :math:`\hat x`; :math:`g = dy`
without a weight):

.. math::
    d\gamma = \textstyle\sum_{rows} dy \odot \hat x, \qquad
    dx_i = r \left( g_i - \hat x_i\, \overline{g \hat x} \right)

where the bar is the mean over the C features of the row. Layer norm's
:math:`-\overline{g}` term is absent because nothing was centred. Hence
:math:`\langle dx, x \rangle = r \langle g, x \rangle\, \epsilon / (m + \epsilon)`:
with :math:`\epsilon \to 0` the input gradient is orthogonal to the row (the output
does not change when the row is scaled). QK-norm is this function applied to
queries and keys of shape (B, H, T, D), over D. Derivation: docs/derivations/rmsnorm.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array, check_number_above, check_same_dtype, row_dot

RMSNORM_EPS = 1e-6


def rmsnorm_forward(x, weight=None, eps=RMSNORM_EPS):
    """Normalise each row of ``x`` (..., C) by its root mean square, then scale by ``weight`` (C,) if given."""
    check_float_array("x", x, min_ndim=1)
    C = x.shape[-1]
    if C == 0:
        raise ValueError(f"x must have at least one feature to normalise, got shape {x.shape}")
    if weight is not None:
        check_float_array("weight", weight, ndim=1)
        check_same_dtype(x=x, weight=weight)
        if weight.shape != (C,):
            raise ValueError(f"weight must have shape ({C},) for x of shape {x.shape}, got {weight.shape}")
    check_number_above("eps", eps, 0)
    ms = row_dot(x, x) * (1.0 / C)                         # (..., 1), mean of squares m
    rstd = 1.0 / np.sqrt(ms + float(eps))                  # (..., 1), r; a Python float keeps the dtype
    out = x * rstd                                         # (..., C), xhat
    if weight is not None:
        out *= weight                                      # (..., C), y = weight * xhat
    # x, not xhat: without a weight xhat is the output itself, which the caller may change.
    cache = (x, rstd, weight)
    return out, cache


def rmsnorm_backward(dout, cache):
    """Gradient ``dx``, or ``(dx, dweight)`` when the forward had a weight; see docs/derivations/rmsnorm.md."""
    x, rstd, weight = cache
    check_dout(dout, x.shape, x.dtype)
    C = x.shape[-1]
    xhat = x * rstd                                        # (..., C), recomputed: one pass
    g = dout if weight is None else dout * weight          # (..., C), gradient w.r.t. xhat
    gx_mean = row_dot(g, xhat) * (1.0 / C)                 # (..., 1)
    dx = xhat * gx_mean                                    # (..., C)
    np.subtract(g, dx, out=dx)
    dx *= rstd                                             # r (g - xhat mean(g xhat))
    if weight is None:
        return dx
    dweight = np.einsum("nc,nc->c", dout.reshape(-1, C), xhat.reshape(-1, C))   # (C,)
    return dx, dweight
