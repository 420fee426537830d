"""Tests for numgpt.layers.linear: Y = X W + b with W stored (in, out).

Gradient checks run in float64 against 4th-order central differences and must
reach a relative error below 1e-7. Inputs stay moderate (x in [-2, 2], w in
[-1, 1], dout in [-0.5, 0.5]): the checker judges gradient entries below 1e-5
in absolute terms (1e-12), and finite-difference round-off grows with
|out| * |dout|.
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import linear_backward, linear_forward

RTOL = 1e-7


def assert_gradcheck_passes(results, names):
    assert [r.name for r in results] == list(names)
    for r in results:
        assert r.passed and r.max_rel_error < RTOL, f"{r.name}: max rel error {r.max_rel_error:.3e}"


def random_case(rng, lead=(2, 3), c_in=4, c_out=5):
    x = rng.uniform(-2, 2, lead + (c_in,))
    w = rng.uniform(-1, 1, (c_in, c_out))
    b = rng.uniform(0.2, 1.0, c_out) * rng.choice([-1, 1], c_out)
    return x, w, b


@st.composite
def linear_cases(draw, bias=True):
    lead = draw(ns.dims(min_dims=0, max_dims=2, max_side=3))
    c_in, c_out = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    x = draw(ns.float_arrays(lead + (c_in,), min_value=-2, max_value=2))
    w = draw(ns.float_arrays((c_in, c_out), min_value=-1, max_value=1))
    b = draw(ns.biases(c_out)) if bias else None
    dout = draw(ns.upstream_grads(lead + (c_out,), scale=0.5))
    return x, w, b, dout


# -- forward -------------------------------------------------------------------------


def test_forward_is_the_affine_map_element_by_element():
    x, w, b = random_case(np.random.default_rng(0))
    out, _ = linear_forward(x, w, b)
    expected = np.einsum("btj,jk->btk", x, w) + b
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)
    out_nobias, _ = linear_forward(x, w)
    np.testing.assert_allclose(out_nobias, expected - b, rtol=1e-13, atol=1e-13)


def test_forward_on_a_single_vector():
    w = np.arange(6.0).reshape(3, 2)
    out, _ = linear_forward(np.array([1.0, -1.0, 2.0]), w, np.array([0.5, -0.5]))
    np.testing.assert_array_equal(out, [1 * 0 - 2 + 8 + 0.5, 1 - 3 + 10 - 0.5])


# -- gradients against finite differences ----------------------------------------------


def test_gradcheck_fixed_seed():
    x, w, b = random_case(np.random.default_rng(1))
    results = check_layer(linear_forward, linear_backward, (x, w, b), names=("x", "w", "b"), seed=3)
    assert_gradcheck_passes(results, ("x", "w", "b"))


def test_gradcheck_without_bias_returns_none_for_db():
    x, w, _ = random_case(np.random.default_rng(2))
    results = check_layer(linear_forward, linear_backward, (x, w), names=("x", "w"))
    assert_gradcheck_passes(results, ("x", "w"))
    _, cache = linear_forward(x, w)
    dx, dw, db = linear_backward(np.ones((2, 3, 5)), cache)
    assert db is None and dx.shape == x.shape and dw.shape == w.shape


@given(linear_cases())
def test_gradcheck_hypothesis(case):
    x, w, b, dout = case
    results = check_layer(linear_forward, linear_backward, (x, w, b), names=("x", "w", "b"), dout=dout)
    assert_gradcheck_passes(results, ("x", "w", "b"))


def test_gradcheck_adjoint_on_a_larger_layer():
    x, w, b = random_case(np.random.default_rng(4), lead=(4, 16), c_in=32, c_out=48)
    results = check_layer(linear_forward, linear_backward, (x, w, b), names=("x", "w", "b"), method="adjoint")
    assert_gradcheck_passes(results, ("x", "w", "b"))


def test_gradcheck_catches_a_bias_gradient_that_averages_instead_of_sums():
    def wrong_backward(dout, cache):
        dx, dw, db = linear_backward(dout, cache)
        return dx, dw, dout.reshape(-1, dout.shape[-1]).mean(axis=0)

    x, w, b = random_case(np.random.default_rng(5))
    results = check_layer(linear_forward, wrong_backward, (x, w, b), names=("x", "w", "b"))
    assert results[0].passed and results[1].passed
    assert not results[2].passed and results[2].max_rel_error > 0.5   # off by a factor N = 6


# -- properties -------------------------------------------------------------------------


@given(linear_cases(), st.data())
def test_batch_permutation_equivariance(case, data):
    x, w, b, dout = case
    if x.ndim < 2:
        x, dout = x[None], dout[None]
    perm = np.array(data.draw(st.permutations(range(x.shape[0]))))
    out, cache = linear_forward(x, w, b)
    out_p, cache_p = linear_forward(x[perm], w, b)
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-12, atol=1e-12)
    dx, dw, db = linear_backward(dout, cache)
    dx_p, dw_p, db_p = linear_backward(dout[perm], cache_p)
    np.testing.assert_allclose(dx_p, dx[perm], rtol=1e-12, atol=1e-12)
    # Parameter gradients sum over the batch: a permutation leaves them unchanged.
    np.testing.assert_allclose(dw_p, dw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(db_p, db, rtol=1e-12, atol=1e-12)


@given(linear_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    x, w, b, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = linear_forward(x, w, b)
    combined = linear_backward(a * d1 + c * d2, cache)
    separate = [a * g1 + c * g2 for g1, g2 in zip(linear_backward(d1, cache), linear_backward(d2, cache))]
    for got, want in zip(combined, separate):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dtype_is_preserved(dtype, with_bias):
    x, w, b = (a.astype(dtype) for a in random_case(np.random.default_rng(6)))
    out, cache = linear_forward(x, w, b if with_bias else None)
    assert out.dtype == dtype
    grads = linear_backward(np.ones_like(out), cache)
    for g in grads[:2] + ((grads[2],) if with_bias else ()):
        assert g.dtype == dtype


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    x, w, b = random_case(np.random.default_rng(7))
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        linear_forward(x.tolist(), w, b)
    with pytest.raises(TypeError, match=r"w must have a floating dtype.*int"):
        linear_forward(x, w.astype(np.int64), b)
    with pytest.raises(ValueError, match=r"w must have 2 dimensions, got shape \(4, 5, 1\)"):
        linear_forward(x, w[..., None], b)
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension.*\(\)"):
        linear_forward(np.ones(()), w, b)
    with pytest.raises(ValueError, match=r"x has 3 input features \(shape \(2, 3, 3\)\).*w.*\(4, 5\)"):
        linear_forward(x[..., :3], w, b)
    with pytest.raises(ValueError, match=r"b must have shape \(5,\).*got \(4,\)"):
        linear_forward(x, w, b[:4])
    with pytest.raises(ValueError, match=r"b must have 1 dimensions"):
        linear_forward(x, w, b[None])
    with pytest.raises(TypeError, match=r"w has dtype float32 but x has dtype float64"):
        linear_forward(x, w.astype(np.float32), b)
    with pytest.raises(TypeError, match=r"b has dtype float32 but x has dtype float64"):
        linear_forward(x, w, b.astype(np.float32))


@pytest.mark.parametrize("c_in, c_out", [(0, 3), (3, 0)])
def test_backward_handles_every_shape_the_forward_accepts(c_in, c_out):
    # The forward accepts an empty feature axis (the product is well defined);
    # the backward must then return gradients of the right shapes. Today
    # x.reshape(-1, 0) / dout.reshape(-1, 0) raise "cannot reshape array of
    # size 0 into shape (0)". (A forward that rejected the shape by name would
    # be fine too.)
    x, w, b = np.ones((2, c_in)), np.ones((c_in, c_out)), np.ones(c_out)
    try:
        out, cache = linear_forward(x, w, b)
    except ValueError as exc:
        assert re.search(r"\bx\b|\bw\b", str(exc)), str(exc)
        return
    dx, dw, db = linear_backward(np.ones_like(out), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    np.testing.assert_array_equal(dx, c_out * np.ones_like(x) if c_out else 0.0)
    np.testing.assert_array_equal(db, 2.0)


def test_backward_rejects_a_wrong_dout():
    x, w, b = random_case(np.random.default_rng(8))
    _, cache = linear_forward(x, w, b)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3, 5\), got \(2, 3, 4\)"):
        linear_backward(np.zeros((2, 3, 4)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32"):
        linear_backward(np.zeros((2, 3, 5), dtype=np.float32), cache)
    with pytest.raises(TypeError, match=r"dout must be a numpy.ndarray"):
        linear_backward(0.0, cache)
