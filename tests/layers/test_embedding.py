"""Tests for numgpt.layers.embedding: y[b, t] = wte[idx[b, t]] + wpe[t].

The backward must accumulate the upstream gradient of every occurrence of a
repeated id, so ids here always repeat; ``scatter_add_rows``, the fast
accumulation, is compared with ``np.add.at``.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import embedding_backward, embedding_forward
from numgpt.layers.embedding import scatter_add_rows

RTOL = 1e-7
NAMES = ("idx", "wte", "wpe")


def assert_gradcheck_passes(results, names=("wte", "wpe")):
    assert [r.name for r in results] == list(names)
    for r in results:
        assert r.passed and r.max_rel_error < RTOL, f"{r.name}: max rel error {r.max_rel_error:.3e}"


def random_case(rng, B=2, T=5, V=7, T_max=8, C=3):
    idx = rng.integers(0, V, size=(B, T))
    idx[0, :2] = idx[1, -1] = 4                        # id 4 three times
    return idx, rng.standard_normal((V, C)), rng.standard_normal((T_max, C))


@st.composite
def embedding_cases(draw):
    B, T, C = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    V, T_max = draw(st.integers(1, 6)), draw(st.integers(T, T + 3))
    idx = draw(ns.token_ids((B, T), V))
    wte = draw(ns.float_arrays((V, C)))
    wpe = draw(ns.float_arrays((T_max, C)))
    return idx, wte, wpe, draw(ns.upstream_grads((B, T, C)))


# -- forward -------------------------------------------------------------------------


def test_forward_adds_token_and_position_rows():
    idx, wte, wpe = random_case(np.random.default_rng(0))
    out, _ = embedding_forward(idx, wte, wpe)
    assert out.shape == (2, 5, 3)
    for b in range(2):
        for t in range(5):
            np.testing.assert_array_equal(out[b, t], wte[idx[b, t]] + wpe[t])


def test_forward_does_not_alias_the_tables():
    idx, wte, wpe = random_case(np.random.default_rng(1))
    wte_before, wpe_before = wte.copy(), wpe.copy()
    out, _ = embedding_forward(idx, wte, wpe)
    out += 100.0
    np.testing.assert_array_equal(wte, wte_before)
    np.testing.assert_array_equal(wpe, wpe_before)


# -- gradients against finite differences ----------------------------------------------


def test_gradcheck_fixed_seed():
    idx, wte, wpe = random_case(np.random.default_rng(2))
    results = check_layer(embedding_forward, embedding_backward, (idx, wte, wpe), names=NAMES, seed=1)
    assert_gradcheck_passes(results)


@given(embedding_cases())
def test_gradcheck_hypothesis(case):
    idx, wte, wpe, dout = case
    results = check_layer(embedding_forward, embedding_backward, (idx, wte, wpe), names=NAMES, dout=dout)
    assert_gradcheck_passes(results)


def test_gradcheck_adjoint_on_a_larger_table():
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 50, size=(8, 32))            # 256 draws from 50 ids: plenty of repeats
    results = check_layer(embedding_forward, embedding_backward,
                          (idx, rng.standard_normal((50, 16)), rng.standard_normal((40, 16))),
                          names=NAMES, method="adjoint")
    assert_gradcheck_passes(results)


def test_gradcheck_catches_fancy_index_assignment_that_drops_repeats():
    def backward_dropping_repeats(dout, cache):
        idx, wte_shape, wpe_shape, dtype = cache
        dwte = np.zeros(wte_shape, dtype=dtype)
        dwte[idx] += dout              # buffered: a repeated id keeps only one occurrence
        dwpe = np.zeros(wpe_shape, dtype=dtype)
        dwpe[:idx.shape[1]] = dout.sum(axis=0)
        return dwte, dwpe

    idx, wte, wpe = random_case(np.random.default_rng(4))
    results = check_layer(embedding_forward, backward_dropping_repeats, (idx, wte, wpe), names=NAMES)
    assert not results[0].passed and results[0].max_rel_error > 0.1
    assert results[1].passed                           # the position gradient was right


# -- properties -------------------------------------------------------------------------


@given(embedding_cases(), st.integers(0, 5))
def test_unused_ids_and_positions_beyond_T_get_exactly_zero(case, extra_ids):
    idx, wte, wpe, dout = case
    wte = np.vstack([wte, np.ones((extra_ids, wte.shape[1]))])   # ids no sequence uses
    _, cache = embedding_forward(idx, wte, wpe)
    dwte, dwpe = embedding_backward(dout, cache)
    unused = np.setdiff1d(np.arange(wte.shape[0]), idx)
    assert np.all(dwte[unused] == 0.0)
    T = idx.shape[1]
    assert np.all(dwpe[T:] == 0.0)
    np.testing.assert_allclose(dwpe[:T], dout.sum(axis=0), rtol=1e-14, atol=1e-15)
    for v in np.unique(idx):
        np.testing.assert_allclose(dwte[v], dout[idx == v].sum(axis=0), rtol=1e-13, atol=1e-14)


def test_gradient_of_a_repeated_id_is_the_sum_of_its_occurrences():
    idx = np.array([[2, 0, 2, 2]])
    dout = np.array([[[1.0, 10.0], [5.0, 5.0], [2.0, 20.0], [4.0, 40.0]]])
    _, cache = embedding_forward(idx, np.zeros((3, 2)), np.zeros((6, 2)))
    dwte, dwpe = embedding_backward(dout, cache)
    np.testing.assert_array_equal(dwte, [[5.0, 5.0], [0.0, 0.0], [7.0, 70.0]])
    np.testing.assert_array_equal(dwpe, np.vstack([dout[0], np.zeros((2, 2))]))


@given(embedding_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    idx, wte, wpe, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = embedding_forward(idx, wte, wpe)
    combined = embedding_backward(a * d1 + c * d2, cache)
    separate = [a * g1 + c * g2 for g1, g2 in zip(embedding_backward(d1, cache), embedding_backward(d2, cache))]
    for got, want in zip(combined, separate):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64, np.uint16])
def test_dtype_is_preserved(dtype, id_dtype):
    idx, wte, wpe = random_case(np.random.default_rng(5))
    out, cache = embedding_forward(idx.astype(id_dtype), wte.astype(dtype), wpe.astype(dtype))
    assert out.dtype == dtype
    for g in embedding_backward(np.ones_like(out), cache):
        assert g.dtype == dtype


# -- scatter_add_rows --------------------------------------------------------------------


@st.composite
def scatter_cases(draw, integral):
    n_rows, width, n = draw(st.integers(1, 8)), draw(st.integers(1, 4)), draw(st.integers(0, 30))
    rows = draw(hnp.arrays(np.int64, n, elements=st.integers(0, n_rows - 1)))
    if integral:   # small integers in float64: every sum is exact, whatever the order
        values = draw(hnp.arrays(np.float64, (n, width), elements=st.integers(-1000, 1000).map(float)))
        target = draw(hnp.arrays(np.float64, (n_rows, width), elements=st.integers(-1000, 1000).map(float)))
    else:
        values = draw(ns.float_arrays((n, width), min_row_spread=0)) if n else np.zeros((0, width))
        target = draw(ns.float_arrays((n_rows, width), min_row_spread=0))
    return target, rows, values


@given(scatter_cases(integral=True))
def test_scatter_add_rows_equals_np_add_at_exactly_on_integers(case):
    target, rows, values = case
    expected = target.copy()
    np.add.at(expected, rows, values)
    got = target.copy()
    returned = scatter_add_rows(got, rows, values)
    assert returned is got                             # in place
    np.testing.assert_array_equal(got, expected)


@given(scatter_cases(integral=False))
def test_scatter_add_rows_equals_np_add_at_on_floats(case):
    target, rows, values = case
    expected = target.copy()
    np.add.at(expected, rows, values)
    got = scatter_add_rows(target.copy(), rows, values)
    # Only the order of the additions differs.
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13)


def test_scatter_add_rows_with_one_dimensional_values():
    target = np.zeros(4)
    scatter_add_rows(target, np.array([3, 1, 3, 3]), np.array([1.0, 2.0, 4.0, 8.0]))
    np.testing.assert_array_equal(target, [0.0, 2.0, 0.0, 13.0])


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    idx, wte, wpe = random_case(np.random.default_rng(6))
    with pytest.raises(TypeError, match=r"idx must have an integer dtype, got float64"):
        embedding_forward(idx.astype(np.float64), wte, wpe)
    with pytest.raises(TypeError, match=r"idx must be a numpy.ndarray of integers, got list"):
        embedding_forward(idx.tolist(), wte, wpe)
    with pytest.raises(ValueError, match=r"idx must have 2 dimensions, got shape \(10,\)"):
        embedding_forward(idx.reshape(-1), wte, wpe)
    too_big, negative = idx.copy(), idx.copy()
    too_big[1, 2], negative[0, 4] = 7, -1
    with pytest.raises(ValueError, match=r"idx holds ids outside \[0, 7\) for wte of shape \(7, 3\): e.g. \[7\]"):
        embedding_forward(too_big, wte, wpe)
    with pytest.raises(ValueError, match=r"idx holds ids outside \[0, 7\).*\[-1\]"):
        embedding_forward(negative, wte, wpe)
    with pytest.raises(ValueError, match=r"idx has T=5 positions but wpe only has 4 rows.*\(4, 3\)"):
        embedding_forward(idx, wte, wpe[:4])
    with pytest.raises(ValueError, match=r"wpe must have shape \(T_max, 3\) to match wte \(7, 3\), got \(8, 2\)"):
        embedding_forward(idx, wte, wpe[:, :2])
    with pytest.raises(ValueError, match=r"wte must have 2 dimensions, got shape \(21,\)"):
        embedding_forward(idx, wte.reshape(-1), wpe)
    with pytest.raises(TypeError, match=r"wpe has dtype float32 but wte has dtype float64"):
        embedding_forward(idx, wte, wpe.astype(np.float32))
    with pytest.raises(TypeError, match=r"wte must be a numpy.ndarray, got list"):
        embedding_forward(idx, wte.tolist(), wpe)


def test_backward_rejects_a_wrong_dout():
    idx, wte, wpe = random_case(np.random.default_rng(7))
    _, cache = embedding_forward(idx, wte, wpe)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 5, 3\), got \(2, 5, 4\)"):
        embedding_backward(np.zeros((2, 5, 4)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32"):
        embedding_backward(np.zeros((2, 5, 3), dtype=np.float32), cache)
