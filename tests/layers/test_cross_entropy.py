"""Tests for numgpt.layers.cross_entropy: fused softmax + mean cross-entropy with ignored targets.

The mean runs over the M targets that are not ignored, so some targets are
always ignored here (and never all): a backward that divides by the wrong
count is then visibly wrong.
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import softmax_cross_entropy_backward, softmax_cross_entropy_forward

RTOL = 1e-7
NAMES = ("logits", "targets")


def assert_gradcheck_passes(results):
    assert [r.name for r in results] == ["logits"]
    r = results[0]
    assert r.passed and r.max_rel_error < RTOL, f"max rel error {r.max_rel_error:.3e}"


def random_case(rng, B=2, T=5, V=7):
    logits = rng.standard_normal((B, T, V)) * 1.5
    targets = rng.integers(0, V, size=(B, T))
    targets[0, 1] = targets[1, 3] = targets[1, 4] = -1          # 3 of 10 ignored: M = 7
    return logits, targets


@st.composite
def ce_cases(draw, ignore_index=-1):
    lead = draw(ns.dims(min_dims=0, max_dims=2, max_side=4))
    V = draw(st.integers(1, 6))
    if ignore_index in range(V) and V == 1:
        V = 2
    logits = draw(ns.float_arrays(lead + (V,)))
    return logits, draw(ns.targets(lead, V, ignore_index=ignore_index))


def reference_loss(logits, targets, ignore_index=-1):
    """-mean log softmax at the target, over the targets that are not ignored, row by row."""
    terms = []
    for idx in np.ndindex(targets.shape):
        y = targets[idx]
        if y == ignore_index:
            continue
        z = logits[idx]
        terms.append(-(z[y] - np.log(np.sum(np.exp(z)))))
    return np.mean(terms)


# -- forward -------------------------------------------------------------------------


def test_loss_by_hand():
    # Uniform logits over 4 classes: every target costs log 4.
    loss, _ = softmax_cross_entropy_forward(np.zeros((3, 4)), np.array([0, 3, -1]))
    assert loss == pytest.approx(np.log(4.0), rel=1e-15)
    # p = [1/8, 1/4, 5/8]: target 2 costs log(8/5), target 0 costs log 8; mean of the two.
    loss, _ = softmax_cross_entropy_forward(np.log(np.array([[1.0, 2.0, 5.0]] * 2)), np.array([2, 0]))
    assert loss == pytest.approx((np.log(8 / 5) + np.log(8)) / 2, rel=1e-14)


@given(ce_cases())
def test_loss_matches_the_definition_and_is_non_negative(case):
    logits, targets = case
    loss, _ = softmax_cross_entropy_forward(logits, targets)
    assert np.ndim(loss) == 0 and loss >= 0
    np.testing.assert_allclose(loss, reference_loss(logits, targets), rtol=1e-12, atol=1e-15)


@given(ce_cases(ignore_index=2))
def test_ignore_index_may_be_any_value(case):
    logits, targets = case
    loss, _ = softmax_cross_entropy_forward(logits, targets, ignore_index=2)
    np.testing.assert_allclose(loss, reference_loss(logits, targets, ignore_index=2), rtol=1e-12, atol=1e-15)


def test_extreme_logits_give_finite_loss_without_an_epsilon():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, -1e4, 5.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, cache = softmax_cross_entropy_forward(logits, np.array([2, 1]))
        dlogits = softmax_cross_entropy_backward(1.0, cache)
    # Row 0 costs 2000 (the target is 2000 below the max, whose share is all of it);
    # row 1 costs 1e4 + log(e^0 + e^5), the e^-1e4 term having underflowed harmlessly.
    np.testing.assert_allclose(loss, (2000.0 + 1e4 + 5.0 + np.log1p(np.exp(-5.0))) / 2, rtol=1e-14)
    assert np.all(np.isfinite(dlogits))


# -- gradients ---------------------------------------------------------------------------


def test_gradcheck_fixed_seed():
    logits, targets = random_case(np.random.default_rng(0))
    results = check_layer(softmax_cross_entropy_forward, softmax_cross_entropy_backward, (logits, targets),
                          names=NAMES, seed=3)
    assert_gradcheck_passes(results)


@given(ce_cases(), st.floats(-2, 2).filter(lambda d: abs(d) > 0.1))
def test_gradcheck_hypothesis(case, dloss):
    logits, targets = case
    results = check_layer(softmax_cross_entropy_forward, softmax_cross_entropy_backward, (logits, targets),
                          names=NAMES, dout=dloss)
    assert_gradcheck_passes(results)


def test_gradcheck_adjoint_on_a_larger_input():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((4, 32, 100)) * 2
    targets = rng.integers(0, 100, size=(4, 32))
    targets[:, ::3] = -1
    results = check_layer(softmax_cross_entropy_forward, softmax_cross_entropy_backward, (logits, targets),
                          names=NAMES, method="adjoint")
    assert_gradcheck_passes(results)


def test_gradcheck_adjoint_across_row_blocks():
    # 1300 rows of 100 classes are two blocks of rows (row_blocks): the blocked forward's
    # gradient against finite differences in float64.
    from numgpt.layers._blocks import row_blocks
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((10, 130, 100)) * 2
    targets = rng.integers(0, 100, size=(10, 130))
    targets[:, ::3] = -1
    assert len(row_blocks(1300, 100)) == 2
    results = check_layer(softmax_cross_entropy_forward, softmax_cross_entropy_backward, (logits, targets),
                          names=NAMES, method="adjoint")
    assert_gradcheck_passes(results)


def _probs_minus_onehot(cache):
    probs, rows, yv, count, shape = cache
    d = np.zeros_like(probs)
    d[rows] = probs[rows]
    d[rows, yv] -= 1.0
    return d, count, shape


def backward_forgetting_the_mean(dloss=1.0, cache=None):
    d, _, shape = _probs_minus_onehot(cache)
    return (d * dloss).reshape(shape)


def backward_dividing_by_all_rows(dloss=1.0, cache=None):
    d, _, shape = _probs_minus_onehot(cache)
    return (d * dloss / d.shape[0]).reshape(shape)        # N counts the ignored rows too


@pytest.mark.parametrize("wrong_backward", [backward_forgetting_the_mean, backward_dividing_by_all_rows])
def test_gradcheck_catches_a_wrong_normalisation(wrong_backward):
    logits, targets = random_case(np.random.default_rng(2))
    results = check_layer(softmax_cross_entropy_forward, wrong_backward, (logits, targets), names=NAMES)
    assert not results[0].passed and results[0].max_rel_error > 0.2     # off by 7x and by 10/7


# -- properties -------------------------------------------------------------------------


@given(ce_cases())
def test_gradient_is_p_minus_onehot_over_the_count(case):
    logits, targets = case
    _, cache = softmax_cross_entropy_forward(logits, targets)
    dlogits = softmax_cross_entropy_backward(1.0, cache)
    assert dlogits.shape == logits.shape
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    y = targets.reshape(-1)
    d = dlogits.reshape(-1, V)
    valid = y != -1
    M = valid.sum()
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = (p - np.eye(V)[np.where(valid, y, 0)]) / M
    np.testing.assert_allclose(d[valid], expected[valid], rtol=1e-12, atol=1e-16)
    assert np.all(d[~valid] == 0.0)                       # ignored rows: exactly zero
    np.testing.assert_allclose(d.sum(axis=1), 0.0, atol=1e-15)


@given(ce_cases(), st.floats(-4, 4), st.floats(-4, 4))
def test_backward_is_linear_in_dloss(case, a, c):
    logits, targets = case
    _, cache = softmax_cross_entropy_forward(logits, targets)
    d1, d2 = 0.75, -1.25
    np.testing.assert_allclose(softmax_cross_entropy_backward(a * d1 + c * d2, cache),
                               a * softmax_cross_entropy_backward(d1, cache)
                               + c * softmax_cross_entropy_backward(d2, cache), rtol=1e-10, atol=1e-15)


def test_backward_accepts_the_cache_as_keyword_with_default_dloss():
    logits, targets = random_case(np.random.default_rng(3))
    _, cache = softmax_cross_entropy_forward(logits, targets)
    np.testing.assert_array_equal(softmax_cross_entropy_backward(cache=cache),
                                  softmax_cross_entropy_backward(1.0, cache))
    np.testing.assert_array_equal(softmax_cross_entropy_backward(np.float64(2.0), cache),
                                  softmax_cross_entropy_backward(np.array(2.0), cache))


@given(ce_cases(), st.floats(-2, 2))
def test_the_in_place_paths_give_the_same_loss_and_gradient(case, dloss):
    logits, targets = case
    loss, cache = softmax_cross_entropy_forward(logits, targets)
    dlogits = softmax_cross_entropy_backward(dloss, cache)
    spent = logits.copy()                                 # overwrite_logits may consume its buffer
    loss_in_place, cache_in_place = softmax_cross_entropy_forward(spent, targets, overwrite_logits=True)
    np.testing.assert_allclose(loss_in_place, loss, rtol=1e-14)
    dlogits_in_place = softmax_cross_entropy_backward(dloss, cache_in_place, overwrite_cache=True)
    np.testing.assert_allclose(dlogits_in_place, dlogits, rtol=1e-14, atol=1e-300)
    assert np.all(dlogits_in_place[targets == -1] == 0.0)     # ignored rows zeroed in the reused buffer


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    logits, targets = random_case(np.random.default_rng(4))
    loss, cache = softmax_cross_entropy_forward(logits.astype(dtype), targets)
    assert loss.dtype == dtype
    assert softmax_cross_entropy_backward(1.0, cache).dtype == dtype
    assert softmax_cross_entropy_backward(np.float64(0.5), cache).dtype == dtype


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    logits, targets = random_case(np.random.default_rng(5))
    with pytest.raises(TypeError, match=r"logits must be a numpy.ndarray, got list"):
        softmax_cross_entropy_forward(logits.tolist(), targets)
    with pytest.raises(TypeError, match=r"logits must have a floating dtype"):
        softmax_cross_entropy_forward(logits.astype(np.int64), targets)
    with pytest.raises(ValueError, match=r"logits must have at least 1 dimension.*got shape \(\)"):
        softmax_cross_entropy_forward(np.zeros(()), np.zeros((), dtype=np.int64))
    with pytest.raises(TypeError, match=r"targets must have an integer dtype, got float64"):
        softmax_cross_entropy_forward(logits, targets.astype(np.float64))
    with pytest.raises(TypeError, match=r"targets must be a numpy.ndarray of integers, got list"):
        softmax_cross_entropy_forward(logits, targets.tolist())
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 5\).*\(2, 5, 7\).*got \(2, 4\)"):
        softmax_cross_entropy_forward(logits, targets[:, :4])
    out_of_range = targets.copy()
    out_of_range[1, 0] = 7
    with pytest.raises(ValueError, match=r"targets hold classes outside \[0, 7\).*\[7\]"):
        softmax_cross_entropy_forward(logits, out_of_range)
    out_of_range[1, 0] = -3
    with pytest.raises(ValueError, match=r"targets hold classes outside \[0, 7\).*ignore_index=-1.*\[-3\]"):
        softmax_cross_entropy_forward(logits, out_of_range)
    with pytest.raises(ValueError, match=r"every target equals ignore_index=-1"):
        softmax_cross_entropy_forward(logits, np.full((2, 5), -1))
    with pytest.raises(ValueError, match=r"every target equals ignore_index=3"):
        softmax_cross_entropy_forward(logits, np.full((2, 5), 3), ignore_index=3)


def test_an_empty_vocabulary_is_rejected_by_name():
    # V = 0: no class exists, so a ValueError must name logits or targets. Today
    # logits.reshape(-1, 0) raises "cannot reshape array of size 0 into shape (0)".
    with pytest.raises(ValueError, match=r"logits|targets"):
        softmax_cross_entropy_forward(np.zeros((2, 0)), np.zeros(2, dtype=np.int64))


def test_backward_rejects_a_bad_dloss_or_a_missing_cache():
    logits, targets = random_case(np.random.default_rng(6))
    _, cache = softmax_cross_entropy_forward(logits, targets)
    with pytest.raises(ValueError, match=r"dloss must be a real scalar.*got shape \(2,\)"):
        softmax_cross_entropy_backward(np.ones(2), cache)
    for bad in ("1.0", 1 + 2j, np.complex128(1.0)):     # complex: its imaginary part would be dropped
        with pytest.raises(ValueError, match=r"dloss must be a real scalar .*, got " + re.escape(repr(bad))):
            softmax_cross_entropy_backward(bad, cache)
    with pytest.raises(TypeError, match=r"needs the cache"):
        softmax_cross_entropy_backward(1.0)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_blocked_rows_match_the_whole_array_formula(dtype, rtol):
    # The forward runs its passes on blocks of about BLOCK logits (numgpt/layers/_blocks.py):
    # 2500 rows of 65 classes are three blocks, the last one partial, some rows ignored.
    from numgpt.layers._blocks import row_blocks
    N, V = 2500, 65
    assert len(row_blocks(N, V)) == 3
    rng = np.random.default_rng(3)
    logits = (4 * rng.standard_normal((N, V))).astype(dtype)
    targets = rng.integers(0, V, N)
    targets[::7] = -1
    loss, cache = softmax_cross_entropy_forward(logits.copy(), targets, overwrite_logits=True)
    dlogits = softmax_cross_entropy_backward(0.5, cache)
    z = logits.astype(np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    kept = targets != -1
    want_loss = -np.log(probs[kept, targets[kept]]).mean()
    want = probs.copy()
    want[kept, targets[kept]] -= 1.0
    want[~kept] = 0.0
    want *= 0.5 / kept.sum()
    assert loss.dtype == dtype and loss == pytest.approx(want_loss, rel=rtol)
    np.testing.assert_allclose(dlogits, want, rtol=rtol, atol=rtol * np.abs(want).max())
