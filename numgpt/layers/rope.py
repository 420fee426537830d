r"""Rotary position embedding (RoPE; Su et al. 2021) of queries or keys, in the "rotate half" layout.

Forward
-------
``x`` (B, H, T, D) holds one head's queries (or keys) per (batch, head), D even,
the layout of :mod:`numgpt.layers.attention`. Position :math:`t` turns each pair
of features :math:`(x_i, x_{i + D/2})`, :math:`i < D/2`, by the angle
:math:`t\, \omega_i` with :math:`\omega_i = \text{base}^{-2i/D}` (base 10000):

.. math::
    y_i = x_i \cos t\omega_i - x_{i+D/2} \sin t\omega_i, \qquad
    y_{i+D/2} = x_{i+D/2} \cos t\omega_i + x_i \sin t\omega_i

This pairing of feature i with feature i + D/2 is the one of GPT-NeoX and of
Llama in Hugging Face transformers (``rotate_half``); the original RoFormer and
Meta's Llama code pair neighbours (2i, 2i + 1) instead. The two layouts differ
by a fixed permutation of the features, which learned q and k projections
absorb, but checkpoints are not interchangeable between them.

Because a rotation by :math:`t\omega` followed by the transpose of one by
:math:`s\omega` is a rotation by :math:`(t - s)\omega`, the score
:math:`\langle \mathrm{rope}(q, t), \mathrm{rope}(k, s) \rangle` depends on the
positions only through :math:`t - s`.

Backward
--------
The map is linear in x and orthogonal: its Jacobian is the rotation itself, so
:math:`dx` is :math:`dy` rotated by the negative angle,

.. math::
    dx_i = dy_i \cos t\omega_i + dy_{i+D/2} \sin t\omega_i, \qquad
    dx_{i+D/2} = dy_{i+D/2} \cos t\omega_i - dy_i \sin t\omega_i

Derivation: docs/derivations/rope.md.
"""

import numpy as np

from ._checks import check_dout, check_float_array, check_int_array, check_number_above

ROPE_BASE = 10000.0


def rope_angles(positions, head_dim, base=ROPE_BASE, dtype=np.float64):
    """``(cos, sin)`` of the angles ``t * base**(-2i/D)``, each (T, D/2), in ``dtype``.

    The angles are formed in float64 and rounded once: in float32 a product
    such as t = 4000 times omega_0 = 1 would already carry an error of about
    2e-4 radians before the cosine is taken.
    """
    half = head_dim // 2
    omega = base ** (-np.arange(half, dtype=np.float64) * (2.0 / head_dim))   # (D/2,), omega_i
    angle = np.asarray(positions, dtype=np.float64)[:, None] * omega          # (T, D/2), t omega_i
    return np.cos(angle).astype(dtype), np.sin(angle).astype(dtype)


def _positions(pos, T):
    """``pos`` as a (T,) integer array: an int is the first position (the rest follow)."""
    if isinstance(pos, np.ndarray):
        check_int_array("pos", pos, ndim=1)
        if pos.shape != (T,):
            raise ValueError(f"pos must hold one position per step, shape ({T},), got {pos.shape}")
        return pos
    if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or pos < 0:
        raise ValueError(f"pos must be a non-negative integer (the first position) or an integer array, "
                         f"got {pos!r}")
    return np.arange(pos, pos + T)


def rope_forward(x, pos=0, base=ROPE_BASE):
    """Rotate ``x`` (B, H, T, D) for positions ``pos .. pos+T-1`` (or ``pos``, a (T,) integer array)."""
    check_float_array("x", x, ndim=4)
    B, H, T, D = x.shape
    if D % 2:
        raise ValueError(f"x must have an even head_dim (features rotate in pairs), got shape {x.shape}")
    check_number_above("base", base, 1)
    positions = _positions(pos, T)
    cos, sin = rope_angles(positions, D, base, x.dtype)  # (T, D/2) each
    half = D // 2
    x1, x2 = x[..., :half], x[..., half:]               # (B, H, T, D/2) views
    out = np.empty_like(x)                              # (B, H, T, D)
    y1, y2 = out[..., :half], out[..., half:]
    np.multiply(x1, cos, out=y1)
    y1 -= x2 * sin                                      # y1 = x1 cos - x2 sin
    np.multiply(x2, cos, out=y2)
    y2 += x1 * sin                                      # y2 = x2 cos + x1 sin
    cache = (cos, sin, x.shape)
    return out, cache


def rope_backward(dout, cache):
    """Gradient ``dx``: ``dout`` rotated by the negative angles; see docs/derivations/rope.md."""
    cos, sin, x_shape = cache
    check_dout(dout, x_shape, cos.dtype)
    half = cos.shape[1]
    dy1, dy2 = dout[..., :half], dout[..., half:]
    dx = np.empty_like(dout)                            # (B, H, T, D)
    dx1, dx2 = dx[..., :half], dx[..., half:]
    np.multiply(dy1, cos, out=dx1)
    dx1 += dy2 * sin                                    # dx1 = dy1 cos + dy2 sin
    np.multiply(dy2, cos, out=dx2)
    dx2 -= dy1 * sin                                    # dx2 = dy2 cos - dy1 sin
    return dx
