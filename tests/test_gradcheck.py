"""Tests for numgpt.gradcheck: the checker has to be right before it can judge the layers.

Known derivatives (polynomials, a quadratic form, an explicit Jacobian), the
error measures on hand-made numbers, and check_layer on a layer written here,
once right and once wrong.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import (
    DEFAULT_FLOOR,
    CheckResult,
    adjoint_check,
    check_layer,
    default_step,
    numerical_gradient,
    numerical_vjp,
    rel_error,
    within_tolerance,
)

# -- a layer defined here, right and wrong -------------------------------------------------


def tanh_forward(x):
    out = np.tanh(x)
    return out, (out,)


def tanh_backward(dout, cache):
    (out,) = cache
    return dout * (1.0 - out * out)


def tanh_backward_buggy(dout, cache):
    (out,) = cache
    return dout * (1.0 - out)          # forgot to square


def scaled_product_forward(x, y, k):
    """out = k * x * y (element-wise); k is an int that is passed through."""
    return k * x * y, (x, y, k)


def scaled_product_backward(dout, cache):
    x, y, k = cache
    return k * dout * y, k * dout * x


# -- numerical derivatives ------------------------------------------------------------------


@pytest.mark.parametrize("order", [2, 4])
def test_numerical_gradient_of_a_cubic(order):
    x = np.random.default_rng(0).uniform(-2, 2, (3, 4))
    grad = numerical_gradient(lambda z: np.sum(z ** 3), x, order=order)
    assert rel_error(grad, 3 * x ** 2) < (1e-8 if order == 2 else 1e-10)


@pytest.mark.parametrize("order", [2, 4])
def test_numerical_gradient_of_a_non_symmetric_quadratic_form(order):
    rng = np.random.default_rng(1)
    A, b, x = rng.standard_normal((5, 5)), rng.standard_normal(5), rng.standard_normal(5)
    grad = numerical_gradient(lambda z: 0.5 * z @ A @ z + b @ z, x, order=order)
    # d/dx (x^T A x / 2) = (A + A^T) x / 2: the symmetric part only.
    assert rel_error(grad, 0.5 * (A + A.T) @ x + b) < 1e-8


def test_fourth_order_beats_second_order_at_the_same_step():
    # At h = 1e-2 truncation dominates: about h^2/6 for order 2 and h^4/30 for order 4.
    x = np.array([0.3, 1.1, -0.7])
    exact = np.cos(x)
    err2 = np.max(np.abs(numerical_gradient(lambda z: np.sum(np.sin(z)), x, h=1e-2, order=2) - exact))
    err4 = np.max(np.abs(numerical_gradient(lambda z: np.sum(np.sin(z)), x, h=1e-2, order=4) - exact))
    assert 1e-6 < err2 < 2e-5
    assert err4 < 1e-9


def test_numerical_vjp_equals_jacobian_transposed_times_dout():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((4, 6))
    x = rng.standard_normal((2, 3))                      # six inputs, shaped
    dout = rng.standard_normal(4)

    def f(z):                                            # f(z) = M tanh(z) + z_0 * z_5
        flat = z.reshape(-1)
        return M @ np.tanh(flat) + flat[0] * flat[5]

    flat = x.reshape(-1)
    jacobian = M * (1 - np.tanh(flat) ** 2)              # (4, 6)
    jacobian[:, 0] += flat[5]
    jacobian[:, 5] += flat[0]
    for order in (2, 4):
        vjp = numerical_vjp(f, x, dout, order=order)
        assert vjp.shape == x.shape
        assert rel_error(vjp, (jacobian.T @ dout).reshape(2, 3)) < 1e-8


def test_numerical_vjp_restores_x_and_rejects_non_contiguous_input():
    x = np.random.default_rng(3).standard_normal((3, 4))
    before = x.copy()
    numerical_vjp(np.sin, x, np.ones((3, 4)))
    np.testing.assert_array_equal(x, before)
    # A strided view that flattens to a view is fine (it is perturbed in place)...
    np.testing.assert_allclose(numerical_vjp(np.sin, x[:, ::2], np.ones((3, 2)), order=4), np.cos(x[:, ::2]),
                               rtol=1e-10)
    # ...but a transpose flattens to a copy, whose perturbations f would never see.
    with pytest.raises(ValueError, match=r"x must be contiguous"):
        numerical_vjp(np.sin, x.T, np.ones((4, 3)))


def test_order_must_be_2_or_4():
    with pytest.raises(ValueError, match=r"order must be 2 or 4, got 3"):
        numerical_gradient(np.sum, np.ones(2), order=3)


def test_default_step():
    assert default_step(np.float64, 4) == pytest.approx(np.finfo(np.float64).eps ** 0.2)
    assert 5e-4 < default_step(np.float64, 4) < 1e-3
    assert 5e-6 < default_step(np.float64, 2) < 7e-6
    assert default_step(np.float32, 4) > 1e-2


# -- error measures -------------------------------------------------------------------------


def test_rel_error_on_hand_made_numbers():
    assert rel_error([1.0, 2.0], [1.0, 2.2]) == pytest.approx(0.2 / 2.2)
    assert rel_error([-1.0], [1.0]) == pytest.approx(2.0)
    assert rel_error([3.0, -4.0], [3.0, -4.0]) == 0.0
    assert rel_error([0.0, 0.0], [0.0, 0.0]) == 0.0                       # both exactly zero
    assert rel_error([0.0], [1.0]) == pytest.approx(1.0)
    assert rel_error(np.zeros(0), np.zeros(0)) == 0.0
    assert rel_error(2.0, 2.5) == pytest.approx(0.2)                        # scalars work


def test_rel_error_floor_makes_tiny_entries_absolute():
    assert DEFAULT_FLOOR == 1e-5
    # 1e-6 vs 0: divided by the floor 1e-5, not by 1e-6.
    assert rel_error([0.0], [1e-6]) == pytest.approx(0.1)
    assert rel_error([1e-13], [3e-13]) == pytest.approx(2e-13 / 1e-5)
    assert rel_error([0.0], [1e-6], floor=1e-7) == pytest.approx(1.0)
    # Above the floor it is relative again.
    assert rel_error([1e-3], [1.1e-3]) == pytest.approx(0.1 / 1.1)


def test_rel_error_rejects_different_shapes():
    with pytest.raises(ValueError, match=r"differ in shape: \(2,\) vs \(3,\)"):
        rel_error(np.zeros(2), np.zeros(3))


def test_within_tolerance():
    assert within_tolerance([1.0], [1.0 + 5e-8])
    assert not within_tolerance([1.0], [1.0 + 1e-6])
    assert within_tolerance([0.0], [5e-11])                 # atol 1e-10
    assert not within_tolerance([0.0], [2e-10])
    assert within_tolerance([1.0, 0.0], [1.0 + 1e-6, 0.0], rtol=1e-5)
    assert not within_tolerance([1.0, 0.0], [1.0, 1e-3], rtol=1e-5, atol=1e-4)
    # Non-finite gradients never pass, even when both sides agree.
    with np.errstate(invalid="ignore"):
        assert within_tolerance([np.inf], [np.inf]) is False
        assert within_tolerance([np.nan], [np.nan]) is False


# -- adjoint check --------------------------------------------------------------------------


def test_adjoint_check_accepts_the_right_gradient_and_rejects_a_wrong_one():
    rng = np.random.default_rng(4)
    x, dout, u = rng.standard_normal((5, 6)), rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    fd, analytic, rel = adjoint_check(np.sin, x, dout, dout * np.cos(x), u=u)
    assert rel < 1e-10
    assert fd == pytest.approx(np.sum(dout * np.cos(x) * u), rel=1e-10)
    assert analytic == pytest.approx(np.sum(dout * np.cos(x) * u), rel=1e-14)
    _, _, rel_wrong = adjoint_check(np.sin, x, dout, dout * np.cos(x) * 1.01, u=u)
    assert rel_wrong > 5e-3


def test_adjoint_check_draws_a_direction_when_none_is_given():
    x = np.random.default_rng(5).standard_normal(10)
    dout = np.ones(10)
    first = adjoint_check(np.tanh, x, dout, 1 - np.tanh(x) ** 2)
    again = adjoint_check(np.tanh, x, dout, 1 - np.tanh(x) ** 2)
    assert first == again and first[2] < 1e-10        # default rng is seeded: reproducible
    other = adjoint_check(np.tanh, x, dout, 1 - np.tanh(x) ** 2, rng=np.random.default_rng(99))
    assert other[0] != first[0] and other[2] < 1e-10


# -- check_layer -----------------------------------------------------------------------------


def test_check_layer_passes_a_right_layer():
    x = np.random.default_rng(6).uniform(-2, 2, (3, 5))
    (result,) = check_layer(tanh_forward, tanh_backward, (x,), names=("x",))
    assert isinstance(result, CheckResult)
    assert result.name == "x" and result.shape == (3, 5) and result.method == "full"
    assert result.passed and result.max_rel_error < 1e-9 and result.max_abs_error < 1e-10
    assert result.analytic.shape == result.numeric.shape == (3, 5)
    np.testing.assert_allclose(result.numeric, result.analytic, rtol=1e-9)


def test_check_layer_fails_a_buggy_layer():
    x = np.random.default_rng(7).uniform(-2, 2, (3, 5))
    (result,) = check_layer(tanh_forward, tanh_backward_buggy, (x,), names=("x",))
    assert not result.passed and result.max_rel_error > 0.1


@given(st.data())
def test_check_layer_on_hypothesis_inputs(data):
    shape = data.draw(ns.dims(max_size=30))
    x = data.draw(ns.float_arrays(shape))
    dout = data.draw(ns.upstream_grads(shape))
    (right,) = check_layer(tanh_forward, tanh_backward, (x,), dout=dout)
    assert right.passed and right.max_rel_error < 1e-7
    (wrong,) = check_layer(tanh_forward, tanh_backward_buggy, (x,), dout=dout)
    # The buggy derivative differs by (1 - t) t, which is 0 only where tanh x = 0.
    if np.any(np.abs(np.tanh(x) * dout) > 1e-3):
        assert not wrong.passed


def test_check_layer_leaves_the_callers_inputs_unchanged():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    x_before, y_before = x.copy(), y.copy()
    seen = []

    def forward(a, b, k):
        seen.append((np.shares_memory(a, x), np.shares_memory(b, y)))
        return scaled_product_forward(a, b, k)

    check_layer(forward, scaled_product_backward, (x, y, 3))
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    assert not any(a or b for a, b in seen)           # the checker perturbed its own copies


def test_check_layer_default_wrt_skips_non_float_inputs_and_names_them():
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal(4), rng.standard_normal(4)
    results = check_layer(scaled_product_forward, scaled_product_backward, (x, y, 3), names=("x", "y", "k"))
    assert [r.name for r in results] == ["x", "y"]
    assert all(r.passed and r.max_rel_error < 1e-7 for r in results)
    # Unnamed inputs are called input<i>.
    results = check_layer(scaled_product_forward, scaled_product_backward, (x, y, 3))
    assert [r.name for r in results] == ["input0", "input1"]


def test_check_layer_with_explicit_wrt():
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal(4), rng.standard_normal(4)

    def forward_wrt_y(a, b, k):
        return scaled_product_forward(a, b, k)

    def backward_wrt_y_only(dout, cache):
        return scaled_product_backward(dout, cache)[1]

    (result,) = check_layer(forward_wrt_y, backward_wrt_y_only, (x, y, 3), wrt=(1,), names=("x", "y", "k"))
    assert result.name == "y" and result.passed


def test_check_layer_scalar_output_layer():
    x = np.random.default_rng(11).standard_normal(6)

    def loss_forward(z):
        return np.sum(z ** 2) / 2, z

    def loss_backward(dloss, z):
        assert isinstance(dloss, float)             # a scalar upstream gradient arrives as a float
        return dloss * z

    (result,) = check_layer(loss_forward, loss_backward, (x,))
    assert result.passed and result.max_rel_error < 1e-9


def test_check_layer_uses_the_given_dout():
    x = np.random.default_rng(12).uniform(-2, 2, (2, 3))
    dout = np.random.default_rng(13).standard_normal((2, 3))
    (result,) = check_layer(tanh_forward, tanh_backward, (x,), dout=dout)
    np.testing.assert_allclose(result.analytic, dout * (1 - np.tanh(x) ** 2), rtol=1e-15)
    # A zero dout makes any backward look right: which is why the default is random noise.
    (fooled,) = check_layer(tanh_forward, tanh_backward_buggy, (x,), dout=np.zeros((2, 3)))
    assert fooled.passed


def test_check_layer_default_dout_is_random_and_seeded():
    x = np.random.default_rng(14).uniform(-1, 1, (3, 3))
    (a,) = check_layer(tanh_forward, tanh_backward, (x,), seed=1)
    (b,) = check_layer(tanh_forward, tanh_backward, (x,), seed=1)
    (c,) = check_layer(tanh_forward, tanh_backward, (x,), seed=2)
    np.testing.assert_array_equal(a.analytic, b.analytic)
    assert np.any(a.analytic != c.analytic)
    dout = a.analytic / (1 - np.tanh(x) ** 2)
    assert not np.allclose(dout, 1.0) and np.unique(np.round(dout, 12)).size > 1


def test_check_layer_adjoint_method_on_a_larger_input():
    x = np.random.default_rng(15).uniform(-2, 2, (200, 50))     # 10,000 elements: 4 forwards in all
    (result,) = check_layer(tanh_forward, tanh_backward, (x,), method="adjoint")
    assert result.method == "adjoint" and result.shape == (200, 50)
    assert result.passed and result.max_rel_error < 1e-7
    assert result.analytic is None and result.numeric is None
    (wrong,) = check_layer(tanh_forward, tanh_backward_buggy, (x,), method="adjoint")
    assert not wrong.passed and wrong.max_rel_error > 1e-2


def test_check_layer_upcasts_float32_inputs_to_float64():
    # In float32 the finite differences alone are off by about 1e-4: a right backward used to
    # fail the default 1e-7 tolerance with no hint why.
    x = np.random.default_rng(16).uniform(-2, 2, (3, 4)).astype(np.float32)
    (result,) = check_layer(tanh_forward, tanh_backward, (x,), names=("x",))
    assert result.passed and result.max_rel_error < 1e-9
    assert (result.input_dtype, result.checked_dtype, result.out_dtype) == ("float32", "float64", "float64")
    assert result.upcast and result.analytic.dtype == np.float64
    assert result.note == "the float32 input was upcast to float64 for the check"
    assert x.dtype == np.float32                     # the caller's array is left as it was
    (wrong,) = check_layer(tanh_forward, tanh_backward_buggy, (x,))
    assert not wrong.passed and wrong.max_rel_error > 0.1


def test_check_layer_float64_inputs_are_not_upcast_and_have_no_note():
    x = np.random.default_rng(16).uniform(-2, 2, (3, 4))
    (result,) = check_layer(tanh_forward, tanh_backward, (x,))
    assert not result.upcast and result.note == "" and result.checked_dtype == "float64"


def test_check_layer_upcasts_floats_but_keeps_integer_inputs():
    rng = np.random.default_rng(17)
    ids, table = np.array([0, 2, 2, 1]), rng.standard_normal((3, 5)).astype(np.float32)
    seen = []

    def lookup_forward(idx, w):
        seen.append((idx.dtype, w.dtype))
        return w[idx], (idx, w.shape)

    def lookup_backward(dout, cache):
        idx, shape = cache
        dw = np.zeros(shape, dtype=dout.dtype)
        np.add.at(dw, idx, dout)
        return dw

    (result,) = check_layer(lookup_forward, lookup_backward, (ids, table), names=("idx", "w"))
    assert result.name == "w" and result.passed and result.max_rel_error < 1e-9
    assert set(seen) == {(np.dtype(np.int64), np.dtype(np.float64))}


def test_check_layer_given_float32_dout_follows_the_forwards_dtype():
    rng = np.random.default_rng(18)
    x, dout = rng.uniform(-2, 2, (2, 3)).astype(np.float32), rng.standard_normal((2, 3)).astype(np.float32)

    def strict_backward(d, cache):                   # numgpt's layers refuse a dout of another dtype
        assert d.dtype == cache[0].dtype
        return tanh_backward(d, cache)

    (result,) = check_layer(tanh_forward, strict_backward, (x,), dout=dout)
    assert result.passed and result.max_rel_error < 1e-9


def test_check_layer_names_the_dtype_of_a_forward_that_computes_in_float32():
    # Upcasting cannot help a forward that casts to float32 itself: the result must say so.
    x = np.random.default_rng(19).uniform(-2, 2, (3, 4)).astype(np.float32)

    def float32_forward(z):
        return tanh_forward(z.astype(np.float32))

    (result,) = check_layer(float32_forward, tanh_backward, (x,), names=("x",))
    assert not result.passed and 1e-6 < result.max_rel_error < 1e-2
    assert result.out_dtype == "float32" and result.checked_dtype == "float64"
    assert "the forward returned float32 for float64 inputs" in result.note
    assert "round-off" in result.note and "a right backward fails" in result.note


def test_check_layer_in_float32_without_upcast_and_with_a_loose_tolerance():
    x = np.random.default_rng(16).uniform(-2, 2, (3, 4)).astype(np.float32)
    (strict,) = check_layer(tanh_forward, tanh_backward, (x,), upcast=False)
    assert not strict.passed and strict.checked_dtype == "float32" and not strict.upcast
    assert "upcast=False" in strict.note and "loosen rtol/atol" in strict.note
    (loose,) = check_layer(tanh_forward, tanh_backward, (x,), upcast=False, rtol=1e-2, atol=1e-4)
    assert loose.passed and loose.max_rel_error < 1e-2


def test_check_layer_bad_arguments():
    x = np.ones(3)
    with pytest.raises(ValueError, match=r"method must be 'full' or 'adjoint', got 'fast'"):
        check_layer(tanh_forward, tanh_backward, (x,), method="fast")
    with pytest.raises(ValueError, match=r"names has 2 entries for 1 inputs"):
        check_layer(tanh_forward, tanh_backward, (x,), names=("x", "y"))
    with pytest.raises(ValueError, match=r"no differentiable"):
        check_layer(lambda k: (np.ones(2) * k, None), lambda d, c: d, (np.arange(3),))
    with pytest.raises(ValueError, match=r"backward returned 1 gradient\(s\) for 2 differentiable input\(s\)"):
        check_layer(scaled_product_forward, lambda d, c: scaled_product_backward(d, c)[0],
                    (x, np.ones(3), 2))
    with pytest.raises(ValueError, match=r"gradient for y has shape \(2,\), expected \(3,\)"):
        check_layer(scaled_product_forward, lambda d, c: (d, d[:2]), (x, np.ones(3), 2),
                    names=("x", "y", "k"))


# --- what a user's own layer can get wrong, and the checker must not let pass -------------------------

def test_an_infinite_or_nan_gradient_fails():
    x = np.random.default_rng(0).standard_normal((2, 3))

    def backward_with_inf(dout, cache):
        grad = 2 * dout
        grad[0, 0] = -np.inf
        return grad

    for method in ("full", "adjoint"):
        (r,) = check_layer(lambda x: (2 * x, None), backward_with_inf, (x,), method=method)
        assert not r.passed, method                     # inf <= atol + rtol * inf must not count as agreement
    assert not within_tolerance([1.0, 2.0], [np.inf, 2.0]) and not within_tolerance([np.nan], [np.nan])
    assert within_tolerance([1.0, 2.0], [1.0, 2.0])


def test_a_gradient_missing_its_sum_is_refused_not_broadcast():
    rng = np.random.default_rng(1)
    X, w = rng.standard_normal((4, 3)), rng.standard_normal(3)
    dout = rng.standard_normal((4, 3))
    unsummed = dout * np.tanh(X)                        # (4, 3) for w of shape (3,): the sum over rows forgotten
    with pytest.raises(ValueError, match=r"grad has shape \(4, 3\) but x has shape \(3,\)"):
        adjoint_check(lambda w: w * np.tanh(X), w, dout, unsummed)
    with pytest.raises(ValueError, match=r"differ in shape: \(4, 3\) vs \(3,\)"):
        within_tolerance(np.ones((4, 3)), np.ones(3))
    _, _, rel = adjoint_check(lambda w: w * np.tanh(X), w, dout, unsummed.sum(axis=0))
    assert rel < 1e-9


def test_numerical_vjp_refuses_what_it_cannot_difference():
    with pytest.raises(TypeError, match="x must be a floating-point numpy array .* got int64"):
        numerical_vjp(lambda z: z * 2.0, np.array([1, 2, 3]), np.ones(3), h=1e-3)
    with pytest.raises(ValueError, match=r"dout has shape \(2, 3\) but f\(x\) returns shape \(3,\)"):
        numerical_vjp(lambda z: z * 2.0, np.array([1.0, 2, 3]), np.ones((2, 3)))
    assert numerical_vjp(lambda z: z * 2.0, np.empty((0, 3)), np.empty((0, 3))).shape == (0, 3)
    x = np.array([1.0, 2.0, 3.0])

    def fails_on_the_second_element(z):
        if z[1] != 2.0:
            raise RuntimeError("the user's forward failed")
        return z

    with pytest.raises(RuntimeError):
        numerical_vjp(fails_on_the_second_element, x, np.ones(3))
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])   # restored, not left perturbed


@pytest.mark.parametrize("view", [lambda x: x.reshape(-1), lambda x: x.T, lambda x: x[:, :2], lambda x: x])
def test_a_forward_returning_a_view_of_its_input_is_checked_right(view):
    # Right layers: the output moves with x, so each finite-difference output must be copied as it comes.
    x = np.random.default_rng(2).standard_normal((3, 4))

    def forward(x):
        return view(x), x.shape

    def backward(dout, shape):
        grad = np.zeros(shape)
        view(grad)[...] = dout
        return grad

    for method in ("full", "adjoint"):
        (r,) = check_layer(forward, backward, (x,), method=method)
        assert r.passed and r.max_rel_error < 1e-9, (method, r.max_rel_error)


def test_check_layer_names_gradient_count_dout_and_wrt_mistakes():
    x, y = np.ones(3), np.arange(3.0)
    fwd = scaled_product_forward
    # a gradient for the integer k as well: one more than the floating inputs, and not None
    with pytest.raises(ValueError, match=r"backward returned 3 gradient\(s\) for 2 differentiable input\(s\) "
                                         r"\(input0, input1\); .*integer inputs such as ids have none"):
        check_layer(fwd, lambda d, c: (*scaled_product_backward(d, c), np.zeros(())), (x, y, 2))
    results = check_layer(fwd, lambda d, c: list(scaled_product_backward(d, c)), (x, y, 2))   # a list is fine
    assert [r.passed for r in results] == [True, True]
    with pytest.raises(ValueError, match=r"dout has shape \(1, 3\) but the forward's output has shape \(3,\)"):
        check_layer(fwd, scaled_product_backward, (x, y, 2), dout=np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"wrt holds 5, not the position of one of the 3 inputs"):
        check_layer(fwd, scaled_product_backward, (x, y, 2), wrt=(0, 5))


def test_rel_error_of_zeros_with_no_floor_is_zero():
    assert rel_error(np.zeros(3), np.zeros(3), floor=0) == 0.0
    assert rel_error(np.array([0.0, 1.0]), np.array([0.0, 2.0]), floor=0) == 0.5
