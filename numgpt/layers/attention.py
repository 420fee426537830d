r"""Causal multi-head scaled dot-product attention on GPT-2's fused ``c_attn`` output.

Forward
-------
``qkv`` (B, T, 3C) holds queries, keys and values side by side. Split each into
H heads of size D = C/H; for one batch element and one head, with
:math:`Q, K, V \in \mathbb{R}^{T \times D}`:

.. math::
    S = \frac{Q K^\top}{\sqrt D}, \qquad
    S_{ts} \leftarrow -\infty_{\text{finite}} \text{ for } s > t \ (\text{causal mask}), \qquad
    P = \operatorname{softmax}_{\text{rows}}(S), \qquad
    Y = P V

and the heads' Y are laid side by side again into (B, T, C).

Backward
--------
.. math::
    dV = P^\top dY, \quad
    dP = dY\, V^\top, \quad
    dS = P \odot \big(dP - \operatorname{rowsum}(dP \odot P)\big), \quad
    dQ = \frac{dS\, K}{\sqrt D}, \quad
    dK = \frac{dS^\top Q}{\sqrt D}

Masked entries have :math:`P_{ts} = 0` exactly, so :math:`dS_{ts} = 0` there and
no gradient flows from the future: position t's output depends only on
positions <= t. Derivation: docs/derivations/attention.md.
"""

import functools
import math

import numpy as np

from ._blocks import BLOCK
from ._checks import check_dout, check_float_array, check_same_dtype, row_sum
from .softmax import softmax_backward_from_probs


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, D), contiguous (batched matmul runs twice as fast on it)."""
    B, T, C = x.shape
    return np.ascontiguousarray(x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3))


def merge_heads(x):
    """(B, H, T, D) -> (B, T, C), the inverse of :func:`split_heads`."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def causal_mask(T):
    """Boolean (T, T), True above the diagonal: the future positions a query may not see."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


@functools.lru_cache(maxsize=64)
def causal_bias(T, dtype):
    """Read-only (T, T) additive mask: 0 where a query may look, the dtype's most negative
    finite number above the diagonal (the future).

    Adding it is the masked fill of the math in one broadcast pass, about twice as fast as
    ``np.copyto(..., where=causal_mask(T))`` with its boolean mask (measured on (6, 4, 64, 64)
    float32); ``score + fill`` rounds back to ``fill`` for every score of magnitude below about
    1e31 (float32; 1e292 in float64).
    """
    dtype = np.dtype(dtype)
    bias = np.where(causal_mask(T), np.finfo(dtype).min, 0).astype(dtype)
    bias.flags.writeable = False
    return bias


def head_blocks(B, H, T):
    """``(batch slice, head slice)`` pairs covering the B x H heads, each block about BLOCK scores.

    The attention layer runs the product, the softmax and P V (and in the backward everything
    from dP to dK) on one block at a time, so a block's (T, T) scores stay in L2 cache between
    passes instead of streaming a (B, H, T, T) array through memory once per pass.
    """
    heads = max(1, BLOCK // (T * T))
    if heads >= H:                         # whole batch elements per block (e.g. T = 64)
        per = heads // H
        return [(slice(b, min(b + per, B)), slice(None)) for b in range(0, B, per)]
    return [(slice(b, b + 1), slice(h, min(h + heads, H))) for b in range(B) for h in range(0, H, heads)]


def causal_softmax(q, kT, out=None):
    """P = masked row softmax of the scores q @ kT, (B, H, T, T), written into ``out`` if given.

    Fast path: each row is shifted by its diagonal score S_tt (never masked) rather than
    its maximum m_t. Softmax does not change under a per-row shift, and the diagonal term
    e^0 = 1 keeps every row sum >= 1; the row maximum, a slow reduction over short rows,
    was a third of the forward softmax (measured at (6, 4, 64, 64) float32). Should a score
    exceed its diagonal by enough to overflow exp (by about 88 in float32, 709 in float64),
    the row sums are not finite and the scores are recomputed and shifted by the row
    maximum, as in the math. tests/layers/test_attention.py checks both paths against a
    per-head loop.
    """
    T = q.shape[-2]
    att = np.matmul(q, kT, out=out)                     # (B, H, T, T) scores
    # A finite fill, not -inf: exp(fill - shift) underflows to exactly 0.
    att += causal_bias(T, att.dtype)
    shift = np.diagonal(att, axis1=-2, axis2=-1)[..., None].copy()   # (B, H, T, 1), S_tt
    att -= shift
    with np.errstate(over="ignore"):
        np.exp(att, out=att)
    sums = row_sum(att)                                 # (B, H, T, 1)
    if not np.isfinite(sums).all():                     # exp overflowed: the plain row-max shift
        np.matmul(q, kT, out=att)
        att += causal_bias(T, att.dtype)
        att -= att.max(axis=-1, keepdims=True)
        np.exp(att, out=att)
        sums = row_sum(att)
    att /= sums
    return att


def attention_forward(qkv, n_head):
    """Causal self-attention. ``qkv`` (B, T, 3C) -> out (B, T, C)."""
    check_float_array("qkv", qkv, ndim=3)
    if isinstance(n_head, bool) or not isinstance(n_head, (int, np.integer)) or n_head < 1:
        raise ValueError(f"n_head must be a positive integer, got {n_head!r}")
    B, T, C3 = qkv.shape
    if C3 % 3:
        raise ValueError(f"qkv must have last dimension 3*C (q, k, v fused), got shape {qkv.shape}")
    C = C3 // 3
    if C % n_head:
        raise ValueError(f"C={C} (qkv shape {qkv.shape}) is not divisible by n_head={n_head}")
    if T == 0 or C == 0:
        raise ValueError(f"qkv must hold at least one position and one feature, got shape {qkv.shape}")
    D = C // n_head
    scale = 1.0 / math.sqrt(D)
    # The 1/sqrt(D) scale goes on q (T x D) rather than on the scores (T x T): a smaller pass.
    q = np.multiply(qkv[:, :, :C].reshape(B, T, n_head, D).transpose(0, 2, 1, 3), scale,
                    order="C")                          # (B, H, T, D), split and scaled in one pass
    # Keys are stored transposed: OpenBLAS runs the small batched Q @ K^T 1.6x faster on a
    # contiguous K^T than on a transposed view of K (measured on (6, 4, 64, 32) float32).
    kT = np.ascontiguousarray(qkv[:, :, C:2 * C].reshape(B, T, n_head, D).transpose(0, 2, 3, 1))  # (B, H, D, T)
    v = split_heads(qkv[:, :, 2 * C:], n_head)          # (B, H, T, D)
    att_probs = np.empty((B, n_head, T, T), dtype=qkv.dtype)
    # Y = P V is written straight into the merged (B, T, C) layout: BLAS takes the strided
    # per-head view as its output, which saves merge_heads' copy.
    out = np.empty((B, T, n_head, D), dtype=qkv.dtype)  # (B, T, H, D)
    y = out.transpose(0, 2, 1, 3)                       # (B, H, T, D) view of out
    for b, h in head_blocks(B, n_head, T):              # hot path: see head_blocks
        causal_softmax(q[b, h], kT[b, h], out=att_probs[b, h])
        np.matmul(att_probs[b, h], v[b, h], out=y[b, h])    # Y = P V
    cache = (q, kT, v, att_probs, scale)
    return out.reshape(B, T, C), cache


def attention_backward(dout, cache):
    """Gradient ``dqkv`` (B, T, 3C); see docs/derivations/attention.md."""
    q, kT, v, att_probs, scale = cache
    B, H, T, D = q.shape
    C = H * D
    check_dout(dout, (B, T, C), q.dtype)
    # The three gradients are written straight into the fused layout: dqkv viewed as
    # (3, B, H, T, D) hands BLAS a strided output per block, which saves three copies.
    dqkv = np.empty((B, T, 3, H, D), dtype=q.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)          # (B, H, T, D) views
    # dY is laid out transposed, (B, H, D, T): OpenBLAS is slow only when the second operand
    # alone is a transposed view (A @ B^T), which dY @ V^T would be on a plain dY; read as
    # (dY^T)^T, both products below run at full speed.
    dyT = np.ascontiguousarray(dout.reshape(B, T, H, D).transpose(0, 2, 3, 1))   # (B, H, D, T)
    k_scaled = np.multiply(kT.transpose(0, 1, 3, 2), scale, order="C")  # (B, H, T, D), K / sqrt(D)
    blocks = head_blocks(B, H, T)
    scratch = np.empty(max((att_probs[b, h].size for b, h in blocks), default=0), dtype=q.dtype)   # dP, then dS
    for b, h in blocks:                                 # hot path: as in the forward
        P, dy = att_probs[b, h], dyT[b, h].transpose(0, 1, 3, 2)   # (b, h, T, T), (b, h, T, D)
        np.matmul(P.transpose(0, 1, 3, 2), dy, out=dv[b, h])       # dV = P^T dY
        datt = scratch[:P.size].reshape(P.shape)
        np.matmul(dy, v[b, h].transpose(0, 1, 3, 2), out=datt)    # dP = dY V^T
        softmax_backward_from_probs(datt, P, out=datt)  # dS, zero where masked
        np.matmul(datt, k_scaled[b, h], out=dq[b, h])   # dQ = dS K / sqrt(D)
        np.matmul(datt.transpose(0, 1, 3, 2), q[b, h], out=dk[b, h])   # dK = dS^T Q~; q carries the scale
    return dqkv.reshape(B, T, 3 * C)


def attention_step_forward(qkv, k_cache, v_cache, pos, n_head):
    """Inference-only causal attention of new positions against a key/value cache.

    ``qkv`` (B, t, 3C) holds the fused projections of the ``t`` new positions
    ``pos .. pos+t-1``; ``k_cache`` and ``v_cache`` (B, H, T_max, D) hold the keys
    and values of earlier positions and receive the new ones in place. New
    position ``pos+i`` attends to cached positions ``0 .. pos+i``, exactly as
    :func:`attention_forward` over the whole sequence would (a test compares the
    logits of the two). Returns out (B, t, C); there is no backward.
    """
    check_float_array("qkv", qkv, ndim=3)
    check_float_array("k_cache", k_cache, ndim=4)
    check_float_array("v_cache", v_cache, ndim=4)
    check_same_dtype(qkv=qkv, k_cache=k_cache, v_cache=v_cache)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"k_cache {k_cache.shape} and v_cache {v_cache.shape} must have one shape (B, H, T_max, D)")
    if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or pos < 0:
        raise ValueError(f"pos must be a non-negative integer (the number of cached positions), got {pos!r}")
    B, t, C3 = qkv.shape
    C = C3 // 3
    H, T_max, D = k_cache.shape[1:]
    if C3 != 3 * C or H != n_head or H * D != C or k_cache.shape[0] != B:
        raise ValueError(f"qkv shape {qkv.shape} does not match the cache {k_cache.shape} with n_head={n_head}")
    if pos + t > T_max:
        raise ValueError(f"positions {pos}..{pos + t - 1} exceed the cache length {T_max}")
    q = split_heads(qkv[:, :, :C], H)                          # (B, H, t, D)
    k_cache[:, :, pos:pos + t] = split_heads(qkv[:, :, C:2 * C], H)
    v_cache[:, :, pos:pos + t] = split_heads(qkv[:, :, 2 * C:], H)
    k = k_cache[:, :, :pos + t]                                # (B, H, pos+t, D)
    v = v_cache[:, :, :pos + t]
    att = q @ k.transpose(0, 1, 3, 2)                          # (B, H, t, pos+t)
    att *= 1.0 / math.sqrt(D)
    future = np.triu(np.ones((t, pos + t), dtype=bool), k=pos + 1)   # new query i may not see pos+i+1..
    np.copyto(att, np.finfo(att.dtype).min, where=future)
    att -= att.max(axis=-1, keepdims=True)
    np.exp(att, out=att)
    att /= att.sum(axis=-1, keepdims=True)
    return merge_heads(att @ v)                                # (B, t, C)
