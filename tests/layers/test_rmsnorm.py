"""Tests for numgpt.layers.rmsnorm: divide each row by its root mean square, then scale.

Covered with and without the weight, and as QK-norm: the same function over the
last axis (D) of a (B, H, T, D) query or key array. Weights are drawn away from
1 (an identity gain hides a missing factor). Gradient checks run in float64 and
must reach a relative error below 1e-7.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import rmsnorm_backward, rmsnorm_forward
from numgpt.layers.rmsnorm import RMSNORM_EPS

RTOL = 1e-7


def assert_gradcheck_passes(results, names):
    assert [r.name for r in results] == list(names)
    for r in results:
        assert r.passed and r.max_rel_error < RTOL, f"{r.name}: max rel error {r.max_rel_error:.3e}"


def random_case(rng, shape=(2, 3, 6)):
    C = shape[-1]
    x = rng.standard_normal(shape) * 1.5 + 0.5
    weight = rng.uniform(0.5, 0.9, C) + rng.choice([0.0, 0.6], C)   # in [0.5, 0.9] or [1.1, 1.5]
    return x, weight


def rmsnorm_no_weight(x):
    return rmsnorm_forward(x)


@st.composite
def rmsnorm_cases(draw, max_C=8):
    lead = draw(ns.dims(min_dims=0, max_dims=2, max_side=3))
    C = draw(st.integers(1, max_C))
    shape = lead + (C,)
    # Rows that span at least half their range keep the mean square well above eps, and the root mean
    # square at 0.5 or more for C <= 8. At the default quarter, a row like [0, -0.5, 0.25, 0, 0.5, 0, 0]
    # (rms 0.28) left the order-4 differences' truncation error near 1e-12 on gradient entries of 1e-5:
    # a relative error of 1.6e-7 for a right backward (found by the thorough profile).
    x = draw(ns.float_arrays(shape, min_value=-2, max_value=2, min_row_spread=2.0))
    if C == 1:
        x = np.where(np.abs(x) < 0.25, 0.25, x)      # a one-feature row is its own spread
    return x, draw(ns.gains(C)), draw(ns.upstream_grads(shape, scale=0.5))


def reference_rmsnorm(x, weight, eps):
    """The formula, row by row in plain float64."""
    out = np.empty_like(x)
    for idx in np.ndindex(x.shape[:-1]):
        row = x[idx]
        out[idx] = row / np.sqrt((row ** 2).sum() / row.size + eps) * weight
    return out


# -- forward -------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_forward_matches_the_formula(eps):
    x, weight = random_case(np.random.default_rng(0))
    out, _ = rmsnorm_forward(x, weight, eps=eps)
    np.testing.assert_allclose(out, reference_rmsnorm(x, weight, eps), rtol=1e-13, atol=1e-14)
    out, _ = rmsnorm_forward(x, eps=eps)
    np.testing.assert_allclose(out, reference_rmsnorm(x, np.ones(6), eps), rtol=1e-13, atol=1e-14)


def test_forward_by_hand():
    # Row [3, 4]: mean square (9 + 16) / 2 = 12.5; with eps = 3.5, r = 1/4.
    out, _ = rmsnorm_forward(np.array([[3.0, 4.0]]), np.array([2.0, -0.5]), eps=3.5)
    np.testing.assert_array_equal(out, [[1.5, -0.5]])
    assert RMSNORM_EPS == 1e-6


def test_zero_row_gives_zero_without_nan():
    out, cache = rmsnorm_forward(np.zeros((2, 4)), np.full(4, 1.5))
    np.testing.assert_array_equal(out, 0.0)
    dx, dweight = rmsnorm_backward(np.ones((2, 4)), cache)
    np.testing.assert_allclose(dx, 1.5 / np.sqrt(RMSNORM_EPS), rtol=1e-12)   # r g, nothing else
    np.testing.assert_array_equal(dweight, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unit_root_mean_square_up_to_eps(dtype):
    x, _ = random_case(np.random.default_rng(1), shape=(4, 5, 16))
    x = x.astype(dtype)
    out, _ = rmsnorm_forward(x)
    ms = (x.astype(np.float64) ** 2).mean(axis=-1)
    # Exactly ms / (ms + eps), which is 1 up to eps / ms.
    tol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose((out.astype(np.float64) ** 2).mean(axis=-1), ms / (ms + RMSNORM_EPS), rtol=tol)


# -- gradients against finite differences ----------------------------------------------


def test_gradcheck_fixed_seed():
    x, weight = random_case(np.random.default_rng(2))
    assert_gradcheck_passes(check_layer(rmsnorm_forward, rmsnorm_backward, (x, weight),
                                        names=("x", "weight"), seed=5), ("x", "weight"))
    assert_gradcheck_passes(check_layer(rmsnorm_no_weight, rmsnorm_backward, (x,), names=("x",), seed=5), ("x",))


@given(rmsnorm_cases())
def test_gradcheck_hypothesis(case):
    x, weight, dout = case
    assert_gradcheck_passes(check_layer(rmsnorm_forward, rmsnorm_backward, (x, weight),
                                        names=("x", "weight"), dout=dout), ("x", "weight"))
    assert_gradcheck_passes(check_layer(rmsnorm_no_weight, rmsnorm_backward, (x,), names=("x",), dout=dout),
                            ("x",))


def test_gradcheck_adjoint_on_a_larger_input():
    x, weight = random_case(np.random.default_rng(3), shape=(4, 16, 64))
    assert_gradcheck_passes(check_layer(rmsnorm_forward, rmsnorm_backward, (x, weight), names=("x", "weight"),
                                        method="adjoint"), ("x", "weight"))


def test_gradcheck_catches_layernorm_mean_term_and_a_missing_weight():
    def backward_with_a_mean_term(dout, cache):       # layer norm's -mean(g), which RMSNorm must not have
        dx, dweight = rmsnorm_backward(dout, cache)
        x, rstd, weight = cache
        return dx - rstd * (dout * weight).mean(axis=-1, keepdims=True), dweight

    def backward_without_the_weight(dout, cache):     # g = dout instead of dout * weight
        x, rstd, weight = cache
        return rmsnorm_backward(dout, (x, rstd, None)), rmsnorm_backward(dout, cache)[1]

    x, weight = random_case(np.random.default_rng(4))
    for wrong in (backward_with_a_mean_term, backward_without_the_weight):
        results = check_layer(rmsnorm_forward, wrong, (x, weight), names=("x", "weight"))
        assert not results[0].passed and results[0].max_rel_error > 1e-2, wrong.__name__
        assert results[1].passed


# -- QK-norm: RMSNorm of each head's query and key over head_dim ------------------------


def test_qk_norm_is_rmsnorm_over_head_dim_per_head():
    rng = np.random.default_rng(5)
    B, H, T, D = 2, 3, 4, 8
    q = rng.standard_normal((B, H, T, D)) * 2.0
    weight = rng.uniform(0.5, 1.5, D)
    out, _ = rmsnorm_forward(q, weight)
    for b, h, t in np.ndindex(B, H, T):                # one query vector of one head at a time
        vec = q[b, h, t]
        want = vec / np.sqrt(np.mean(vec ** 2) + RMSNORM_EPS) * weight
        np.testing.assert_allclose(out[b, h, t], want, rtol=1e-13)
    # The (B, T, H, D) layout of the reference implementations gives the same numbers, transposed.
    out_bthd, _ = rmsnorm_forward(np.ascontiguousarray(q.transpose(0, 2, 1, 3)), weight)
    np.testing.assert_allclose(out_bthd, out.transpose(0, 2, 1, 3), rtol=1e-14)


def test_qk_norm_gradcheck_on_a_head_layout():
    rng = np.random.default_rng(6)
    q = rng.standard_normal((2, 2, 3, 4)) * 1.5
    weight = rng.uniform(0.5, 0.9, 4) + rng.choice([0.0, 0.6], 4)
    assert_gradcheck_passes(check_layer(rmsnorm_forward, rmsnorm_backward, (q, weight), names=("q", "weight")),
                            ("q", "weight"))
    assert_gradcheck_passes(check_layer(rmsnorm_no_weight, rmsnorm_backward, (q,), names=("q",)), ("q",))


def test_qk_norm_bounds_every_attention_score():
    # |<q_hat, k_hat>| <= ||q_hat|| ||k_hat|| <= D: normalised heads cannot produce huge logits.
    rng = np.random.default_rng(7)
    q, k = rng.standard_normal((2, 2, 2, 5, 8)) * 100.0
    q_hat, _ = rmsnorm_forward(q)
    k_hat, _ = rmsnorm_forward(k)
    scores = q_hat @ k_hat.transpose(0, 1, 3, 2)
    assert np.abs(scores).max() <= 8 * (1 + 1e-12)


def test_layer_cases_entries_pass_over_several_seeds():
    """This layer's entries in numgpt.gradcheck.layer_cases, built exactly as there."""
    for seed in range(3):
        rng = np.random.default_rng(seed)

        def randn(*shape, scale=1.0, shift=0.0):
            return rng.standard_normal(shape) * scale + shift

        B, T, H, D = 2, 5, 2, 3
        C = H * D
        cases = [
            (rmsnorm_forward, rmsnorm_backward, (randn(B, T, C, scale=2.0, shift=0.5),
                                                 randn(C, scale=0.3, shift=1.5)), ("x", "weight")),
            (lambda x: rmsnorm_forward(x), rmsnorm_backward, (randn(B, H, T, D, scale=2.0),), ("q",)),
        ]
        for forward, backward, inputs, names in cases:
            assert_gradcheck_passes(check_layer(forward, backward, inputs, names=names, seed=seed), names)


# -- properties -------------------------------------------------------------------------


@given(rmsnorm_cases(), st.floats(0.25, 4.0))
def test_invariant_to_scaling_the_input(case, a):
    x, weight, _ = case
    # RMS(a x; eps) equals RMS(x; eps / a^2) exactly in real arithmetic (a > 0; a < 0 flips the sign).
    out_scaled, _ = rmsnorm_forward(a * x, weight, eps=1e-6)
    out_eps, _ = rmsnorm_forward(x, weight, eps=1e-6 / a ** 2)
    np.testing.assert_allclose(out_scaled, out_eps, rtol=1e-12, atol=1e-13)
    out_neg, _ = rmsnorm_forward(-a * x, weight, eps=1e-6)
    np.testing.assert_allclose(out_neg, -out_scaled, rtol=1e-15, atol=0)


@given(rmsnorm_cases())
def test_dx_dot_x_is_r_g_dot_x_times_eps_over_ms_plus_eps(case):
    x, weight, dout = case
    eps = 1e-6
    _, cache = rmsnorm_forward(x, weight, eps=eps)
    dx, _ = rmsnorm_backward(dout, cache)
    ms = (x ** 2).mean(axis=-1)
    r = 1 / np.sqrt(ms + eps)
    want = r * ((dout * weight) * x).sum(axis=-1) * eps / (ms + eps)
    scale = np.abs(dx * x).sum(axis=-1) + 1e-300
    assert np.all(np.abs((dx * x).sum(axis=-1) - want) <= 1e-13 * scale + 1e-15)


@given(rmsnorm_cases(), st.data())
def test_batch_permutation_equivariance(case, data):
    x, weight, dout = case
    if x.ndim < 2:
        x, dout = x[None], dout[None]
    perm = np.array(data.draw(st.permutations(range(x.shape[0]))))
    out, cache = rmsnorm_forward(x, weight)
    out_p, cache_p = rmsnorm_forward(x[perm], weight)
    np.testing.assert_array_equal(out_p, out[perm])
    dx, dweight = rmsnorm_backward(dout, cache)
    dx_p, dweight_p = rmsnorm_backward(dout[perm], cache_p)
    np.testing.assert_allclose(dx_p, dx[perm], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dweight_p, dweight, rtol=1e-12, atol=1e-13)


@given(rmsnorm_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    x, weight, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = rmsnorm_forward(x, weight)
    combined = rmsnorm_backward(a * d1 + c * d2, cache)
    separate = [a * g1 + c * g2 for g1, g2 in zip(rmsnorm_backward(d1, cache), rmsnorm_backward(d2, cache))]
    for got, want in zip(combined, separate):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_changing_the_output_in_place_does_not_change_the_backward():
    x, _ = random_case(np.random.default_rng(8))
    dout = np.random.default_rng(9).standard_normal(x.shape)
    out, cache = rmsnorm_forward(x)
    before = rmsnorm_backward(dout, cache)
    out += 1.0                                        # a caller's residual add, say
    np.testing.assert_array_equal(rmsnorm_backward(dout, cache), before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    x, weight = (a.astype(dtype) for a in random_case(np.random.default_rng(10)))
    out, cache = rmsnorm_forward(x, weight)
    assert out.dtype == dtype
    for g in rmsnorm_backward(np.ones_like(out), cache):
        assert g.dtype == dtype
    out, cache = rmsnorm_forward(x)
    assert out.dtype == dtype and rmsnorm_backward(np.ones_like(out), cache).dtype == dtype


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    x, weight = random_case(np.random.default_rng(11))
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        rmsnorm_forward(x.tolist(), weight)
    with pytest.raises(TypeError, match=r"x must have a floating dtype"):
        rmsnorm_forward(x.astype(np.int32))
    with pytest.raises(ValueError, match=r"x must have at least 1 dimension.*got shape \(\)"):
        rmsnorm_forward(np.ones(()))
    with pytest.raises(ValueError, match=r"x must have at least one feature.*\(2, 3, 0\)"):
        rmsnorm_forward(np.zeros((2, 3, 0)))
    with pytest.raises(ValueError, match=r"weight must have 1 dimensions, got shape \(1, 6\)"):
        rmsnorm_forward(x, weight[None])
    with pytest.raises(ValueError, match=r"weight must have shape \(6,\) for x of shape \(2, 3, 6\), got \(5,\)"):
        rmsnorm_forward(x, weight[:5])
    with pytest.raises(TypeError, match=r"weight has dtype float32 but x has dtype float64"):
        rmsnorm_forward(x, weight.astype(np.float32))
    with pytest.raises(ValueError, match=r"eps must be a finite number above 0, got 0.0"):
        rmsnorm_forward(x, eps=0.0)
    with pytest.raises(ValueError, match=r"eps must be a finite number above 0, got None"):
        rmsnorm_forward(x, eps=None)
    rmsnorm_forward(x, eps=np.int64(1))                 # a NumPy integer is a number


def test_backward_rejects_a_wrong_dout():
    x, weight = random_case(np.random.default_rng(12))
    _, cache = rmsnorm_forward(x, weight)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 3, 6\), got \(3, 6\)"):
        rmsnorm_backward(np.zeros((3, 6)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32"):
        rmsnorm_backward(np.zeros((2, 3, 6), dtype=np.float32), cache)
