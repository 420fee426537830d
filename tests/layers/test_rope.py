"""Tests for numgpt.layers.rope: rotary position embedding in the "rotate half" layout.

The forward is compared with the formula as Hugging Face transformers writes it
for Llama (``q * cos + rotate_half(q) * sin`` with the angles repeated over the
two halves); the backward must be the rotation by the negative angles. Gradient
checks run in float64 and must reach a relative error below 1e-7.
"""

import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import rope_backward, rope_forward
from numgpt.layers.rope import ROPE_BASE, rope_angles

RTOL = 1e-7


def assert_gradcheck_passes(results):
    assert [r.name for r in results] == ["x"]
    r = results[0]
    assert r.passed and r.max_rel_error < RTOL, f"max rel error {r.max_rel_error:.3e}"


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def reference_rope(x, positions, base=10000.0):
    """Hugging Face's apply_rotary_pos_emb for Llama, written out in float64."""
    D = x.shape[-1]
    inv_freq = 1.0 / base ** (np.arange(0, D, 2) / D)                 # (D/2,)
    freqs = np.outer(positions, inv_freq)                              # (T, D/2)
    emb = np.concatenate([freqs, freqs], axis=-1)                      # (T, D)
    return x * np.cos(emb) + rotate_half(x) * np.sin(emb)


@st.composite
def rope_cases(draw):
    B, T, H, half = draw(st.tuples(st.integers(1, 2), st.integers(1, 4), st.integers(1, 2), st.integers(1, 3)))
    shape = (B, H, T, 2 * half)
    pos = draw(st.integers(0, 5000))
    return draw(ns.float_arrays(shape)), pos, draw(ns.upstream_grads(shape))


# -- forward -------------------------------------------------------------------------


@pytest.mark.parametrize("pos", [0, 7, 4093])
def test_forward_matches_the_rotate_half_formula(pos):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 8))
    out, _ = rope_forward(x, pos)
    np.testing.assert_allclose(out, reference_rope(x, np.arange(pos, pos + 5)), rtol=1e-12, atol=1e-12)


def test_forward_by_hand():
    # D = 4: omega = (1, 10000^(-1/2) = 0.01). Position 2 turns pair (x0, x2) by 2 rad, (x1, x3) by 0.02 rad.
    x = np.zeros((1, 1, 3, 4))
    x[0, 0, 2] = [1.0, 0.0, 0.0, 1.0]
    out, _ = rope_forward(x)
    np.testing.assert_allclose(out[0, 0, 2], [np.cos(2.0), -np.sin(0.02), np.sin(2.0), np.cos(0.02)],
                               rtol=1e-15, atol=1e-16)
    np.testing.assert_array_equal(out[0, 0, :2], 0.0)
    assert ROPE_BASE == 10000.0


def test_position_zero_is_the_identity():
    x = np.random.default_rng(1).standard_normal((2, 2, 1, 6))
    out, _ = rope_forward(x, 0)
    np.testing.assert_array_equal(out, x)


@given(rope_cases())
def test_each_pair_keeps_its_length(case):
    x, pos, _ = case
    out, _ = rope_forward(x, pos)
    half = x.shape[-1] // 2
    pair_sq = lambda a: a[..., :half] ** 2 + a[..., half:] ** 2         # noqa: E731
    np.testing.assert_allclose(pair_sq(out), pair_sq(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("offset", [1, 17, 1000, 100_000])
def test_scores_depend_only_on_relative_position(offset):
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 2, 3, 6, 16))
    positions = rng.integers(0, 500, size=6)
    scores = lambda p: rope_forward(q, p)[0] @ rope_forward(k, p)[0].transpose(0, 1, 3, 2)   # noqa: E731
    before, after = scores(positions), scores(positions + offset)
    # float64 round-off of angles near offset * 1 rad is about offset * 1e-16.
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-13 * max(1, offset) * np.abs(before).max())
    # Not a vacuous identity: the scores do change with the relative position.
    q_at, k_at = rope_forward(q, positions)[0], rope_forward(k, positions[::-1].copy())[0]
    assert np.abs(q_at @ k_at.transpose(0, 1, 3, 2) - before).max() > 1e-2


def test_scores_are_a_function_of_the_difference_of_positions():
    # <rope(q, t), rope(k, s)> = <q, rope(k, s - t)>: a rotation's transpose is the rotation back.
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 1, 1, 1, 8))
    for t, s in [(0, 0), (5, 2), (2, 5), (300, 1)]:
        lhs = (rope_forward(q, t)[0] * rope_forward(k, s)[0]).sum()
        if s >= t:
            rhs = (q * rope_forward(k, s - t)[0]).sum()
        else:
            rhs = (rope_forward(q, t - s)[0] * k).sum()
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


def test_offset_step_equals_slicing_the_full_sequence():
    # A KV-cache step at position t rotates its one new query exactly as the full sequence does.
    x = np.random.default_rng(4).standard_normal((2, 3, 9, 8))
    full, _ = rope_forward(x)
    for t in range(9):
        step, _ = rope_forward(x[:, :, t:t + 1], t)
        np.testing.assert_array_equal(step, full[:, :, t:t + 1])
    tail, _ = rope_forward(x[:, :, 4:], 4)
    np.testing.assert_array_equal(tail, full[:, :, 4:])


def test_position_array_equals_the_offset_form():
    x = np.random.default_rng(5).standard_normal((1, 2, 4, 6))
    np.testing.assert_array_equal(rope_forward(x, np.arange(3, 7))[0], rope_forward(x, 3)[0])
    out, _ = rope_forward(x, np.array([9, 0, 2, 2]))
    np.testing.assert_array_equal(out[:, :, 1], x[:, :, 1])          # position 0: unchanged
    for t, p in enumerate([9, 0, 2, 2]):                              # each step at its own position
        np.testing.assert_array_equal(out[:, :, t], rope_forward(x[:, :, t:t + 1], p)[0][:, :, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_angles_are_rounded_once_from_float64(dtype):
    cos, sin = rope_angles(np.array([4000]), 8, dtype=dtype)
    assert cos.dtype == dtype and cos.shape == (1, 4)
    np.testing.assert_array_equal(cos, np.cos(4000.0 / 10000.0 ** (np.arange(4) / 4)).astype(dtype)[None])
    np.testing.assert_array_equal(sin, np.sin(4000.0 / 10000.0 ** (np.arange(4) / 4)).astype(dtype)[None])


# -- gradients against finite differences ----------------------------------------------


def test_gradcheck_fixed_seed():
    x = np.random.default_rng(6).standard_normal((2, 2, 5, 6))
    assert_gradcheck_passes(check_layer(lambda x: rope_forward(x, 3), rope_backward, (x,), names=("x",), seed=2))


@given(rope_cases())
def test_gradcheck_hypothesis(case):
    x, pos, dout = case
    assert_gradcheck_passes(check_layer(lambda x: rope_forward(x, pos), rope_backward, (x,), names=("x",),
                                        dout=dout))


def test_gradcheck_adjoint_on_a_larger_input():
    x = np.random.default_rng(7).standard_normal((4, 4, 64, 32))
    assert_gradcheck_passes(check_layer(lambda x: rope_forward(x, 100), rope_backward, (x,), names=("x",),
                                        method="adjoint"))


def test_gradcheck_catches_a_backward_that_rotates_forward():
    def backward_same_angle(dout, cache):             # the forward's rotation instead of its transpose
        cos, sin, _ = cache
        return rope_backward(dout, (cos, -sin, dout.shape))

    x = np.random.default_rng(8).standard_normal((1, 2, 4, 6))
    results = check_layer(lambda x: rope_forward(x, 1), backward_same_angle, (x,), names=("x",))
    assert not results[0].passed and results[0].max_rel_error > 1e-2
    # At position 0 the two coincide: the control needs positions > 0 to mean anything.
    assert check_layer(lambda x: rope_forward(x, 0), backward_same_angle, (x[:, :, :1],), names=("x",))[0].passed


def test_layer_cases_entry_passes_over_several_seeds():
    """The entry proposed for numgpt.gradcheck.layer_cases, built exactly as there."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        B, T, H = 2, 5, 2
        x = rng.standard_normal((B, H, T, 4))
        assert_gradcheck_passes(check_layer(lambda x: rope_forward(x, 3), rope_backward, (x,), names=("x",),
                                            seed=seed))


# -- properties -------------------------------------------------------------------------


@given(rope_cases())
def test_backward_inverts_the_forward(case):
    x, pos, _ = case
    out, cache = rope_forward(x, pos)
    np.testing.assert_allclose(rope_backward(out, cache), x, rtol=1e-13, atol=1e-13)


@given(rope_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    x, pos, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = rope_forward(x, pos)
    np.testing.assert_allclose(rope_backward(a * d1 + c * d2, cache),
                               a * rope_backward(d1, cache) + c * rope_backward(d2, cache), rtol=1e-10, atol=1e-12)


@given(rope_cases(), st.data())
def test_batch_and_head_permutation_equivariance(case, data):
    x, pos, dout = case
    perm = np.array(data.draw(st.permutations(range(x.shape[1]))))
    out, cache = rope_forward(x, pos)
    out_p, cache_p = rope_forward(x[:, perm], pos)
    np.testing.assert_array_equal(out_p, out[:, perm])
    np.testing.assert_array_equal(rope_backward(dout[:, perm], cache_p), rope_backward(dout, cache)[:, perm])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    x = np.random.default_rng(9).standard_normal((2, 2, 3, 4)).astype(dtype)
    out, cache = rope_forward(x, 5)
    assert out.dtype == dtype
    assert rope_backward(np.ones_like(out), cache).dtype == dtype


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    x = np.zeros((1, 2, 3, 4))
    with pytest.raises(TypeError, match=r"x must be a numpy.ndarray, got list"):
        rope_forward(x.tolist())
    with pytest.raises(TypeError, match=r"x must have a floating dtype.*int64"):
        rope_forward(np.zeros((1, 2, 3, 4), dtype=np.int64))
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got shape \(2, 3, 4\)"):
        rope_forward(x[0])
    with pytest.raises(ValueError, match=r"x must have an even head_dim.*\(1, 2, 3, 5\)"):
        rope_forward(np.zeros((1, 2, 3, 5)))
    with pytest.raises(ValueError, match=r"pos must be a non-negative integer.*got -1"):
        rope_forward(x, -1)
    with pytest.raises(ValueError, match=r"pos must be a non-negative integer.*got 1.5"):
        rope_forward(x, 1.5)
    with pytest.raises(TypeError, match=r"pos must have an integer dtype, got float64"):
        rope_forward(x, np.zeros(3))
    with pytest.raises(ValueError, match=r"pos must hold one position per step, shape \(3,\), got \(4,\)"):
        rope_forward(x, np.arange(4))
    for bad in (1.0, "10000", None):
        with pytest.raises(ValueError, match=r"base must be a finite number above 1, got " + re.escape(repr(bad))):
            rope_forward(x, 0, base=bad)
    _, cache = rope_forward(x)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(1, 2, 3, 4\), got \(2, 1, 3, 4\)"):
        rope_backward(np.zeros((2, 1, 3, 4)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32 but the forward ran in float64"):
        rope_backward(np.zeros((1, 2, 3, 4), dtype=np.float32), cache)
