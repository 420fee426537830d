"""Tests for numgpt.layers.dropout: inverted dropout with an explicit random generator.

The statistical checks use large arrays and bounds of six standard deviations,
with fixed seeds: they cannot flake, yet a mask drawn with the wrong
probability or a missing 1/(1-p) rescaling is far outside them.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import dropout_backward, dropout_forward

RTOL = 1e-7


def assert_gradcheck_passes(results):
    assert [r.name for r in results] == ["x"]
    r = results[0]
    assert r.passed and r.max_rel_error < RTOL, f"max rel error {r.max_rel_error:.3e}"


def with_fixed_mask(p, seed):
    """A forward that draws the same mask at every call, as check_layer requires."""
    return lambda x: dropout_forward(x, p, np.random.default_rng(seed))


@st.composite
def dropout_cases(draw):
    shape = draw(ns.dims(min_dims=1, max_dims=3, max_side=5, max_size=60))
    p = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]) | st.floats(0.0, 0.95))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return draw(ns.float_arrays(shape)), p, seed, draw(ns.upstream_grads(shape))


# -- forward -------------------------------------------------------------------------


def test_p_zero_is_the_identity_and_needs_no_generator():
    x = np.random.default_rng(0).standard_normal((3, 4))
    out, cache = dropout_forward(x, 0.0, None)
    np.testing.assert_array_equal(out, x)
    assert out is not x and not np.shares_memory(out, x)
    dout = np.random.default_rng(1).standard_normal((3, 4))
    dx = dropout_backward(dout, cache)
    np.testing.assert_array_equal(dx, dout)
    assert not np.shares_memory(dx, dout)


@given(dropout_cases())
def test_elements_are_zeroed_or_scaled_by_one_over_keep(case):
    x, p, seed, _ = case
    out, _ = dropout_forward(x, p, np.random.default_rng(seed))
    kept = out != 0
    np.testing.assert_allclose(out[kept], x[kept] / (1 - p), rtol=1e-15)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keeps_about_one_minus_p_of_the_elements(p):
    n = 200_000
    out, _ = dropout_forward(np.ones(n), p, np.random.default_rng(42))
    kept = np.count_nonzero(out)
    sigma = np.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 6 * sigma


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_mean_is_preserved_in_expectation(p):
    n = 200_000
    x = np.random.default_rng(7).uniform(0.5, 1.5, n)
    out, _ = dropout_forward(x, p, np.random.default_rng(43))
    # Each output is x/(1-p) with probability 1-p: mean x, variance x^2 p/(1-p).
    sigma = np.sqrt(np.sum(x ** 2) * p / (1 - p)) / n
    assert abs(out.mean() - x.mean()) < 6 * sigma


def test_same_seed_same_mask_and_another_seed_another():
    x = np.ones((50, 40))
    a, _ = dropout_forward(x, 0.3, np.random.default_rng(5))
    b, _ = dropout_forward(x, 0.3, np.random.default_rng(5))
    c, _ = dropout_forward(x, 0.3, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


def test_successive_calls_on_one_generator_draw_fresh_masks():
    rng = np.random.default_rng(9)
    a, _ = dropout_forward(np.ones(1000), 0.5, rng)
    b, _ = dropout_forward(np.ones(1000), 0.5, rng)
    assert np.any(a != b)


# -- gradients ---------------------------------------------------------------------------


def test_gradcheck_fixed_seed():
    x = np.random.default_rng(2).standard_normal((2, 5, 6))
    assert_gradcheck_passes(check_layer(with_fixed_mask(0.3, 11), dropout_backward, (x,), names=("x",), seed=1))


@given(dropout_cases())
def test_gradcheck_hypothesis(case):
    x, p, seed, dout = case
    assert_gradcheck_passes(check_layer(with_fixed_mask(p, seed), dropout_backward, (x,), names=("x",), dout=dout))


def test_gradcheck_catches_a_backward_that_forgets_the_rescaling():
    def backward_without_rescaling(dout, cache):
        mask, _, _ = cache
        return dout * (mask != 0)

    x = np.random.default_rng(3).standard_normal((4, 6))
    results = check_layer(with_fixed_mask(0.5, 12), backward_without_rescaling, (x,), names=("x",))
    assert not results[0].passed and results[0].max_rel_error > 0.1


@given(dropout_cases())
def test_backward_applies_the_forward_mask(case):
    x, p, seed, dout = case
    out, cache = dropout_forward(x, p, np.random.default_rng(seed))
    dx = dropout_backward(dout, cache)
    dropped = (out == 0) & (x != 0)
    assert np.all(dx[dropped] == 0)
    kept = out != 0
    np.testing.assert_allclose(dx[kept], dout[kept] / (1 - p), rtol=1e-15)


@given(dropout_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    x, p, seed, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = dropout_forward(x, p, np.random.default_rng(seed))
    np.testing.assert_allclose(dropout_backward(a * d1 + c * d2, cache),
                               a * dropout_backward(d1, cache) + c * dropout_backward(d2, cache),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_dtype_is_preserved(dtype, p):
    x = np.random.default_rng(4).standard_normal((3, 7)).astype(dtype)
    out, cache = dropout_forward(x, p, np.random.default_rng(0))
    assert out.dtype == dtype
    assert dropout_backward(np.ones_like(out), cache).dtype == dtype


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_mask_is_drawn_in_the_input_dtype(dtype):
    # One uniform number per element, in x's own dtype (float32 runs make no float64 temporaries),
    # kept where it is >= p: the mask is exactly that draw, so a resumed run replays it.
    p, shape = 0.3, (3, 4, 5)
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    out, _ = dropout_forward(x, p, np.random.default_rng(7))
    u = np.random.default_rng(7).random(shape, dtype=dtype)
    expected = np.where(u >= p, x * dtype(1.0 / (1.0 - p)), dtype(0.0))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1, float("nan"), "0.5", None, True])
def test_p_outside_zero_one_is_rejected(p):
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\), got"):
        dropout_forward(np.ones(3), p, np.random.default_rng(0))


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator, got RandomState"):
        dropout_forward(np.ones(3), 0.5, np.random.RandomState(0))
    with pytest.raises(TypeError, match=r"rng must be a numpy.random.Generator, got int"):
        dropout_forward(np.ones(3), 0.5, 0)
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        dropout_forward([1.0, 2.0], 0.5, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"x must have a floating dtype"):
        dropout_forward(np.ones(3, dtype=np.int64), 0.5, np.random.default_rng(0))
    _, cache = dropout_forward(np.ones((2, 3)), 0.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3\), got \(3,\)"):
        dropout_backward(np.ones(3), cache)
    _, cache = dropout_forward(np.ones((2, 3)), 0.0, None)
    with pytest.raises(TypeError, match=r"dout has dtype float32"):
        dropout_backward(np.ones((2, 3), dtype=np.float32), cache)
