"""Tests for numgpt.strategies: the strategies must deliver the guarantees the layer tests lean on.

Each guarantee is checked on random draws and on the *minimal* draw
(``hypothesis.find``), since shrinking is exactly where Hypothesis produces
the degenerate arrays these strategies exist to avoid.
"""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, find, given
from hypothesis.errors import NoSuchExample
from hypothesis import strategies as st

from numgpt import strategies as ns


def test_importing_numgpt_does_not_import_hypothesis():
    code = ("import sys, numgpt, numgpt.layers, numgpt.gradcheck, numgpt.cli; "
            "print('hypothesis' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert proc.stdout.strip() == "False"


# -- shapes ----------------------------------------------------------------------------------


@given(st.data(), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(1, 200))
def test_dims_respects_every_bound(data, min_dims, extra_dims, min_side, extra_side, max_size):
    # min_side above 1 included: more axes than min_side ** n <= max_size allows must not be drawn
    max_dims, max_side = min_dims + extra_dims, min_side + extra_side
    assume(max_size >= max(min_side, 1) ** min_dims)
    shape = data.draw(ns.dims(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side,
                              max_size=max_size))
    assert min_dims <= len(shape) <= max_dims
    assert all(min_side <= s <= max_side for s in shape)
    assert int(np.prod(shape)) <= max_size


def test_dims_draws_no_more_axes_than_fit_at_their_smallest_side():
    # three axes of at least 2 need 8 elements: with max_size 4 at most two axes can be drawn
    with pytest.raises(NoSuchExample):
        find(ns.dims(min_dims=1, max_dims=3, min_side=2, max_size=4), lambda s: int(np.prod(s)) > 4)
    assert find(ns.dims(min_dims=1, max_dims=3, min_side=2, max_size=4), lambda s: len(s) == 2) == (2, 2)


def test_dims_rejects_impossible_bounds():
    with pytest.raises(ValueError, match=r"min_dims <= max_dims.*min_dims=3, max_dims=2"):
        ns.dims(min_dims=3, max_dims=2)
    with pytest.raises(ValueError, match=r"min_side <= max_side.*min_side=4, max_side=2"):
        ns.dims(min_side=4, max_side=2)
    with pytest.raises(ValueError, match=r"max_size=3 is below the smallest shape"):
        ns.dims(min_dims=2, min_side=2, max_size=3)


@given(ns.attention_shapes(max_batch=3, max_T=5, max_heads=4, max_head_dim=3))
def test_attention_shapes_give_C_divisible_by_n_head(shape):
    B, T, n_head, head_dim = shape
    C = n_head * head_dim
    assert 1 <= B <= 3 and 1 <= T <= 5 and 1 <= n_head <= 4 and 1 <= head_dim <= 3
    assert C % n_head == 0 and C // n_head == head_dim


def test_attention_shapes_reject_bad_bounds():
    with pytest.raises(ValueError, match=r"max_heads must be a positive integer, got 0"):
        ns.attention_shapes(max_heads=0)
    with pytest.raises(ValueError, match=r"max_T must be a positive integer, got 2.5"):
        ns.attention_shapes(max_T=2.5)


# -- floats ---------------------------------------------------------------------------------


@given(st.data(), st.sampled_from([np.float32, np.float64]))
def test_float_arrays_are_bounded_finite_and_rows_are_never_constant(data, dtype):
    shape = data.draw(ns.dims(min_dims=1, max_dims=3, max_side=5))
    x = data.draw(ns.float_arrays(shape, dtype=dtype, min_value=-2, max_value=2))
    assert x.shape == shape and x.dtype == dtype
    assert np.all(np.isfinite(x)) and np.all(x >= -2) and np.all(x <= 2)
    if shape[-1] >= 2:
        assert np.all(np.ptp(x.reshape(-1, shape[-1]), axis=1) >= 1.0)    # a quarter of the range


def test_the_minimal_float_array_is_repaired_not_constant():
    x = find(ns.float_arrays((2, 3)), lambda a: True)
    np.testing.assert_array_equal(x, [[-3.0, 0.0, 3.0], [-3.0, 0.0, 3.0]])


def test_float_arrays_draw_elements_independently():
    # With Hypothesis' fill, most elements of a large array would share a value.
    x = find(ns.float_arrays((40,), min_row_spread=0), lambda a: np.unique(a).size > 20)
    assert np.unique(x).size > 20
    y = find(ns.float_arrays((3, 4), min_row_spread=0), lambda a: True)
    np.testing.assert_array_equal(y, 0.0)              # min_row_spread=0: constant rows are allowed


def test_float_arrays_respect_a_custom_spread_and_reject_bad_arguments():
    x = find(ns.float_arrays((5, 4), min_value=-1, max_value=3, min_row_spread=3.5),
             lambda a: True)
    assert np.all(np.ptp(x, axis=1) >= 3.5)
    with pytest.raises(ValueError, match=r"min_value < max_value.*min_value=1, max_value=1"):
        ns.float_arrays((2,), min_value=1, max_value=1)
    with pytest.raises(ValueError, match=r"need finite min_value < max_value, got min_value=-inf, max_value=inf"):
        ns.float_arrays((2,), min_value=-np.inf, max_value=np.inf)
    with pytest.raises(ValueError, match=r"min_row_spread must be in \[0, 6.0\] \(the widest row of float64 values "
                                         r"in \[-3.0, 3.0\]\), got 7"):
        ns.float_arrays((2,), min_row_spread=7)
    # bounds float32 cannot hold exactly are rounded inwards, so the widest row is a little narrower
    with pytest.raises(ValueError, match=r"min_row_spread must be in \[0, 0.1999999880790710[0-9]*\]"):
        ns.float_arrays((3,), np.float32, -0.1, 0.1, min_row_spread=0.2)
    x = find(ns.float_arrays((3,), np.float32, -0.1, 0.1, min_row_spread=0.19999998), lambda a: True)
    assert np.ptp(x.astype(np.float64)) >= 0.19999998
    with pytest.raises(TypeError, match=r"dtype must be float16, float32 or float64, got int64"):
        ns.float_arrays((2,), dtype=np.int64)
    with pytest.raises(TypeError, match=r"shape must be an int or a tuple of ints"):
        ns.float_arrays(None)


@given(st.data(), st.sampled_from([np.float32, np.float64]))
def test_gains_stay_away_from_one_and_zero(data, dtype):
    w = data.draw(ns.gains(data.draw(st.integers(1, 30)), dtype=dtype))
    assert w.dtype == dtype
    assert np.all(np.abs(w - 1) >= 0.1 - 1e-7)
    assert np.all((np.abs(w) >= 0.5) & (np.abs(w) <= 2))


@given(st.data(), st.sampled_from([np.float32, np.float64]))
def test_biases_stay_away_from_zero(data, dtype):
    b = data.draw(ns.biases((2, data.draw(st.integers(1, 10))), dtype=dtype))
    assert b.dtype == dtype
    assert np.all((np.abs(b) >= 0.1 - 1e-7) & (np.abs(b) <= 2))


def test_minimal_gains_and_biases_are_still_away_from_the_identity():
    assert np.all(np.abs(find(ns.gains(8), lambda a: True) - 1) >= 0.1)
    assert np.all(np.abs(find(ns.biases(8), lambda a: True)) >= 0.1)


@given(st.data(), st.floats(0.1, 10))
def test_upstream_grads_are_never_degenerate(data, scale):
    shape = data.draw(ns.dims(min_dims=0, max_dims=3, max_side=4))
    d = data.draw(ns.upstream_grads(shape, scale=scale))
    assert d.shape == shape and np.all(np.abs(d) <= scale)
    assert np.max(np.abs(d)) >= scale / 4
    if d.size > 1:
        assert np.unique(d).size > 1                   # not constant, so not all ones either
    assert not np.all(d == 1.0)


@pytest.mark.parametrize("shape", [(), (1,), (2, 3)])
def test_minimal_upstream_grads_are_informative(shape):
    d = find(ns.upstream_grads(shape), lambda a: True)
    assert np.max(np.abs(d)) >= 0.25
    assert d.size == 1 or np.unique(d).size > 1
    with pytest.raises(ValueError, match=r"scale must be a finite positive number, got 0"):
        ns.upstream_grads(shape, scale=0)
    with pytest.raises(ValueError, match=r"scale must be a finite positive number, got inf"):
        ns.upstream_grads(shape, scale=np.inf)


# -- integers ---------------------------------------------------------------------------------


@given(st.data(), st.integers(1, 20))
def test_token_ids_are_in_range_and_repeat(data, vocab_size):
    shape = data.draw(ns.dims(min_dims=1, max_dims=2, max_side=6))
    ids = data.draw(ns.token_ids(shape, vocab_size))
    assert ids.shape == shape and ids.dtype == np.int64
    assert np.all((ids >= 0) & (ids < vocab_size))
    if ids.size > 1:
        assert np.unique(ids).size < ids.size


def test_token_ids_repeat_even_when_every_id_is_distinct_otherwise():
    ids = find(ns.token_ids((2, 3), 1000), lambda a: True)
    assert np.unique(ids).size < 6
    with pytest.raises(ValueError, match=r"vocab_size must be a positive integer, got 0"):
        ns.token_ids((2,), 0)


@given(st.data(), st.integers(1, 8), st.sampled_from([-1, -100, 0, 3]))
def test_targets_ignore_some_but_never_all(data, vocab_size, ignore_index):
    if 0 <= ignore_index < vocab_size and vocab_size == 1:
        vocab_size = 2
    shape = data.draw(ns.dims(min_dims=0, max_dims=2, max_side=5))
    y = data.draw(ns.targets(shape, vocab_size, ignore_index=ignore_index))
    assert y.shape == shape and y.dtype == np.int64
    ignored = y == ignore_index
    assert not ignored.all()
    if y.size > 1:
        assert ignored.any()
    assert np.all((y[~ignored] >= 0) & (y[~ignored] < vocab_size))


def test_targets_bad_arguments():
    with pytest.raises(ValueError, match=r"vocab_size=1 leaves no class besides ignore_index=0"):
        ns.targets((3,), 1, ignore_index=0)
    with pytest.raises(ValueError, match=r"shape \(0, 2\) has no elements"):
        ns.targets((0, 2), 5)
    with pytest.raises(ValueError, match=r"vocab_size must be a positive integer, got True"):
        ns.targets((2,), True)
