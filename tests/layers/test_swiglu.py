"""Tests for numgpt.layers.swiglu (the SwiGLU gate silu(a) * u) and numgpt.layers.relu_squared.

Both are element-wise. Squared ReLU is once but not twice differentiable at 0,
so its finite-difference checks keep inputs at least 0.01 away from 0 (a
central difference that straddles the kink is off by about h/3). Gradient
checks run in float64 and must reach a relative error below 1e-7.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import (
    linear_backward,
    linear_forward,
    relu_squared_backward,
    relu_squared_forward,
    swiglu_backward,
    swiglu_forward,
)
from numgpt.layers.swiglu import sigmoid

RTOL = 1e-7


def assert_gradcheck_passes(results, names):
    assert [r.name for r in results] == list(names)
    for r in results:
        assert r.passed and r.max_rel_error < RTOL, f"{r.name}: max rel error {r.max_rel_error:.3e}"


def silu_scalar(a):
    return a / (1.0 + math.exp(-a)) if a > -700 else 0.0


def away_from_zero(x, gap=0.01):
    return np.where(x >= 0, x + gap, x - gap)


@st.composite
def swiglu_cases(draw):
    shape = draw(ns.dims(min_dims=1, max_dims=3, max_side=5, max_size=40))
    gate = draw(ns.float_arrays(shape, min_value=-6, max_value=6))
    up = draw(ns.float_arrays(shape, min_value=-2, max_value=2))
    return gate, up, draw(ns.upstream_grads(shape))


@st.composite
def relu_squared_cases(draw):
    shape = draw(ns.dims(min_dims=1, max_dims=3, max_side=5, max_size=60))
    return away_from_zero(draw(ns.float_arrays(shape))), draw(ns.upstream_grads(shape))


# -- SwiGLU forward ----------------------------------------------------------------------


def test_swiglu_forward_matches_the_formula_element_by_element():
    rng = np.random.default_rng(0)
    gate = np.linspace(-40, 40, 161).reshape(7, 23)
    up = rng.standard_normal(gate.shape)
    out, _ = swiglu_forward(gate, up)
    want = np.array([silu_scalar(a) for a in gate.ravel()]).reshape(gate.shape) * up
    np.testing.assert_allclose(out, want, rtol=1e-14, atol=0)   # no cancellation: relative everywhere


def test_sigmoid_is_accurate_and_silent_in_both_tails():
    a = np.array([-1000.0, -40.0, -1.0, 0.0, 1.0, 40.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        sig = sigmoid(a)
        sig32 = sigmoid(a.astype(np.float32))
    assert sig32.dtype == np.float32
    np.testing.assert_allclose(sig[1:-1], [1 / (1 + math.exp(40)), 1 / (1 + math.e), 0.5, 1 / (1 + 1 / math.e), 1.0],
                               rtol=1e-15)
    assert sig[0] == 0.0 and sig[-1] == 1.0 and sig[1] > 0
    np.testing.assert_allclose(sig32, sig.astype(np.float32), rtol=1e-6)


def test_swiglu_known_values():
    out, _ = swiglu_forward(np.array([0.0, 1.0, 30.0, -50.0]), np.array([3.0, 2.0, 0.5, 1.0]))
    np.testing.assert_allclose(out[:3], [0.0, 2.0 / (1 + math.exp(-1.0)), 15.0 / (1 + math.exp(-30.0))], rtol=1e-15)
    assert -1e-19 < out[3] < 0                                  # silu(-50) = -50 e^-50 ...: tiny, negative


# -- SwiGLU gradients --------------------------------------------------------------------


def test_swiglu_gradcheck_fixed_seed():
    rng = np.random.default_rng(1)
    gate, up = rng.standard_normal((2, 2, 5, 12)) * np.array([2.0, 1.0])[:, None, None, None]
    assert_gradcheck_passes(check_layer(swiglu_forward, swiglu_backward, (gate, up), names=("gate", "up"), seed=3),
                            ("gate", "up"))


@given(swiglu_cases())
def test_swiglu_gradcheck_hypothesis(case):
    gate, up, dout = case
    assert_gradcheck_passes(check_layer(swiglu_forward, swiglu_backward, (gate, up), names=("gate", "up"),
                                        dout=dout), ("gate", "up"))


def test_swiglu_gradcheck_adjoint_on_a_larger_input():
    rng = np.random.default_rng(2)
    gate, up = rng.standard_normal((2, 4, 32, 256)) * 2.0
    assert_gradcheck_passes(check_layer(swiglu_forward, swiglu_backward, (gate, up), names=("gate", "up"),
                                        method="adjoint"), ("gate", "up"))


def test_swiglu_gradcheck_catches_a_derivative_that_treats_sigma_as_constant():
    def backward_sigma_only(dout, cache):              # d silu/da = sigma: the a sigma (1 - sigma) term lost
        gate, up, sig, silu = cache
        return dout * up * sig, dout * silu

    rng = np.random.default_rng(3)
    gate, up = rng.standard_normal((2, 3, 8)) * 2.0
    results = check_layer(swiglu_forward, backward_sigma_only, (gate, up), names=("gate", "up"))
    assert not results[0].passed and results[0].max_rel_error > 1e-2
    assert results[1].passed


def test_swiglu_mlp_composed_from_linear_layers_gradcheck():
    """out = (silu(x W_gate) * (x W_up)) W_down: three linear pairs around the gate, as the model composes it."""
    def mlp_forward(x, w_gate, w_up, w_down):
        gate, c_gate = linear_forward(x, w_gate)
        up, c_up = linear_forward(x, w_up)
        hidden, c_glu = swiglu_forward(gate, up)
        out, c_down = linear_forward(hidden, w_down)
        return out, (c_gate, c_up, c_glu, c_down)

    def mlp_backward(dout, cache):
        c_gate, c_up, c_glu, c_down = cache
        dhidden, dw_down, _ = linear_backward(dout, c_down)
        dgate, dup = swiglu_backward(dhidden, c_glu)
        dx_gate, dw_gate, _ = linear_backward(dgate, c_gate)
        dx_up, dw_up, _ = linear_backward(dup, c_up)
        return dx_gate + dx_up, dw_gate, dw_up, dw_down      # x feeds two paths: the gradients add

    rng = np.random.default_rng(4)
    C, F = 4, 6
    inputs = (rng.standard_normal((2, 3, C)), rng.standard_normal((C, F)), rng.standard_normal((C, F)),
              rng.standard_normal((F, C)))
    names = ("x", "w_gate", "w_up", "w_down")
    assert_gradcheck_passes(check_layer(mlp_forward, mlp_backward, inputs, names=names), names)


# -- SwiGLU properties -------------------------------------------------------------------


@given(swiglu_cases())
def test_silu_is_half_identity_plus_even_and_its_slopes_add_to_one(case):
    gate, _, _ = case
    ones = np.ones_like(gate)
    pos, c_pos = swiglu_forward(gate, ones)
    neg, c_neg = swiglu_forward(-gate, ones)
    np.testing.assert_allclose(pos - neg, gate, rtol=1e-14, atol=1e-15)          # silu(a) - silu(-a) = a
    d_pos, _ = swiglu_backward(ones, c_pos)
    d_neg, _ = swiglu_backward(ones, c_neg)
    np.testing.assert_allclose(d_pos + d_neg, 1.0, rtol=1e-14, atol=1e-14)       # silu'(a) + silu'(-a) = 1


@given(swiglu_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_swiglu_backward_is_linear_in_dout(case, data, a, c):
    gate, up, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = swiglu_forward(gate, up)
    for got, g1, g2 in zip(swiglu_backward(a * d1 + c * d2, cache), swiglu_backward(d1, cache),
                           swiglu_backward(d2, cache)):
        np.testing.assert_allclose(got, a * g1 + c * g2, rtol=1e-10, atol=1e-12)


@given(swiglu_cases(), st.data())
def test_swiglu_batch_permutation_equivariance_and_an_untouched_cache(case, data):
    gate, up, dout = case
    perm = np.array(data.draw(st.permutations(range(gate.shape[0]))))
    out, cache = swiglu_forward(gate, up)
    saved = [a.copy() for a in cache]
    out_p, cache_p = swiglu_forward(gate[perm], up[perm])
    np.testing.assert_array_equal(out_p, out[perm])
    for got, want in zip(swiglu_backward(dout[perm], cache_p), swiglu_backward(dout, cache)):
        np.testing.assert_array_equal(got, want[perm])
    for before, after in zip(saved, cache):
        np.testing.assert_array_equal(before, after)


# -- squared ReLU --------------------------------------------------------------------------


def test_relu_squared_known_values_and_a_continuous_slope_at_zero():
    x = np.array([-2.0, -0.0, 0.0, 0.5, 3.0])
    out, cache = relu_squared_forward(x)
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 0.25, 9.0])
    np.testing.assert_array_equal(relu_squared_backward(np.ones(5), cache), [0.0, 0.0, 0.0, 1.0, 6.0])


def test_relu_squared_gradcheck_fixed_seed():
    x = away_from_zero(np.random.default_rng(5).standard_normal((2, 5, 24)) * 1.5)
    assert_gradcheck_passes(check_layer(relu_squared_forward, relu_squared_backward, (x,), names=("x",), seed=1),
                            ("x",))


@given(relu_squared_cases())
def test_relu_squared_gradcheck_hypothesis(case):
    x, dout = case
    assert_gradcheck_passes(check_layer(relu_squared_forward, relu_squared_backward, (x,), names=("x",),
                                        dout=dout), ("x",))


def test_relu_squared_gradcheck_adjoint_on_a_larger_input():
    # The direction u moves every entry at once, by up to 2 h |u| (about 7e-3): stay 0.02 from the kink.
    x = away_from_zero(np.random.default_rng(6).standard_normal((4, 32, 128)), gap=0.02)
    assert_gradcheck_passes(check_layer(relu_squared_forward, relu_squared_backward, (x,), names=("x",),
                                        method="adjoint"), ("x",))


def test_relu_squared_gradcheck_catches_a_missing_factor_2_and_relus_slope():
    x = away_from_zero(np.random.default_rng(7).standard_normal((3, 8)))
    for wrong in (lambda dout, relu: relu * dout,                 # d(r^2)/dx = 2 r: the 2 forgotten
                  lambda dout, relu: (relu > 0) * dout):          # ReLU's slope instead of 2 relu
        results = check_layer(relu_squared_forward, wrong, (x,), names=("x",))
        assert not results[0].passed and results[0].max_rel_error > 1e-2


def test_relu_squared_gradcheck_straddling_the_kink_is_off_by_h_over_3():
    # Why the tests keep inputs away from 0: at x = 0 the fourth-order stencil reads h/3, not 0.
    x = np.zeros((1, 1))
    r = check_layer(relu_squared_forward, relu_squared_backward, (x,), names=("x",), dout=np.ones((1, 1)))[0]
    h = float(np.finfo(np.float64).eps ** 0.2)
    np.testing.assert_allclose(r.numeric, h / 3, rtol=1e-6)
    assert r.analytic[0, 0] == 0.0


@given(relu_squared_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_relu_squared_backward_is_linear_in_dout(case, data, a, c):
    x, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = relu_squared_forward(x)
    np.testing.assert_allclose(relu_squared_backward(a * d1 + c * d2, cache),
                               a * relu_squared_backward(d1, cache) + c * relu_squared_backward(d2, cache),
                               rtol=1e-10, atol=1e-12)


def test_layer_cases_entries_pass_over_several_seeds():
    """This layer's entries in numgpt.gradcheck.layer_cases, built exactly as there."""
    for seed in range(3):
        rng = np.random.default_rng(seed)

        def randn(*shape, scale=1.0, shift=0.0):
            return rng.standard_normal(shape) * scale + shift

        B, T, C = 2, 5, 6
        cases = [
            (swiglu_forward, swiglu_backward, (randn(B, T, 4 * C, scale=2.0), randn(B, T, 4 * C)), ("gate", "up")),
            # 0.05 from the kink at 0, where the stencil reads h/3
            (relu_squared_forward, relu_squared_backward,
             ((lambda x: x + np.copysign(0.05, x))(randn(B, T, 4 * C, scale=1.5)),), ("x",)),
        ]
        for forward, backward, inputs, names in cases:
            assert_gradcheck_passes(check_layer(forward, backward, inputs, names=names, seed=seed), names)


# -- both: dtypes and bad input ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    rng = np.random.default_rng(8)
    gate, up = rng.standard_normal((2, 2, 3, 4)).astype(dtype)
    out, cache = swiglu_forward(gate, up)
    assert out.dtype == dtype and all(g.dtype == dtype for g in swiglu_backward(np.ones_like(out), cache))
    out, cache = relu_squared_forward(gate)
    assert out.dtype == dtype and relu_squared_backward(np.ones_like(out), cache).dtype == dtype


def test_bad_inputs_name_the_argument():
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match=r"gate must be a numpy.ndarray, got list"):
        swiglu_forward([1.0], x)
    with pytest.raises(TypeError, match=r"up must have a floating dtype.*int64"):
        swiglu_forward(x, np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match=r"up has dtype float32 but gate has dtype float64"):
        swiglu_forward(x, x.astype(np.float32))
    with pytest.raises(ValueError, match=r"gate and up must have one shape, got gate \(2, 3\) and up \(3, 2\)"):
        swiglu_forward(x, x.T.copy())
    _, cache = swiglu_forward(x, x)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3\), got \(3, 2\)"):
        swiglu_backward(np.zeros((3, 2)), cache)
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        relu_squared_forward([1.0])
    with pytest.raises(TypeError, match=r"x must have a floating dtype.*int32"):
        relu_squared_forward(np.zeros(3, dtype=np.int32))
    _, cache = relu_squared_forward(x)
    with pytest.raises(TypeError, match=r"dout has dtype float32 but the forward ran in float64"):
        relu_squared_backward(np.zeros((2, 3), dtype=np.float32), cache)
