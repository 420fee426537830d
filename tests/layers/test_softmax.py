"""Tests for numgpt.layers.softmax: probabilities over the last axis and their VJP."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import softmax_backward, softmax_forward

RTOL = 1e-7


def assert_gradcheck_passes(results):
    assert [r.name for r in results] == ["x"]
    r = results[0]
    assert r.passed and r.max_rel_error < RTOL, f"max rel error {r.max_rel_error:.3e}"


@st.composite
def softmax_cases(draw, max_size=40):
    shape = draw(ns.dims(min_dims=1, max_dims=3, max_side=5, max_size=max_size))
    return draw(ns.float_arrays(shape)), draw(ns.upstream_grads(shape))


# -- forward -------------------------------------------------------------------------


def test_forward_by_hand():
    probs, _ = softmax_forward(np.log(np.array([[1.0, 2.0, 5.0], [3.0, 3.0, 2.0]])))
    np.testing.assert_allclose(probs, [[0.125, 0.25, 0.625], [0.375, 0.375, 0.25]], rtol=1e-15)


@given(softmax_cases())
def test_rows_are_probability_distributions(case):
    x, _ = case
    probs, _ = softmax_forward(x)
    assert probs.shape == x.shape
    assert np.all(probs > 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-14)


@given(softmax_cases(), st.data())
def test_shift_invariance_per_row(case, data):
    x, _ = case
    shift = data.draw(ns.float_arrays(x.shape[:-1] + (1,), min_value=-50, max_value=50))
    probs, _ = softmax_forward(x)
    shifted, _ = softmax_forward(x + shift)
    # x + shift rounds at the ulp of 50, about 7e-15; exp turns that into a relative error.
    np.testing.assert_allclose(shifted, probs, rtol=1e-12, atol=1e-15)


def test_huge_logits_do_not_overflow_and_masked_entries_vanish():
    x = np.array([[1000.0, 999.0, np.finfo(np.float64).min], [-1e300, -1e300, -1e300]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is the point
        probs, _ = softmax_forward(x)
    e = np.exp(-1.0)
    np.testing.assert_allclose(probs[0], [1 / (1 + e), e / (1 + e), 0.0], rtol=1e-15)
    assert probs[0, 2] == 0.0
    np.testing.assert_allclose(probs[1], [1 / 3] * 3, rtol=1e-15)


# -- gradients ---------------------------------------------------------------------------


def test_gradcheck_fixed_seed():
    x = np.random.default_rng(0).standard_normal((2, 5, 7)) * 2
    assert_gradcheck_passes(check_layer(softmax_forward, softmax_backward, (x,), names=("x",), seed=4))


@given(softmax_cases())
def test_gradcheck_hypothesis(case):
    x, dout = case
    assert_gradcheck_passes(check_layer(softmax_forward, softmax_backward, (x,), names=("x",), dout=dout))


def test_gradcheck_adjoint_on_a_larger_input():
    x = np.random.default_rng(1).standard_normal((8, 16, 50)) * 2
    assert_gradcheck_passes(check_layer(softmax_forward, softmax_backward, (x,), names=("x",), method="adjoint"))


@given(softmax_cases(max_size=24))
def test_backward_is_the_explicit_jacobian_transposed_times_dout(case):
    x, dout = case
    probs, cache = softmax_forward(x)
    dx = softmax_backward(dout, cache)
    for idx in np.ndindex(x.shape[:-1]):
        p = probs[idx]
        jacobian = np.diag(p) - np.outer(p, p)          # d p_i / d x_j, symmetric
        np.testing.assert_allclose(dx[idx], jacobian.T @ dout[idx], rtol=1e-12, atol=1e-15)


def test_gradcheck_catches_a_backward_missing_the_row_term():
    def backward_without_row_term(dout, cache):
        (probs,) = cache
        return probs * dout                              # "- sum_j dp_j p_j" forgotten

    x = np.random.default_rng(2).standard_normal((3, 6))
    results = check_layer(softmax_forward, backward_without_row_term, (x,), names=("x",))
    assert not results[0].passed and results[0].max_rel_error > 1e-2


@given(softmax_cases())
def test_dx_rows_sum_to_zero(case):
    x, dout = case
    _, cache = softmax_forward(x)
    dx = softmax_backward(dout, cache)
    np.testing.assert_allclose(dx.sum(axis=-1), 0.0, atol=1e-15 * x.shape[-1])


@given(softmax_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    x, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = softmax_forward(x)
    np.testing.assert_allclose(softmax_backward(a * d1 + c * d2, cache),
                               a * softmax_backward(d1, cache) + c * softmax_backward(d2, cache),
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    x = np.random.default_rng(3).standard_normal((2, 3, 4)).astype(dtype)
    probs, cache = softmax_forward(x)
    assert probs.dtype == dtype
    assert softmax_backward(np.ones_like(probs), cache).dtype == dtype


# -- bad input ---------------------------------------------------------------------------


def test_an_empty_class_axis_is_rejected_by_name():
    # A distribution over zero classes does not exist: a ValueError must name x.
    # Today the row max raises numpy's "zero-size array to reduction operation
    # maximum which has no identity", which names nothing.
    with pytest.raises(ValueError, match=r"\bx\b"):
        softmax_forward(np.zeros((2, 0)))


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got tuple"):
        softmax_forward((1.0, 2.0))
    with pytest.raises(TypeError, match=r"x must have a floating dtype.*int"):
        softmax_forward(np.arange(4))
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension.*got shape \(\)"):
        softmax_forward(np.zeros(()))
    _, cache = softmax_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3\), got \(2, 4\)"):
        softmax_backward(np.zeros((2, 4)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32"):
        softmax_backward(np.zeros((2, 3), dtype=np.float32), cache)
