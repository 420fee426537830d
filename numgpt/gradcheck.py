r"""Finite-difference gradient checking for any forward/backward pair.

What this module gives (the role CS231n's ``gradient_check.py`` and
``torch.autograd.gradcheck`` play):

* :func:`numerical_gradient` — the central-difference gradient of a scalar
  function, element by element.
* :func:`numerical_vjp` — for an array-valued ``f``, the gradient of
  :math:`\langle dout, f(x)\rangle`, i.e. the vector-Jacobian product
  :math:`J^\top dout`, as ``sum((f(x+h) - f(x-h)) * dout) / 2h`` per element.
* :func:`rel_error` and :func:`within_tolerance` — how far apart an analytic
  and a numerical gradient are (formulas below).
* :func:`adjoint_check` — a random-direction test that costs two forwards and
  one backward at any size: for a random direction u,
  :math:`\langle dout, J u\rangle` by finite differences must equal
  :math:`\langle J^\top dout, u\rangle` by the backward.
* :func:`check_layer` — one call that checks every differentiable input of a
  pair that follows numgpt's convention: ``forward(*inputs) -> (out, cache)``
  and ``backward(dout, cache) -> grads`` (a single array or a tuple, in the
  order of the differentiable inputs).

Difference formulas. With step h, the second-order central difference is
:math:`f'(x) \approx (f(x+h) - f(x-h)) / 2h` (truncation error
:math:`O(h^2)`); the fourth-order one is
:math:`f'(x) \approx (f(x-2h) - 8f(x-h) + 8f(x+h) - f(x+2h)) / 12h`
(truncation :math:`O(h^4)`). Round-off contributes about
:math:`\varepsilon |f| / h`. In float64 (:math:`\varepsilon \approx 10^{-16}`)
order 2 with h = 1e-5 leaves errors near 1e-11, order 4 with h = 1e-3 near
1e-13: the default, and what makes a 1e-7 relative criterion meaningful for
every gradient entry down to 1e-5. That holds while the function's higher
derivatives are of order 1. A layer that divides by a row's scale has larger
ones when the scale is small. For a row of RMS 0.28 the order-4 truncation error
reached 5e-12, so draw such rows away from a small scale (see ``min_row_spread``
in :mod:`numgpt.strategies`). Gradient checks belong in float64: in
float32 round-off alone is about 1e-7 / h, so a right backward shows relative
errors near 1e-4. That is why :func:`check_layer` upcasts float16 and float32
inputs to float64 before checking (and records that it did), as
``torch.autograd.gradcheck`` asks for double inputs.

Error measures. For analytic a and numerical n (arrays of one shape):

* relative error :math:`\max_i \frac{|a_i - n_i|}{\max(|a_i|, |n_i|, \text{floor})}`
  with :math:`\text{floor} = 10^{-5} \max(1, \max_j |a_j|, \max_j |n_j|)`: it keeps
  entries that are genuinely zero or tiny, where both sides are mostly
  round-off, from reading as large relative errors. Below the floor the
  measure becomes absolute (1e-7 relative = 1e-12 absolute for gradients of
  order 1); it grows with the gradient's scale because round-off does;
* the pass criterion, element-wise: :math:`|a_i - n_i| \le \text{atol} + \text{rtol}\,\max(|a_i|, |n_i|)`.
"""

from dataclasses import dataclass, field

import numpy as np

DEFAULT_FLOOR = 1e-5


# --- numerical derivatives ---------------------------------------------------

def _stencil(order):
    """(offsets k, weights w_k, denominator c) of a central difference.

    The derivative is ``sum_k w_k (f(x + k h) - f(x - k h)) / (c h)``. Each
    symmetric pair is subtracted before anything else, so outputs that do not
    depend on the perturbed element cancel exactly instead of leaving round-off.
    """
    if order == 2:
        return (1.0,), (1.0,), 2.0
    if order == 4:
        return (1.0, 2.0), (8.0, -1.0), 12.0
    raise ValueError(f"order must be 2 or 4, got {order!r}")


def default_step(dtype, order=4):
    """A step that balances truncation against round-off for ``dtype`` and ``order``."""
    eps = np.finfo(dtype).eps
    return float(eps ** (1.0 / (order + 1)))   # about 1e-3 (float64, order 4), 6e-6 (float64, order 2)


def numerical_vjp(f, x, dout, h=None, order=2):
    """Gradient of ``<dout, f(x)>`` w.r.t. ``x`` by central differences, element by element.

    ``f`` maps an array shaped like ``x`` to an array shaped like ``dout`` (or a
    scalar, with ``dout`` a scalar). ``x`` (a floating-point array) is perturbed
    in place and restored, also when ``f`` raises. Costs ``order`` evaluations
    of ``f`` per element of ``x``.
    """
    if not (isinstance(x, np.ndarray) and x.dtype.kind == "f"):
        raise TypeError(f"x must be a floating-point numpy array (a step h cannot perturb integers), got "
                        f"{x.dtype if isinstance(x, np.ndarray) else type(x).__name__}")
    offsets, weights, denom = _stencil(order)
    h = default_step(x.dtype, order) if h is None else h
    dout = np.asarray(dout)
    grad = np.zeros_like(x)
    if x.size == 0:
        return grad
    flat_x = x.reshape(-1)           # a view: perturbing it perturbs x
    if not np.shares_memory(flat_x, x):
        raise ValueError("x must be contiguous so it can be perturbed in place")
    flat_g = grad.reshape(-1)
    for i in range(flat_x.size):
        old = flat_x[i]
        diff = 0.0
        try:
            for off, w in zip(offsets, weights):
                flat_x[i] = old + off * h
                f_plus = _output(f(x), dout)
                flat_x[i] = old - off * h
                f_minus = _output(f(x), dout)
                diff = diff + w * (f_plus - f_minus)    # combine outputs first, then contract with dout
        finally:
            flat_x[i] = old
        flat_g[i] = np.sum(diff * dout) / (denom * h)
    return grad


def _output(out, dout):
    """``f``'s output as a float64 array of its own: a view of ``x`` (an identity, a reshape)
    would otherwise move with the next perturbation. Its shape must be ``dout``'s."""
    out = np.array(out, dtype=np.float64)
    if out.shape != dout.shape:
        raise ValueError(f"dout has shape {dout.shape} but f(x) returns shape {out.shape}; they must match")
    return out


def numerical_gradient(f, x, h=None, order=2):
    """Central-difference gradient of a scalar function ``f`` at ``x``."""
    return numerical_vjp(f, x, 1.0, h=h, order=order)


# --- comparing gradients -------------------------------------------------------

def rel_error(analytic, numeric, floor=None):
    """``max_i |a_i - n_i| / max(|a_i|, |n_i|, floor)`` (0.0 for empty arrays).

    ``floor`` defaults to ``1e-5 * max(1, max|a|, max|n|)`` (see the module docstring).
    """
    a, n = _same_shape(analytic, numeric)
    if a.size == 0:
        return 0.0
    if floor is None:
        floor = DEFAULT_FLOOR * max(1.0, float(np.abs(a).max()), float(np.abs(n).max()))
    scale = np.maximum(np.maximum(np.abs(a), np.abs(n)), floor)
    with np.errstate(invalid="ignore"):
        errors = np.atleast_1d(np.abs(a - n) / scale)
    errors[np.atleast_1d((a == n) & (scale == 0))] = 0.0      # 0 against 0 with floor=0 agrees exactly
    return float(np.max(errors))


def within_tolerance(analytic, numeric, rtol=1e-7, atol=1e-10):
    """Element-wise ``|a - n| <= atol + rtol * max(|a|, |n|)`` for every element, all of them finite.

    An inf or NaN on either side fails: ``inf <= rtol * inf`` would otherwise hold.
    """
    a, n = _same_shape(analytic, numeric)
    if not (np.isfinite(a).all() and np.isfinite(n).all()):
        return False
    return bool(np.all(np.abs(a - n) <= atol + rtol * np.maximum(np.abs(a), np.abs(n))))


def _same_shape(analytic, numeric):
    """Both as float64 arrays of one shape: broadcasting would let a gradient missing its sum pass."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic and numeric gradients differ in shape: {a.shape} vs {n.shape}")
    return a, n


def adjoint_check(f, x, dout, grad, u=None, rng=None, h=None, order=4):
    """Compare ``<dout, J u>`` (finite differences along u) with ``<grad, u>`` (backward).

    ``grad`` is the backward's ``J^T dout``. Returns ``(fd, analytic, rel)``
    with ``rel = |fd - analytic| / max(|fd|, |analytic|, floor)``. A direction
    ``u`` is drawn from ``rng`` when not given. Costs ``order`` forwards.
    """
    if np.shape(grad) != np.shape(x):
        raise ValueError(f"grad has shape {np.shape(grad)} but x has shape {np.shape(x)}; a gradient has its "
                         f"input's shape (a parameter broadcast over rows needs its sum over them)")
    if u is None:
        rng = np.random.default_rng(0) if rng is None else rng
        u = rng.standard_normal(x.shape).astype(x.dtype)
    offsets, weights, denom = _stencil(order)
    h = default_step(x.dtype, order) if h is None else h
    dout = np.asarray(dout)
    diff = 0.0
    for off, w in zip(offsets, weights):
        f_plus = _output(f(x + off * h * u), dout)
        f_minus = _output(f(x - off * h * u), dout)
        diff = diff + w * (f_plus - f_minus)
    fd = float(np.sum(diff * dout) / (denom * h))
    analytic = float(np.sum(np.asarray(grad, dtype=np.float64) * u))
    rel = abs(fd - analytic) / max(abs(fd), abs(analytic), DEFAULT_FLOOR)
    return fd, analytic, rel


# --- checking a layer ------------------------------------------------------------

@dataclass
class CheckResult:
    """The outcome of checking one input of a layer.

    ``input_dtype`` is the dtype the caller passed; ``checked_dtype`` the one the
    check ran in (float64 after an upcast); ``out_dtype`` the dtype the forward
    returned during the check. ``note`` says in words what the dtypes mean for
    this result (empty when there is nothing to say).
    """
    name: str
    shape: tuple
    method: str            # "full" (every element) or "adjoint" (random direction)
    max_rel_error: float
    max_abs_error: float
    passed: bool
    analytic: np.ndarray = field(default=None, repr=False)
    numeric: np.ndarray = field(default=None, repr=False)
    input_dtype: str = "float64"
    checked_dtype: str = "float64"
    out_dtype: str = "float64"
    note: str = ""

    @property
    def upcast(self):
        """True when the input was converted to a wider float type for the check."""
        return self.input_dtype != self.checked_dtype


def _as_tuple(grads):
    return tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)


def _default_wrt(inputs):
    return tuple(i for i, a in enumerate(inputs)
                 if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating))


def _is_narrow_float(a):
    """A float16 or float32 array: too coarse for finite differences at a 1e-7 tolerance."""
    return isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating) and a.dtype.itemsize < 8


def _own_copy(a, upcast):
    """A C-contiguous copy of an array input (in float64 if ``upcast`` and it is a narrow float)."""
    if not isinstance(a, np.ndarray):
        return a
    dtype = np.float64 if upcast and _is_narrow_float(a) else a.dtype
    return a.astype(dtype, order="C", copy=True)


def _dtype_note(input_dtype, checked_dtype, out_dtype, passed):
    """What the dtypes of one check mean, in words, for CheckResult.note."""
    parts = []
    if input_dtype != checked_dtype:
        parts.append(f"the {input_dtype} input was upcast to {checked_dtype} for the check")
    if out_dtype is not None and np.dtype(out_dtype).itemsize < 8:
        roundoff = (f"so the finite differences carry {out_dtype} round-off "
                    f"(about eps/h relative: 1e-5 to 1e-4 in float32)")
        if np.dtype(checked_dtype).itemsize >= 8:
            parts.append(f"the forward returned {out_dtype} for {checked_dtype} inputs, {roundoff}")
            if not passed:
                parts.append("a right backward fails a 1e-7 tolerance this way: let the forward compute "
                             "in its inputs' dtype, or loosen rtol/atol")
        else:
            parts.append(f"checked in {checked_dtype} as passed (upcast=False), {roundoff}")
            if not passed:
                parts.append("loosen rtol/atol, or check in float64 (upcast=True)")
    return "; ".join(parts)


def check_layer(forward, backward, inputs, *, wrt=None, names=None, dout=None, seed=0,
                method="full", rtol=1e-7, atol=1e-10, h=None, order=4, upcast=True):
    """Check ``backward`` against finite differences of ``forward`` for each differentiable input.

    ``forward(*inputs) -> (out, cache)``; ``backward(dout, cache)`` returns one
    gradient per entry of ``wrt`` (a single array when there is one), in order,
    then at most ``None`` for optional inputs left out (a bias of None).
    ``wrt`` defaults to the positions of every floating-point array among
    ``inputs``; other inputs (ids, targets, integers) are passed through. Bind
    keyword arguments and random generators with a lambda or functools.partial;
    a forward that draws random numbers must draw the same ones at every call.

    ``dout`` defaults to standard-normal noise (never all ones, which would hide
    errors that cancel across outputs). ``method="full"`` compares every element
    (cost: ``order`` forwards per input element); ``method="adjoint"`` runs
    :func:`adjoint_check` (``order`` forwards in all). Inputs are copied first,
    so the caller's arrays are never touched. Returns a list of CheckResult.

    Precision: with ``upcast=True`` (the default) float16 and float32 array
    inputs are converted to float64 before anything runs, because in float32
    the finite differences alone are off by about 1e-4 relative and a right
    backward would fail the 1e-7 tolerance. Integer inputs (token ids,
    targets) are passed as they are, and a given ``dout`` takes the dtype the
    forward returns. Each result records ``input_dtype``, ``checked_dtype``
    and ``out_dtype``, and its ``note`` says what they mean; a forward that
    computes in float32 whatever its inputs (so still fails) is named there
    with the dtype it returned. ``upcast=False`` checks in the inputs' own
    dtypes (then loosen ``rtol``/``atol`` for float32).
    """
    if method not in ("full", "adjoint"):
        raise ValueError(f"method must be 'full' or 'adjoint', got {method!r}")
    input_dtypes = [str(a.dtype) if isinstance(a, np.ndarray) else type(a).__name__ for a in inputs]
    inputs = [_own_copy(a, upcast) for a in inputs]
    wrt = _default_wrt(inputs) if wrt is None else tuple(wrt)
    if not wrt:
        raise ValueError("no differentiable (floating-point array) input to check")
    bad = [i for i in wrt if not (isinstance(i, (int, np.integer)) and 0 <= i < len(inputs))]
    if bad:
        raise ValueError(f"wrt holds {bad[0]!r}, not the position of one of the {len(inputs)} inputs")
    names = [f"input{i}" for i in range(len(inputs))] if names is None else list(names)
    if len(names) != len(inputs):
        raise ValueError(f"names has {len(names)} entries for {len(inputs)} inputs")
    # Its own stream (spawn_key), so dout never repeats inputs the caller drew from default_rng(seed):
    # a layer-norm dout equal to its x would have an exactly zero dx.
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x67726164,)))
    out, cache = forward(*inputs)
    out = np.asarray(out)
    out_is_float = np.issubdtype(out.dtype, np.floating)
    if dout is None:
        dout = rng.standard_normal(out.shape)
        dout = dout.astype(out.dtype) if out.ndim else float(dout)
    elif np.shape(dout) != out.shape:
        raise ValueError(f"dout has shape {np.shape(dout)} but the forward's output has shape {out.shape}")
    elif upcast and out_is_float and isinstance(dout, np.ndarray) and np.issubdtype(dout.dtype, np.floating):
        dout = dout.astype(out.dtype)          # the upstream gradient follows the forward's output
    out_dtype = str(out.dtype) if out_is_float else None
    grads = _as_tuple(backward(dout if np.ndim(dout) else float(dout), cache))
    if len(grads) < len(wrt) or any(g is not None for g in grads[len(wrt):]):     # None: an absent input
        which = ", ".join(names[i] for i in wrt)
        raise ValueError(f"backward returned {len(grads)} gradient(s) for {len(wrt)} differentiable input(s) "
                         f"({which}); it returns one per floating-point input, in order (integer inputs such "
                         f"as ids have none), or pass wrt")
    results = []
    for pos, grad in zip(wrt, grads):
        x = inputs[pos]

        def f(xp, pos=pos):
            args = list(inputs)
            args[pos] = xp
            return forward(*args)[0]

        if grad is None or np.shape(grad) != x.shape:
            raise ValueError(f"backward's gradient for {names[pos]} has shape {np.shape(grad)}, "
                             f"expected {x.shape}")
        if method == "full":
            numeric = numerical_vjp(f, x, dout, h=h, order=order)
            abs_err = float(np.max(np.abs(grad - numeric))) if x.size else 0.0
            result = CheckResult(names[pos], x.shape, "full", rel_error(grad, numeric), abs_err,
                                 within_tolerance(grad, numeric, rtol, atol), grad, numeric)
        else:
            fd, analytic, rel = adjoint_check(f, x, dout, grad, rng=rng, h=h, order=order)
            result = CheckResult(names[pos], x.shape, "adjoint", rel, abs(fd - analytic),
                                 within_tolerance(analytic, fd, rtol, atol))
        result.input_dtype, result.checked_dtype = input_dtypes[pos], str(x.dtype)
        result.out_dtype = out_dtype or str(out.dtype)
        result.note = _dtype_note(result.input_dtype, result.checked_dtype, out_dtype, result.passed)
        results.append(result)
    return results


# --- numgpt's own layers ---------------------------------------------------------

def layer_cases(dtype=np.float64, seed=0):
    """Random inputs for every layer in numgpt.layers: ``[(layer, forward, backward, inputs, names)]``.

    Layer-norm gains and biases, and linear biases, are drawn away from 1 and 0
    (an identity gain hides a missing factor); ids repeat; a fifth of the
    cross-entropy targets are ignored.
    """
    from . import layers as L

    rng = np.random.default_rng(seed)

    def randn(*shape, scale=1.0, shift=0.0):
        return (rng.standard_normal(shape) * scale + shift).astype(dtype)

    B, T, H, D, V, T_max = 2, 5, 2, 3, 7, 8
    C = H * D
    ids = rng.integers(0, V, size=(B, T))
    ids[0, :2] = 3                                     # guaranteed repeats
    targets = rng.integers(0, V, size=(B, T))
    targets[rng.random((B, T)) < 0.2] = -1
    targets[0, 0] = 1                                  # never all ignored
    p_drop, mask_seed = 0.3, int(rng.integers(1 << 31))
    return [
        ("embedding", L.embedding_forward, L.embedding_backward,
         (ids, randn(V, C), randn(T_max, C)), ("idx", "wte", "wpe")),
        ("layernorm", L.layernorm_forward, L.layernorm_backward,
         (randn(B, T, C, scale=2.0, shift=0.5), randn(C, scale=0.3, shift=1.5), randn(C, scale=0.3, shift=0.5)),
         ("x", "weight", "bias")),
        ("linear", L.linear_forward, L.linear_backward,
         (randn(B, T, C), randn(C, 3 * C), randn(3 * C, scale=0.3, shift=0.5)), ("x", "w", "b")),
        ("gelu", L.gelu_forward, L.gelu_backward, (randn(B, T, 4 * C, scale=1.5),), ("x",)),
        ("softmax", L.softmax_forward, L.softmax_backward, (randn(B, T, V, scale=2.0),), ("x",)),
        ("attention", lambda qkv: L.attention_forward(qkv, H), L.attention_backward,
         (randn(B, T, 3 * C),), ("qkv",)),
        ("dropout", lambda x: L.dropout_forward(x, p_drop, np.random.default_rng(mask_seed)), L.dropout_backward,
         (randn(B, T, C),), ("x",)),
        ("softmax_cross_entropy", L.softmax_cross_entropy_forward, L.softmax_cross_entropy_backward,
         (randn(B, T, V, scale=1.5), targets), ("logits", "targets")),
        # The layers of today's models (Llama, the modded-nanoGPT speedrun); drawn after GPT-2's, so
        # the cases above keep their random inputs.
        ("rmsnorm", L.rmsnorm_forward, L.rmsnorm_backward,
         (randn(B, T, C, scale=2.0, shift=0.5), randn(C, scale=0.3, shift=1.5)), ("x", "weight")),
        ("qk_norm", lambda q: L.rmsnorm_forward(q), L.rmsnorm_backward, (randn(B, H, T, D, scale=2.0),), ("q",)),
        ("rope", lambda x: L.rope_forward(x, 3), L.rope_backward, (randn(B, H, T, 4),), ("x",)),   # even D
        ("swiglu", L.swiglu_forward, L.swiglu_backward,
         (randn(B, T, 4 * C, scale=2.0), randn(B, T, 4 * C)), ("gate", "up")),
        # 0.05 away from the kink at 0, where a central difference reads h/3 instead of 0
        ("relu_squared", L.relu_squared_forward, L.relu_squared_backward,
         ((lambda x: x + np.copysign(0.05, x))(randn(B, T, 4 * C, scale=1.5)),), ("x",)),
    ]


def check_all_layers(seed=0, rtol=1e-7, atol=1e-10, method="full"):
    """Check every layer of numgpt.layers in float64: ``[(layer, CheckResult)]``."""
    rows = []
    for layer, forward, backward, inputs, names in layer_cases(np.float64, seed):
        for result in check_layer(forward, backward, inputs, names=names, seed=seed,
                                  method=method, rtol=rtol, atol=atol):
            rows.append((layer, result))
    return rows


def format_table(rows, rtol):
    """The table ``numgpt gradcheck`` prints."""
    lines = [f"{'layer':<24}{'input':<10}{'shape':<14}{'method':<9}{'max rel error':>14}  result",
             "-" * 79]
    for layer, r in rows:
        lines.append(f"{layer:<24}{r.name:<10}{str(r.shape):<14}{r.method:<9}{r.max_rel_error:>14.2e}  "
                     f"{'pass' if r.passed and r.max_rel_error < rtol else 'FAIL'}")
    return "\n".join(lines)
