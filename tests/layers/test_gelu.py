"""Tests for numgpt.layers.gelu, the tanh approximation of GELU that GPT-2 uses.

Inputs for the 1e-7 gradient check come from [-3, 3]: far in the negative
tail ``1 + tanh(u)`` cancels, so the function itself (and with it any finite
difference) loses its relative precision there.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import gelu_backward, gelu_forward
from numgpt.layers._blocks import BLOCK

RTOL = 1e-7


def assert_gradcheck_passes(results):
    assert [r.name for r in results] == ["x"]
    r = results[0]
    assert r.passed and r.max_rel_error < RTOL, f"max rel error {r.max_rel_error:.3e}"


def gelu_scalar(x):
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


@st.composite
def gelu_cases(draw):
    shape = draw(ns.dims(min_dims=1, max_dims=3, max_side=5, max_size=60))
    return draw(ns.float_arrays(shape, min_value=-3, max_value=3)), draw(ns.upstream_grads(shape))


# -- forward -------------------------------------------------------------------------


def test_forward_matches_the_formula_element_by_element():
    x = np.linspace(-6, 6, 97).reshape(1, 97)
    out, _ = gelu_forward(x)
    # atol: in the negative tail both sides round 1 + tanh(u), which has cancelled.
    np.testing.assert_allclose(out[0], [gelu_scalar(v) for v in x[0]], rtol=1e-13, atol=1e-15)


def test_known_values():
    out, _ = gelu_forward(np.array([0.0, 1.0, -1.0, 20.0, -20.0]))
    # gelu(1) in the tanh approximation, by hand: 0.5 * (1 + tanh(0.7978845608 * 1.044715)).
    np.testing.assert_allclose(out[:3], [0.0, 0.8411919906082768, -0.15880800939172324], rtol=1e-14)
    assert out[3] == 20.0
    # Far left the gate is e^{2u} / (1 + e^{2u}): the code's 1 / (1 + e^{-2u}) keeps it to full
    # relative precision (tanh u would round to -1 and give exactly 0).
    u = math.sqrt(2.0 / math.pi) * (-20.0 - 0.044715 * 8000.0)
    assert out[4] == pytest.approx(-20.0 / (1.0 + math.exp(-2.0 * u)), rel=1e-13) and out[4] < 0


def test_blocked_passes_match_the_plain_formula_across_blocks():
    # The layer runs its chain in blocks of BLOCK elements (numgpt/layers/_blocks.py); an input
    # of 2.5 blocks, contiguous and not, must give the plain whole-array formula's results.
    rng = np.random.default_rng(0)
    for dtype, rtol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        x = (3 * rng.standard_normal((5, BLOCK // 2))).astype(dtype)
        for view in (x, x[:, ::2], x.T):
            # The reference in long double, with the gate as 1 / (1 + e^{-2u}): (1 + tanh u) / 2
            # cancels in the negative tail even there (test_forward_matches_the_formula_element_by_element
            # checks the tanh form itself).
            xl = view.astype(np.longdouble)
            k, a = np.sqrt(np.longdouble(2) / np.longdouble(np.pi)), np.longdouble("0.044715")
            s = 1.0 / (1.0 + np.exp(-2.0 * k * (xl + a * xl * xl * xl)))
            dout = rng.standard_normal(view.shape).astype(dtype)
            out, cache = gelu_forward(view)
            dx = gelu_backward(dout, cache)
            assert out.dtype == dx.dtype == dtype and out.shape == view.shape
            atol = 1e-3 * np.finfo(dtype).eps
            np.testing.assert_allclose(out, (xl * s).astype(dtype), rtol=rtol, atol=atol)
            slope = s + xl * (1.0 - s) * s * 2.0 * k * (1.0 + 3.0 * a * xl * xl)
            # The slope is a sum of O(1) terms that cancel near its zero (x about -0.75): an
            # absolute tolerance of a few units of round-off there.
            np.testing.assert_allclose(dx, (dout * slope).astype(dtype), rtol=rtol, atol=10 * np.finfo(dtype).eps)


@given(gelu_cases())
def test_odd_part_is_the_identity(case):
    x, _ = case
    # x (1 + t) / 2 - (-x)(1 - t) / 2 = x, since tanh is odd: gelu(x) - gelu(-x) = x.
    pos, _ = gelu_forward(x)
    neg, _ = gelu_forward(-x)
    np.testing.assert_allclose(pos - neg, x, rtol=1e-13, atol=1e-14)
    # And the derivative satisfies gelu'(x) + gelu'(-x) = 1.
    _, cache_pos = gelu_forward(x)
    _, cache_neg = gelu_forward(-x)
    ones = np.ones_like(x)
    np.testing.assert_allclose(gelu_backward(ones, cache_pos) + gelu_backward(ones, cache_neg), 1.0,
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_inputs_stay_finite(dtype):
    x = np.array([-1000.0, -60.0, -30.0, 30.0, 60.0, 1000.0], dtype=dtype)
    with np.errstate(all="raise"):
        out, cache = gelu_forward(x)
        dx = gelu_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(out, np.where(x > 0, x, 0.0).astype(dtype))
    np.testing.assert_array_equal(dx, (x > 0).astype(dtype))


# -- gradients against finite differences ----------------------------------------------


def test_gradcheck_fixed_seed():
    x = np.random.default_rng(0).uniform(-3, 3, (2, 5, 12))
    assert_gradcheck_passes(check_layer(gelu_forward, gelu_backward, (x,), names=("x",), seed=2))


@given(gelu_cases())
def test_gradcheck_hypothesis(case):
    x, dout = case
    assert_gradcheck_passes(check_layer(gelu_forward, gelu_backward, (x,), names=("x",), dout=dout))


def test_gradcheck_adjoint_on_a_larger_input():
    x = np.random.default_rng(1).uniform(-3, 3, (4, 32, 128))
    assert_gradcheck_passes(check_layer(gelu_forward, gelu_backward, (x,), names=("x",), method="adjoint"))


def test_gradcheck_adjoint_across_blocks():
    # 2.5 blocks of BLOCK elements: the blocked backward against finite differences in float64.
    x = np.random.default_rng(2).uniform(-3, 3, (5, BLOCK // 2))
    assert_gradcheck_passes(check_layer(gelu_forward, gelu_backward, (x,), names=("x",), method="adjoint"))


def test_gradcheck_catches_a_derivative_missing_the_factor_3():
    # The forward caches f'(x); a forward whose cached derivative drops the 3 of d/dx (a x^3)
    # = 3 a x^2, paired with the real backward, must fail the check, and the same code with the
    # 3 back must pass.
    k, a = math.sqrt(2.0 / math.pi), 0.044715

    def forward_caching(three):
        def forward(x):
            out, _ = gelu_forward(x)
            s = 0.5 * (1 + np.tanh(k * (x + a * x * x * x)))
            return out, (s + 2 * x * s * (1 - s) * k * (1 + three * a * x * x),)
        return forward

    x = np.random.default_rng(2).uniform(-3, 3, (3, 8))
    results = check_layer(forward_caching(1), gelu_backward, (x,), names=("x",))
    assert not results[0].passed and results[0].max_rel_error > 1e-3
    assert check_layer(forward_caching(3), gelu_backward, (x,), names=("x",))[0].passed


def test_the_cache_is_the_derivative_alone():
    # One array of x's shape and dtype, f'(x) of section 2.4 (the backward is dout times it).
    x = np.random.default_rng(3).uniform(-4, 4, (3, 7))
    _, cache = gelu_forward(x)
    assert len(cache) == 1 and cache[0].shape == x.shape and cache[0].dtype == x.dtype
    k, a = math.sqrt(2.0 / math.pi), 0.044715
    t = np.tanh(k * (x + a * x ** 3))
    np.testing.assert_allclose(cache[0], 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * a * x * x),
                               rtol=1e-12, atol=1e-15)


# -- properties -------------------------------------------------------------------------


@given(gelu_cases(), st.data())
def test_batch_permutation_equivariance(case, data):
    x, dout = case
    perm = np.array(data.draw(st.permutations(range(x.shape[0]))))
    out, cache = gelu_forward(x)
    out_p, cache_p = gelu_forward(x[perm])
    np.testing.assert_array_equal(out_p, out[perm])             # element-wise: exactly
    np.testing.assert_array_equal(gelu_backward(dout[perm], cache_p), gelu_backward(dout, cache)[perm])


@given(gelu_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    x, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = gelu_forward(x)
    np.testing.assert_allclose(gelu_backward(a * d1 + c * d2, cache),
                               a * gelu_backward(d1, cache) + c * gelu_backward(d2, cache), rtol=1e-10, atol=1e-12)


@given(gelu_cases())
def test_backward_does_not_modify_the_cache(case):
    x, dout = case
    out, cache = gelu_forward(x)
    saved = [a.copy() for a in cache]
    first = gelu_backward(dout, cache)
    for before, after in zip(saved, cache):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(gelu_backward(dout, cache), first)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    x = np.random.default_rng(3).uniform(-3, 3, (2, 3, 4)).astype(dtype)
    out, cache = gelu_forward(x)
    assert out.dtype == dtype
    assert gelu_backward(np.ones_like(out), cache).dtype == dtype


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        gelu_forward([1.0, 2.0])
    with pytest.raises(TypeError, match=r"x must have a floating dtype.*int64"):
        gelu_forward(np.arange(3, dtype=np.int64))
    _, cache = gelu_forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3\), got \(3, 2\)"):
        gelu_backward(np.zeros((3, 2)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32 but the forward ran in float64"):
        gelu_backward(np.zeros((2, 3), dtype=np.float32), cache)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_forward_gives_the_same_output_and_no_cache(dtype):
    # 2.5 blocks, so the block-sized scratch that holds x^2 without the derivative is reused.
    x = np.random.default_rng(4).uniform(-12, 12, (5, BLOCK // 2)).astype(dtype)
    out, cache = gelu_forward(x)
    out_inf, cache_inf = gelu_forward(x, derivative=False)
    np.testing.assert_array_equal(out_inf, out)
    assert out_inf.dtype == dtype and cache_inf is None


@pytest.mark.parametrize("bad", [0, 1, "no", None])
def test_derivative_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="derivative must be True or False"):
        gelu_forward(np.zeros(3), derivative=bad)
