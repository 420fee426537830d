r"""Hypothesis strategies for property-testing layers written in numgpt's style.

This module needs `Hypothesis <https://hypothesis.readthedocs.io>`_, which is an
*optional* dependency (``pip install "numgpt[test]"``). Nothing else in numgpt
imports it, so ``import numgpt`` works without it; import
``numgpt.strategies`` only from tests.

Why not simply ``hypothesis.extra.numpy.arrays``? Because a gradient check
passes vacuously on inputs that hide mistakes, and Hypothesis, left alone,
likes exactly those inputs:

* it shrinks towards zeros and, through its ``fill`` mechanism, produces arrays
  in which most elements share one value. A layer-norm row of equal values has
  zero variance, so ``x - mean`` is all zeros and any error in the
  centring term is invisible (and the finite differences become
  ill-conditioned). :func:`float_arrays` draws every element independently and
  guarantees that each row (the last axis) spans at least ``min_row_spread``;
* a gain of exactly 1 or a bias of exactly 0 hides a missing factor or term:
  :func:`gains` and :func:`biases` stay away from them;
* an embedding backward that drops repeated ids (``dW[idx] += dy``) is right
  whenever the ids happen to be distinct: :func:`token_ids` always repeats one;
* a loss backward that divides by the wrong count is right when nothing is
  ignored: :func:`targets` always ignores some, and never all;
* an upstream gradient of all ones (or all zeros, or one constant) lets errors
  cancel across outputs: :func:`upstream_grads` never is one.

Shapes: :func:`dims` draws small shapes under a total-size budget (a full
finite-difference check costs a few forward passes *per element*), and
:func:`attention_shapes` draws ``(B, T, n_head, head_dim)`` so that
``C = n_head * head_dim`` is divisible by ``n_head`` by construction.

A strategy that gets a degenerate draw repairs it by changing one or two
elements instead of rejecting it, so Hypothesis never gives up on a filter and
shrinking still works: the smallest (all-zero) draw simply becomes the
smallest non-degenerate one.

Example::

    from hypothesis import given
    from numgpt import strategies as ns

    @given(ns.float_arrays((3, 4)), ns.gains(4), ns.biases(4), ns.upstream_grads((3, 4)))
    def test_my_norm(x, w, b, dout):
        ...

README.md, "Property-testing your own layer", has a whole test file: a layer,
the property (``numgpt.gradcheck.check_layer`` on drawn inputs), and the
negative control that shows the property catches a wrong backward.
"""

import math

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError as exc:  # pragma: no cover - exercised only without Hypothesis
    raise ImportError(
        "numgpt.strategies needs the optional dependency Hypothesis: "
        "pip install 'numgpt[test]' (or pip install hypothesis)") from exc

__all__ = [
    "dims", "attention_shapes", "float_arrays", "gains", "biases",
    "token_ids", "targets", "upstream_grads",
]


# --- helpers --------------------------------------------------------------------

def _shape(shape):
    """Normalise an int or a sequence of ints to a tuple, rejecting anything else."""
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be an int or a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sides, got {shape}")
    return shape


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating) or dtype.itemsize not in (2, 4, 8):
        raise TypeError(f"dtype must be float16, float32 or float64, got {dtype}")
    return dtype


def _inward_bounds(lo, hi, dtype):
    """``lo`` and ``hi`` as values of ``dtype``, rounded towards each other.

    Hypothesis draws at the dtype's width, which demands representable bounds;
    rounding a bound that is not (0.9 in float32) *inwards* keeps every value
    inside what was asked for.
    """
    kind = dtype.type
    lo_d, hi_d = kind(lo), kind(hi)
    if float(lo_d) < lo:
        lo_d = np.nextafter(lo_d, kind(np.inf))
    if float(hi_d) > hi:
        hi_d = np.nextafter(hi_d, kind(-np.inf))
    return lo_d, hi_d


def _bounded_floats(lo, hi, dtype):
    """Finite floats in ``[lo, hi]`` that are exactly representable in ``dtype``."""
    lo_d, hi_d = _inward_bounds(lo, hi, dtype)
    # Subnormals test the FPU's slow path, not the layer's mathematics.
    return st.floats(float(lo_d), float(hi_d), allow_nan=False, allow_infinity=False,
                     allow_subnormal=False, width=8 * dtype.itemsize)


def _elementwise(dtype, shape, elements):
    """An array strategy that draws *every* element from ``elements``.

    ``fill=st.nothing()`` switches off Hypothesis' fill optimisation, which
    would otherwise set most elements to one repeated value.
    """
    return hnp.arrays(dtype, shape, elements=elements, fill=st.nothing())


# --- shapes ---------------------------------------------------------------------

def dims(min_dims=1, max_dims=3, min_side=1, max_side=4, max_size=None):
    """Array shapes (tuples of ints) with a bounded number of elements.

    ``min_dims..max_dims`` axes, each side in ``min_side..max_side``; with
    ``max_size`` the product of the sides never exceeds it (sides are drawn one
    after another from what the budget leaves, so nothing is rejected). Use it
    to keep element-wise gradient checks cheap: they cost a few forward passes
    per element.
    """
    if not 0 <= min_dims <= max_dims:
        raise ValueError(f"need 0 <= min_dims <= max_dims, got min_dims={min_dims}, max_dims={max_dims}")
    if not 0 <= min_side <= max_side:
        raise ValueError(f"need 0 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    if max_size is not None and max_size < max(min_side, 1) ** min_dims:
        raise ValueError(f"max_size={max_size} is below the smallest shape allowed "
                         f"({min_dims} sides of at least {min_side})")

    most_dims = max_dims
    if max_size is not None and min_side > 1:         # more axes than this cannot fit at their smallest side
        most_dims = min_dims
        while most_dims < max_dims and min_side ** (most_dims + 1) <= max_size:
            most_dims += 1

    @st.composite
    def draw_shape(draw):
        n = draw(st.integers(min_dims, most_dims))
        shape = []
        budget = max_size
        for i in range(n):
            hi = max_side
            if budget is not None:
                # Leave room for the remaining axes at their smallest side.
                rest = max(min_side, 1) ** (n - i - 1)
                hi = min(hi, max(budget // rest, min_side))
            side = draw(st.integers(min_side, hi))
            shape.append(side)
            if budget is not None and side > 0:
                budget //= side
        return tuple(shape)

    return draw_shape()


def attention_shapes(max_batch=2, max_T=4, max_heads=2, max_head_dim=3):
    """``(B, T, n_head, head_dim)`` for causal self-attention.

    The attention input is ``qkv`` of shape ``(B, T, 3 * n_head * head_dim)``:
    drawing the head size rather than C makes ``C % n_head == 0`` hold by
    construction. Every side is at least 1.
    """
    for name, value in (("max_batch", max_batch), ("max_T", max_T),
                        ("max_heads", max_heads), ("max_head_dim", max_head_dim)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return st.tuples(st.integers(1, max_batch), st.integers(1, max_T),
                     st.integers(1, max_heads), st.integers(1, max_head_dim))


# --- floating-point arrays --------------------------------------------------------

def float_arrays(shape, dtype=np.float64, min_value=-3.0, max_value=3.0, min_row_spread=None):
    """Arrays of finite floats in ``[min_value, max_value]``, drawn element by element.

    No NaN, no infinity, no subnormals, and no fill value: each element is its
    own draw. Rows are the last axis; when it has two or more elements every
    row spans at least ``min_row_spread`` (``max - min`` of the row), by default
    a quarter of the range. A row that does not is repaired by setting its
    first element to ``min_value`` and its last to ``max_value``. Pass
    ``min_row_spread=0`` to allow any row (constant ones included).

    Why the spread: a nearly constant row makes layer norm divide by almost
    ``sqrt(eps)``, a regime where a finite-difference step is no longer small
    compared with the function's scale, and where a missing centring term
    goes unnoticed.
    """
    shape = _shape(shape)
    dtype = _float_dtype(dtype)
    if not (math.isfinite(min_value) and math.isfinite(max_value) and min_value < max_value):
        raise ValueError(f"need finite min_value < max_value, got min_value={min_value}, max_value={max_value}")
    lo, hi = _inward_bounds(min_value, max_value, dtype)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise ValueError(f"[{min_value}, {max_value}] holds no finite {dtype} value")
    if min_row_spread is None:
        min_row_spread = (max_value - min_value) / 4.0
    widest = float(hi) - float(lo)        # exact: the difference of two values of dtype, in float64
    if not 0 <= min_row_spread <= widest:
        raise ValueError(f"min_row_spread must be in [0, {widest!r}] (the widest row of {dtype} values in "
                         f"[{min_value}, {max_value}]), got {min_row_spread}")
    base = _elementwise(dtype, shape, _bounded_floats(min_value, max_value, dtype))
    if len(shape) == 0 or shape[-1] < 2 or min_row_spread == 0:
        return base

    def spread_rows(x):
        x = x.copy()
        rows = x.reshape(-1, shape[-1])                   # a view of the copy
        narrow = np.ptp(rows.astype(np.float64), axis=1) < min_row_spread
        rows[narrow, 0] = lo
        rows[narrow, -1] = hi
        return x

    return base.map(spread_rows)


def gains(shape, dtype=np.float64):
    """Multiplicative parameters (layer-norm weights) kept away from 1.

    Each element is in ``[0.5, 0.9]``, ``[1.1, 2]`` or ``[-2, -0.5]``: never
    within 0.1 of the identity gain (which hides a forgotten factor), never
    near 0 (which hides everything), and sometimes negative.
    """
    shape = _shape(shape)
    dtype = _float_dtype(dtype)
    elements = st.one_of(_bounded_floats(0.5, 0.9, dtype), _bounded_floats(1.1, 2.0, dtype),
                         _bounded_floats(-2.0, -0.5, dtype))
    return _elementwise(dtype, shape, elements)


def biases(shape, dtype=np.float64):
    """Additive parameters kept away from 0: each element has ``0.1 <= |b| <= 2``, either sign."""
    shape = _shape(shape)
    dtype = _float_dtype(dtype)
    elements = st.one_of(_bounded_floats(0.1, 2.0, dtype), _bounded_floats(-2.0, -0.1, dtype))
    return _elementwise(dtype, shape, elements)


def upstream_grads(shape, dtype=np.float64, scale=1.0):
    """Random upstream gradients ``dout`` in ``[-scale, scale]``.

    Never degenerate: at least one element has ``|d| >= scale / 4`` (an all-zero
    ``dout`` makes every backward, right or wrong, agree with finite
    differences), and an array of two or more elements is never constant (so
    never all ones, whose errors can cancel across outputs). A single element
    is never exactly 1.

    Keep ``scale`` modest for gradient checks at a 1e-7 relative tolerance:
    finite-difference round-off grows with ``|dout| * |out|``, and where a true
    gradient entry is near zero by cancellation that round-off is all the check
    sees (numgpt.gradcheck judges entries below 1e-5 in absolute terms).
    """
    shape = _shape(shape)
    dtype = _float_dtype(dtype)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a finite positive number, got {scale}")
    base = _elementwise(dtype, shape, _bounded_floats(-scale, scale, dtype))
    big = dtype.type(0.75 * scale)

    def make_informative(d):
        d = d.copy()
        flat = d.reshape(-1)
        if flat.size == 0:
            return d
        if np.max(np.abs(flat)) < scale / 4:
            flat[0] = big
        if flat.size > 1 and np.all(flat == flat[0]):
            flat[-1] = -flat[0] / 2
        if flat.size == 1 and flat[0] == 1:
            flat[0] = -big
        return d

    return base.map(make_informative)


# --- integer arrays ---------------------------------------------------------------

def token_ids(shape, vocab_size):
    """int64 token ids in ``[0, vocab_size)``, with at least one id repeated when size > 1.

    The repeat is placed by copying one drawn position's id into another drawn
    position, so where it lands varies from example to example.
    """
    shape = _shape(shape)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    base = _elementwise(np.int64, shape, st.integers(0, int(vocab_size) - 1))
    size = int(np.prod(shape))

    @st.composite
    def with_repeat(draw):
        ids = draw(base).copy()
        flat = ids.reshape(-1)
        if size > 1 and np.unique(flat).size == size:
            src = draw(st.integers(0, size - 1))
            dst = draw(st.integers(0, size - 2))
            dst += dst >= src                      # any position but src
            flat[dst] = flat[src]
        return ids

    return with_repeat()


def targets(shape, vocab_size, ignore_index=-1):
    """int64 class targets in ``[0, vocab_size)``, some equal to ``ignore_index``, never all.

    With two or more elements at least one target is ignored and at least one
    is a class; a single element is always a class. Classes never equal
    ``ignore_index`` even when it lies inside ``[0, vocab_size)``.
    """
    shape = _shape(shape)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    classes = [c for c in range(int(vocab_size)) if c != ignore_index]
    if not classes:
        raise ValueError(f"vocab_size={vocab_size} leaves no class besides ignore_index={ignore_index}")
    size = int(np.prod(shape))
    if size == 0:
        raise ValueError(f"shape {shape} has no elements: there is no target to keep")
    elements = st.one_of(st.sampled_from(classes), st.just(int(ignore_index)))
    base = _elementwise(np.int64, shape, elements)

    @st.composite
    def some_ignored(draw):
        y = draw(base).copy()
        flat = y.reshape(-1)
        ignored = flat == ignore_index
        if ignored.all():
            flat[draw(st.integers(0, size - 1))] = draw(st.sampled_from(classes))
        elif size > 1 and not ignored.any():
            flat[draw(st.integers(0, size - 1))] = ignore_index
        return y

    return some_ignored()
