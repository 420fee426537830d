"""Tests for numgpt.layers.layernorm: normalise each row over C, then scale and shift.

Gains and biases are drawn away from 1 and 0 (an identity gain hides a missing
factor); rows of x always span a good part of their range, so the variance
is not dominated by eps. Gradient checks run in float64 and must reach a
relative error below 1e-7.
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import layernorm_backward, layernorm_forward

RTOL = 1e-7
NAMES = ("x", "weight", "bias")


def assert_gradcheck_passes(results, names=NAMES):
    assert [r.name for r in results] == list(names)
    for r in results:
        assert r.passed and r.max_rel_error < RTOL, f"{r.name}: max rel error {r.max_rel_error:.3e}"


def random_case(rng, shape=(2, 3, 6)):
    C = shape[-1]
    x = rng.standard_normal(shape) * 1.5 + 0.5
    weight = rng.uniform(0.5, 0.9, C) + rng.choice([0.0, 0.6], C)   # in [0.5, 0.9] or [1.1, 1.5]
    bias = rng.uniform(0.2, 1.0, C) * rng.choice([-1, 1], C)
    return x, weight, bias


@st.composite
def layernorm_cases(draw, max_C=8):
    lead = draw(ns.dims(min_dims=0, max_dims=2, max_side=3))
    C = draw(st.integers(1, max_C))
    shape = lead + (C,)
    x = draw(ns.float_arrays(shape, min_value=-2, max_value=2))
    return x, draw(ns.gains(C)), draw(ns.biases(C)), draw(ns.upstream_grads(shape, scale=0.5))


def reference_layernorm(x, weight, bias, eps):
    """The textbook formula, row by row in plain float64."""
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        mu = row.sum() / row.size
        var = ((row - mu) ** 2).sum() / row.size
        out[idx] = (row - mu) / np.sqrt(var + eps) * weight + bias
    return out


# -- forward -------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_forward_matches_the_textbook_formula(eps):
    x, weight, bias = random_case(np.random.default_rng(0))
    out, _ = layernorm_forward(x, weight, bias, eps=eps)
    np.testing.assert_allclose(out, reference_layernorm(x, weight, bias, eps), rtol=1e-12, atol=1e-12)


def test_forward_by_hand():
    # Row [1, 3]: mean 2, biased variance 1, so xhat = [-1, 1] / sqrt(1 + eps).
    out, _ = layernorm_forward(np.array([[1.0, 3.0]]), np.array([2.0, 0.5]), np.array([0.25, -1.0]), eps=0.21)
    r = 1 / np.sqrt(1.21)
    np.testing.assert_allclose(out, [[-2.0 * r + 0.25, 0.5 * r - 1.0]], rtol=1e-15)


def test_constant_row_normalises_to_zero_without_nan():
    out, cache = layernorm_forward(np.full((2, 4), 3.25), np.full(4, 1.5), np.full(4, -0.5))
    np.testing.assert_array_equal(out, np.full((2, 4), -0.5))
    dx, dweight, dbias = layernorm_backward(np.ones((2, 4)), cache)
    assert np.all(np.isfinite(dx)) and np.all(np.isfinite(dweight))


# -- gradients against finite differences ----------------------------------------------


def test_gradcheck_fixed_seed():
    x, weight, bias = random_case(np.random.default_rng(1))
    results = check_layer(layernorm_forward, layernorm_backward, (x, weight, bias), names=NAMES, seed=5)
    assert_gradcheck_passes(results)


@given(layernorm_cases())
def test_gradcheck_hypothesis(case):
    x, weight, bias, dout = case
    results = check_layer(layernorm_forward, layernorm_backward, (x, weight, bias), names=NAMES, dout=dout)
    assert_gradcheck_passes(results)


def test_gradcheck_adjoint_on_a_larger_input():
    x, weight, bias = random_case(np.random.default_rng(2), shape=(4, 16, 64))
    results = check_layer(layernorm_forward, layernorm_backward, (x, weight, bias), names=NAMES,
                          method="adjoint")
    assert_gradcheck_passes(results)


def test_gradcheck_catches_a_backward_missing_the_mean_term():
    def backward_without_mean(dout, cache):
        xhat, rstd, weight = cache
        _, dweight, dbias = layernorm_backward(dout, cache)
        g = dout * weight
        dx = rstd * (g - xhat * np.mean(g * xhat, axis=-1, keepdims=True))   # "- mean(g)" forgotten
        return dx, dweight, dbias

    x, weight, bias = random_case(np.random.default_rng(3))
    results = check_layer(layernorm_forward, backward_without_mean, (x, weight, bias), names=NAMES)
    assert not results[0].passed and results[0].max_rel_error > 1e-2
    assert results[1].passed and results[2].passed


# -- properties -------------------------------------------------------------------------


@given(layernorm_cases())
def test_normalised_rows_have_zero_mean_and_unit_variance_up_to_eps(case):
    x = case[0]
    C = x.shape[-1]
    eps = 1e-5
    out, _ = layernorm_forward(x, np.ones(C), np.zeros(C), eps=eps)
    np.testing.assert_allclose(out.mean(axis=-1), 0.0, atol=1e-13)
    if C > 1:
        var = x.var(axis=-1)
        # Exactly var / (var + eps), which is 1 up to eps / var.
        np.testing.assert_allclose(out.var(axis=-1), var / (var + eps), rtol=1e-12)
        assert np.all(np.abs(out.var(axis=-1) - 1.0) <= eps / var + 1e-12)


@given(layernorm_cases(), st.floats(0.25, 4.0), st.floats(-5.0, 5.0))
def test_invariant_to_positive_affine_maps_of_the_input(case, a, b):
    x, weight, bias, _ = case
    # LN(a x + b; eps) equals LN(x; eps / a^2) exactly in real arithmetic...
    out_scaled, _ = layernorm_forward(a * x + b, weight, bias, eps=1e-5)
    out_eps, _ = layernorm_forward(x, weight, bias, eps=1e-5 / a ** 2)
    np.testing.assert_allclose(out_scaled, out_eps, rtol=1e-9, atol=1e-12)
    # ...and with a tiny eps the eps effect (relative eps / var) vanishes.
    out_tiny, _ = layernorm_forward(a * x + b, weight, bias, eps=1e-14)
    out_ref, _ = layernorm_forward(x, weight, bias, eps=1e-14)
    np.testing.assert_allclose(out_tiny, out_ref, rtol=1e-9, atol=1e-11)


@given(layernorm_cases())
def test_dx_sums_to_zero_over_each_row(case):
    x, weight, bias, dout = case
    _, cache = layernorm_forward(x, weight, bias)
    dx, _, _ = layernorm_backward(dout, cache)
    scale = 1.0 + np.abs(dx).max()
    np.testing.assert_allclose(dx.sum(axis=-1), 0.0, atol=1e-14 * x.shape[-1] * scale)


@given(layernorm_cases(), st.data())
def test_batch_permutation_equivariance(case, data):
    x, weight, bias, dout = case
    if x.ndim < 2:
        x, dout = x[None], dout[None]
    perm = np.array(data.draw(st.permutations(range(x.shape[0]))))
    out, cache = layernorm_forward(x, weight, bias)
    out_p, cache_p = layernorm_forward(x[perm], weight, bias)
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-13, atol=1e-13)
    dx, dweight, dbias = layernorm_backward(dout, cache)
    dx_p, dweight_p, dbias_p = layernorm_backward(dout[perm], cache_p)
    np.testing.assert_allclose(dx_p, dx[perm], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dweight_p, dweight, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dbias_p, dbias, rtol=1e-12, atol=1e-13)


@given(layernorm_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    x, weight, bias, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = layernorm_forward(x, weight, bias)
    combined = layernorm_backward(a * d1 + c * d2, cache)
    separate = [a * g1 + c * g2 for g1, g2 in zip(layernorm_backward(d1, cache), layernorm_backward(d2, cache))]
    for got, want in zip(combined, separate):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    x, weight, bias = (a.astype(dtype) for a in random_case(np.random.default_rng(4)))
    out, cache = layernorm_forward(x, weight, bias)
    assert out.dtype == dtype
    for g in layernorm_backward(np.ones_like(out), cache):
        assert g.dtype == dtype


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    x, weight, bias = random_case(np.random.default_rng(5))
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        layernorm_forward(x.tolist(), weight, bias)
    with pytest.raises(TypeError, match=r"x must have a floating dtype"):
        layernorm_forward(x.astype(np.int32), weight, bias)
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension.*got shape \(\)"):
        layernorm_forward(np.ones(()), weight, bias)
    with pytest.raises(ValueError, match=r"weight must have 1 dimensions, got shape \(1, 6\)"):
        layernorm_forward(x, weight[None], bias)
    with pytest.raises(ValueError, match=r"weight and bias must have shape \(6,\).*\(2, 3, 6\).*weight \(5,\)"):
        layernorm_forward(x, weight[:5], bias)
    with pytest.raises(ValueError, match=r"weight and bias must have shape \(6,\).*bias \(7,\)"):
        layernorm_forward(x, weight, np.append(bias, 1.0))
    with pytest.raises(TypeError, match=r"weight has dtype float32 but x has dtype float64"):
        layernorm_forward(x, weight.astype(np.float32), bias)
    with pytest.raises(TypeError, match=r"bias has dtype float32 but x has dtype float64"):
        layernorm_forward(x, weight, bias.astype(np.float32))
    for bad in (0.0, -1e-5, "1e-5", None, np.inf, np.array([1e-5])):
        with pytest.raises(ValueError, match=r"eps must be a finite number above 0, got " + re.escape(repr(bad))):
            layernorm_forward(x, weight, bias, eps=bad)
    layernorm_forward(x, weight, bias, eps=np.float32(1e-5))          # a NumPy scalar is a number
    with pytest.raises(TypeError, match=r"x must have a floating dtype of float32 or wider .* got float16"):
        layernorm_forward(x.astype(np.float16), weight.astype(np.float16), bias.astype(np.float16))


def test_backward_rejects_a_wrong_dout():
    x, weight, bias = random_case(np.random.default_rng(6))
    _, cache = layernorm_forward(x, weight, bias)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3, 6\), got \(3, 6\)"):
        layernorm_backward(np.zeros((3, 6)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32"):
        layernorm_backward(np.zeros((2, 3, 6), dtype=np.float32), cache)


def test_an_empty_feature_axis_is_rejected_by_name():
    x = np.zeros((2, 3, 0))
    with pytest.raises(ValueError, match=r"x must have at least one feature.*\(2, 3, 0\)"):
        layernorm_forward(x, np.zeros(0), np.zeros(0))
