"""Tests for numgpt.layers.attention: causal multi-head attention on the fused qkv.

Besides the gradient checks, the properties that make it *causal* attention:
position t's output depends on positions <= t only (bit for bit), no gradient
reaches a later position from an earlier output, heads do not mix, and the
batch axis is just a batch axis.
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.gradcheck import check_layer
from numgpt.layers import attention_backward, attention_forward, attention_step_forward
from numgpt.layers.softmax import softmax_backward_from_probs

RTOL = 1e-7


def assert_gradcheck_passes(results):
    assert [r.name for r in results] == ["qkv"]
    r = results[0]
    assert r.passed and r.max_rel_error < RTOL, f"max rel error {r.max_rel_error:.3e}"


def checked(n_head, backward=attention_backward, **kwargs):
    """check_layer on attention with ``n_head`` heads, binding the non-array argument."""
    def run(qkv):
        return check_layer(lambda q: attention_forward(q, n_head), backward, (qkv,), names=("qkv",), **kwargs)
    return run


@st.composite
def attention_cases(draw, min_T=1):
    B, T, H, D = draw(ns.attention_shapes(max_batch=2, max_T=4, max_heads=2, max_head_dim=3))
    T = max(T, min_T)
    qkv = draw(ns.float_arrays((B, T, 3 * H * D), min_value=-2, max_value=2))
    return H, qkv, draw(ns.upstream_grads((B, T, H * D), scale=0.5))


def reference_attention(qkv, n_head):
    """Loops over batch, head, query and key: the definition, nothing clever."""
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    out = np.zeros((B, T, C))
    for b in range(B):
        for h in range(n_head):
            cols = slice(h * D, (h + 1) * D)
            q, k, v = qkv[b, :, :C][:, cols], qkv[b, :, C:2 * C][:, cols], qkv[b, :, 2 * C:][:, cols]
            for t in range(T):
                scores = np.array([q[t] @ k[s] / math.sqrt(D) for s in range(t + 1)])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[b, t, cols] = weights @ v[:t + 1]
    return out


# -- forward -------------------------------------------------------------------------


@pytest.mark.parametrize("n_head", [1, 2, 4])
def test_forward_matches_the_definition(n_head):
    qkv = np.random.default_rng(n_head).standard_normal((2, 6, 3 * 8))
    out, _ = attention_forward(qkv, n_head)
    np.testing.assert_allclose(out, reference_attention(qkv, n_head), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype, a", [(np.float64, 40.0), (np.float32, 15.0)])
def test_forward_survives_scores_far_above_the_diagonal(dtype, a):
    # The softmax shifts each row by its diagonal score; here key 0 scores a^2/sqrt(2)
    # (1131 in float64, 159 in float32) above the diagonal, so exp overflows and the
    # row-maximum fallback must take over: exact result, no warning, nothing infinite.
    qkv = np.zeros((1, 3, 6), dtype=dtype)
    qkv[0, :, 0] = a                          # every query (a, 0)
    qkv[0, 0, 2] = a                          # key 0 (a, 0); keys 1, 2 are (0, 0)
    qkv[0, :, 4:] = np.arange(6, dtype=dtype).reshape(3, 2)   # values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, cache = attention_forward(qkv, 1)
    assert np.isfinite(out).all() and np.isfinite(cache[3]).all()
    np.testing.assert_array_equal(out[0], np.repeat(qkv[0, :1, 4:], 3, axis=0))   # all attend to key 0
    np.testing.assert_allclose(out, reference_attention(qkv.astype(np.float64), 1), rtol=1e-6, atol=1e-12)


def test_both_softmax_paths_agree_on_a_mixed_batch():
    # One batch element overflows the diagonal shift, the other does not: the fallback
    # recomputes the whole batch, and both elements must match the definition.
    rng = np.random.default_rng(11)
    qkv = rng.standard_normal((2, 5, 3 * 4))
    qkv[1, :, :2] *= 60.0
    qkv[1, 0, 4:6] = qkv[1, 1, :2]
    # guard: in element 1, head 0, some visible score exceeds its row's diagonal by more than
    # float64's exp can take (709), so the fast path alone would overflow
    q, k = qkv[1, :, 0:2], qkv[1, :, 4:6]               # head 0 (D = 2)
    scores = q @ k.T / math.sqrt(2)
    visible = np.tril(np.ones((5, 5), dtype=bool))
    assert (scores - np.diag(scores)[:, None])[visible].max() > 710
    out, _ = attention_forward(qkv, 2)
    np.testing.assert_allclose(out, reference_attention(qkv, 2), rtol=1e-10, atol=1e-12)



@pytest.mark.parametrize("score", [-60.0, -120.0])
def test_forward_with_every_score_far_below_zero_averages_the_values(score):
    # Every visible score equals `score`, so position t outputs the mean of v[0..t]. The fast
    # path shifts each row by its diagonal score to 0; shifted the wrong way (to 2 * score) or
    # not at all, every exponential of a row underflows in float32 (exp(-120) == 0) and the
    # row's 0 / 0 is NaN, with no overflow to call the row-maximum fallback.
    D = 4
    qkv = np.zeros((1, 6, 3 * D), dtype=np.float32)
    qkv[0, :, :D] = 1.0                                  # every query (1, 1, 1, 1)
    qkv[0, :, D:2 * D] = score * math.sqrt(D) / D        # every key: q.k / sqrt(D) == score
    qkv[0, :, 2 * D:] = np.random.default_rng(12).standard_normal((6, D))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, cache = attention_forward(qkv, 1)
    v = qkv[0, :, 2 * D:].astype(np.float64)
    running_mean = np.cumsum(v, axis=0) / np.arange(1, 7)[:, None]
    np.testing.assert_allclose(out[0], running_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cache[3][0, 0], np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None], rtol=1e-6)


def test_zero_queries_average_the_visible_values():
    # With q = 0 every visible score is 0, so position t outputs the mean of v[0..t].
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((1, 5, 3 * 4))
    qkv[:, :, :4] = 0.0
    out, _ = attention_forward(qkv, 2)
    v = qkv[0, :, 8:]
    expected = np.cumsum(v, axis=0) / np.arange(1, 6)[:, None]
    np.testing.assert_allclose(out[0], expected, rtol=1e-13)


def test_first_position_outputs_its_own_value_exactly():
    qkv = np.random.default_rng(1).standard_normal((3, 4, 3 * 6))
    out, _ = attention_forward(qkv, 3)
    np.testing.assert_array_equal(out[:, 0], qkv[:, 0, 12:])


# -- gradients ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_head", [1, 2])
def test_gradcheck_fixed_seed(n_head):
    qkv = np.random.default_rng(2).standard_normal((2, 4, 3 * 4))
    assert_gradcheck_passes(checked(n_head, seed=6)(qkv))


@given(attention_cases())
def test_gradcheck_hypothesis(case):
    n_head, qkv, dout = case
    assert_gradcheck_passes(checked(n_head, dout=dout)(qkv))


def test_gradcheck_adjoint_on_a_larger_input():
    qkv = np.random.default_rng(3).standard_normal((2, 16, 3 * 32))
    assert_gradcheck_passes(checked(4, method="adjoint")(qkv))


@pytest.mark.parametrize("B, T, n_head", [(6, 64, 4), (2, 256, 3)])
def test_gradcheck_adjoint_across_head_blocks(B, T, n_head):
    # Several blocks of heads (head_blocks): whole batch elements per block, then one head per
    # block; the blocked backward against finite differences in float64.
    from numgpt.layers.attention import head_blocks
    assert len(head_blocks(B, n_head, T)) > 1
    qkv = np.random.default_rng(T).standard_normal((B, T, 3 * n_head * 4))
    assert_gradcheck_passes(checked(n_head, method="adjoint")(qkv))


def _assemble(dq, dk, dv):
    B, H, T, D = dq.shape
    parts = [x.transpose(0, 2, 1, 3).reshape(B, T, H * D) for x in (dq, dk, dv)]
    return np.concatenate(parts, axis=-1)


def backward_recomputing_probs(dout, cache, mask=False):
    """A plausible bug (mask=False): recompute P from q and k in the backward and forget the causal mask."""
    q, kT, v, _, scale = cache                      # the cached q already carries the 1/sqrt(D) scale
    k = kT.transpose(0, 1, 3, 2)                    # keys are cached transposed, (B, H, D, T)
    B, H, T, D = q.shape
    scores = q @ k.transpose(0, 1, 3, 2)
    if mask:
        scores = np.where(np.triu(np.ones((T, T), dtype=bool), k=1), np.finfo(scores.dtype).min, scores)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    dy = dout.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dv = probs.transpose(0, 1, 3, 2) @ dy
    ds = softmax_backward_from_probs(dy @ v.transpose(0, 1, 3, 2), probs)
    return _assemble((ds @ k) * scale, ds.transpose(0, 1, 3, 2) @ q, dv)


def backward_recomputing_probs_without_mask(dout, cache):
    return backward_recomputing_probs(dout, cache, mask=False)


def backward_with_ds(dout, cache, transpose=True):
    """A plausible bug (transpose=True): dQ = dS^T K and dK = dS Q, with dS transposed."""
    q, kT, v, probs, scale = cache
    k = kT.transpose(0, 1, 3, 2)
    B, H, T, D = q.shape
    dy = dout.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dv = probs.transpose(0, 1, 3, 2) @ dy
    ds = softmax_backward_from_probs(dy @ v.transpose(0, 1, 3, 2), probs)
    if transpose:
        ds = ds.transpose(0, 1, 3, 2)
    return _assemble((ds @ k) * scale, ds.transpose(0, 1, 3, 2) @ q, dv)


def backward_with_transposed_ds(dout, cache):
    return backward_with_ds(dout, cache, transpose=True)


def test_the_hand_written_wrong_backwards_share_the_right_plumbing():
    # Guard for the two negative controls below: with the mask restored / dS
    # untransposed they equal the real backward, so each fails for its one bug only.
    qkv = np.random.default_rng(4).standard_normal((2, 5, 3 * 4))
    _, cache = attention_forward(qkv, 2)
    dout = np.random.default_rng(5).standard_normal((2, 5, 4))
    want = attention_backward(dout, cache)
    np.testing.assert_allclose(backward_recomputing_probs(dout, cache, mask=True), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backward_with_ds(dout, cache, transpose=False), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("wrong_backward", [backward_recomputing_probs_without_mask, backward_with_transposed_ds])
def test_gradcheck_catches_a_wrong_backward(wrong_backward):
    qkv = np.random.default_rng(6).standard_normal((2, 4, 3 * 4))
    results = checked(2, backward=wrong_backward)(qkv)
    assert not results[0].passed and results[0].max_rel_error > 1e-2


# -- causality ------------------------------------------------------------------------------


@given(attention_cases(min_T=2), st.data())
def test_outputs_up_to_t_ignore_inputs_after_t_bit_for_bit(case, data):
    n_head, qkv, _ = case
    T = qkv.shape[1]
    t = data.draw(st.integers(0, T - 2), label="t")
    future = data.draw(ns.float_arrays((qkv.shape[0], T - 1 - t, qkv.shape[2]), min_value=-5, max_value=5),
                       label="future")
    changed = qkv.copy()
    changed[:, t + 1:] = future
    out, _ = attention_forward(qkv, n_head)
    out_changed, _ = attention_forward(changed, n_head)
    np.testing.assert_array_equal(out_changed[:, :t + 1], out[:, :t + 1])


@given(attention_cases(min_T=2), st.data())
def test_no_gradient_flows_from_earlier_outputs_to_later_inputs(case, data):
    n_head, qkv, dout = case
    T = qkv.shape[1]
    t = data.draw(st.integers(0, T - 2), label="t")
    dout = dout.copy()
    dout[:, t + 1:] = 0.0            # only outputs at positions <= t matter
    _, cache = attention_forward(qkv, n_head)
    dqkv = attention_backward(dout, cache)
    assert np.all(dqkv[:, t + 1:] == 0.0)


# -- other properties ------------------------------------------------------------------------


@given(attention_cases(), st.data())
def test_batch_permutation_equivariance(case, data):
    n_head, qkv, dout = case
    perm = np.array(data.draw(st.permutations(range(qkv.shape[0]))))
    out, cache = attention_forward(qkv, n_head)
    out_p, cache_p = attention_forward(qkv[perm], n_head)
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(attention_backward(dout[perm], cache_p), attention_backward(dout, cache)[perm],
                               rtol=1e-12, atol=1e-14)


@given(attention_cases(), st.data())
def test_heads_do_not_mix(case, data):
    n_head, qkv, _ = case
    B, T, C3 = qkv.shape
    C = C3 // 3
    D = C // n_head
    h = data.draw(st.integers(0, n_head - 1), label="head")
    changed = qkv.copy()
    for part in range(3):           # head h's columns of q, k and v
        cols = slice(part * C + h * D, part * C + (h + 1) * D)
        changed[:, :, cols] = -changed[:, :, cols] + 0.5
    out, _ = attention_forward(qkv, n_head)
    out_changed, _ = attention_forward(changed, n_head)
    others = np.ones(C, dtype=bool)
    others[h * D:(h + 1) * D] = False
    np.testing.assert_array_equal(out_changed[:, :, others], out[:, :, others])


@given(attention_cases(), st.data(), st.floats(-3, 3), st.floats(-3, 3))
def test_backward_is_linear_in_dout(case, data, a, c):
    n_head, qkv, d1 = case
    d2 = data.draw(ns.upstream_grads(d1.shape))
    _, cache = attention_forward(qkv, n_head)
    np.testing.assert_allclose(attention_backward(a * d1 + c * d2, cache),
                               a * attention_backward(d1, cache) + c * attention_backward(d2, cache),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_preserved(dtype):
    qkv = np.random.default_rng(7).standard_normal((2, 5, 3 * 6)).astype(dtype)
    out, cache = attention_forward(qkv, 3)
    assert out.dtype == dtype
    assert attention_backward(np.ones_like(out), cache).dtype == dtype


def test_float32_agrees_with_float64():
    qkv = np.random.default_rng(8).standard_normal((2, 5, 3 * 6))
    out64, cache64 = attention_forward(qkv, 3)
    out32, cache32 = attention_forward(qkv.astype(np.float32), 3)
    np.testing.assert_allclose(out32, out64, rtol=1e-4, atol=1e-5)
    dout = np.random.default_rng(9).standard_normal(out64.shape)
    np.testing.assert_allclose(attention_backward(dout.astype(np.float32), cache32),
                               attention_backward(dout, cache64), rtol=1e-3, atol=1e-4)


# -- attention_step_forward: the key/value-cache path used for sampling ---------------------


def empty_caches(B, n_head, T_max, D, dtype=np.float64):
    return np.zeros((B, n_head, T_max, D), dtype=dtype), np.zeros((B, n_head, T_max, D), dtype=dtype)


@given(attention_cases(), st.data())
def test_step_forward_in_chunks_equals_the_full_forward(case, data):
    n_head, qkv, _ = case
    B, T, C3 = qkv.shape
    D = C3 // 3 // n_head
    T_max = T + data.draw(st.integers(0, 2), label="spare cache rows")
    k_cache, v_cache = empty_caches(B, n_head, T_max, D)
    full, _ = attention_forward(qkv, n_head)
    pos = 0
    while pos < T:                                  # feed the sequence in random-sized chunks
        t = data.draw(st.integers(1, T - pos), label="chunk")
        out = attention_step_forward(qkv[:, pos:pos + t], k_cache, v_cache, pos, n_head)
        np.testing.assert_allclose(out, full[:, pos:pos + t], rtol=1e-12, atol=1e-13)
        pos += t
    # The caches now hold every position's keys and values, head by head.
    C = C3 // 3
    np.testing.assert_array_equal(k_cache[:, :, :T], qkv[:, :, C:2 * C].reshape(B, T, n_head, D).transpose(0, 2, 1, 3))
    np.testing.assert_array_equal(v_cache[:, :, :T], qkv[:, :, 2 * C:].reshape(B, T, n_head, D).transpose(0, 2, 1, 3))
    assert np.all(k_cache[:, :, T:] == 0)


def test_step_forward_equals_the_full_forward_when_scores_are_in_the_hundreds():
    # Trained weights give scores far from initial scale. The step's softmax must shift each
    # row by its maximum: unshifted, or shifted the wrong way, float32's exp overflows past 88
    # (inf / inf is NaN) or underflows below -103 (0 / 0).
    B, T, H, D = 2, 7, 2, 4
    qkv = (np.random.default_rng(13).standard_normal((B, T, 3 * H * D)) * 12).astype(np.float32)
    q = qkv[:, :, :H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3).astype(np.float64)
    k = qkv[:, :, H * D:2 * H * D].reshape(B, T, H, D).transpose(0, 2, 1, 3).astype(np.float64)
    scores = (q @ k.transpose(0, 1, 3, 2) / math.sqrt(D))[..., np.tril(np.ones((T, T), dtype=bool))]
    assert scores.max() > 200 and scores.min() < -200          # guard: the scores are in the hundreds
    full, _ = attention_forward(qkv, H)
    k_cache, v_cache = empty_caches(B, H, T, D, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        steps = [attention_step_forward(qkv[:, t:t + 1], k_cache, v_cache, t, H) for t in range(T)]
    step = np.concatenate(steps, axis=1)
    assert step.dtype == np.float32 and np.isfinite(step).all()
    np.testing.assert_allclose(step, full, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(step, reference_attention(qkv.astype(np.float64), H), rtol=1e-3, atol=1e-3)


def test_step_forward_rejects_a_mismatched_cache_or_overflow():
    qkv = np.zeros((2, 3, 12))
    k_cache, v_cache = empty_caches(2, 2, 4, 2)
    with pytest.raises(ValueError, match=r"qkv shape \(2, 3, 12\) does not match the cache \(2, 2, 4, 2\) with n_head=4"):
        attention_step_forward(qkv, k_cache, v_cache, 0, 4)
    with pytest.raises(ValueError, match=r"qkv shape \(1, 3, 12\) does not match the cache \(2, 2, 4, 2\) with n_head=2"):
        attention_step_forward(qkv[:1], k_cache, v_cache, 0, 2)          # another batch size
    with pytest.raises(ValueError, match=r"positions 2..4 exceed the cache length 4"):
        attention_step_forward(qkv, k_cache, v_cache, 2, 2)
    with pytest.raises(TypeError, match=r"qkv must be a numpy.ndarray"):
        attention_step_forward(qkv.tolist(), k_cache, v_cache, 0, 2)
    with pytest.raises(ValueError, match=r"k_cache \(2, 2, 4, 2\) and v_cache \(2, 2, 5, 2\)"):
        attention_step_forward(qkv, k_cache, np.zeros((2, 2, 5, 2)), 0, 2)
    with pytest.raises(ValueError, match=r"pos must be a non-negative integer.*1.0"):
        attention_step_forward(qkv, k_cache, v_cache, 1.0, 2)


def test_step_forward_names_each_bad_argument():
    qkv = np.zeros((1, 2, 12))
    k_cache, v_cache = empty_caches(1, 2, 4, 2)
    with pytest.raises(ValueError, match=r"^qkv must have 3 dimensions, got shape \(2, 12\)$"):
        attention_step_forward(qkv[0], k_cache, v_cache, 0, 2)
    for name in ("k_cache", "v_cache"):
        caches = {"k_cache": k_cache, "v_cache": v_cache}
        with pytest.raises(TypeError, match=rf"^{name} must be a numpy.ndarray, got list$"):
            attention_step_forward(qkv, **{**caches, name: caches[name].tolist()}, pos=0, n_head=2)
        with pytest.raises(ValueError, match=rf"^{name} must have 4 dimensions, got shape \(2, 4, 2\)$"):
            attention_step_forward(qkv, **{**caches, name: caches[name][0]}, pos=0, n_head=2)
        with pytest.raises(TypeError, match=rf"^{name} has dtype float32 but qkv has dtype float64"):
            attention_step_forward(qkv, **{**caches, name: caches[name].astype(np.float32)}, pos=0, n_head=2)


def test_step_forward_rejects_a_negative_position_by_name():
    # A negative pos is not checked: it reaches numpy as a negative slice bound
    # and fails there ("negative dimensions are not allowed", or a broadcast
    # error), which names neither pos nor the cache. It must raise a
    # ValueError naming pos.
    qkv = np.random.default_rng(10).standard_normal((1, 1, 12))
    k_cache, v_cache = empty_caches(1, 2, 4, 2)
    with pytest.raises(ValueError, match=r"\bpos\b"):
        attention_step_forward(qkv, k_cache, v_cache, -2, 2)


def test_step_forward_rejects_a_cache_of_another_dtype_by_name():
    # float64 keys written into a float32 cache are rounded silently; the layers
    # never mix dtypes (check_same_dtype), so this must raise a TypeError that
    # names the cache.
    qkv = np.random.default_rng(11).standard_normal((1, 2, 12))
    k_cache, v_cache = empty_caches(1, 2, 4, 2, dtype=np.float32)
    with pytest.raises(TypeError, match=r"k_cache|v_cache"):
        attention_step_forward(qkv, k_cache, v_cache, 0, 2)


# -- bad input ---------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    qkv = np.zeros((2, 4, 12))
    with pytest.raises(TypeError, match=r"qkv must be a numpy.ndarray, got list"):
        attention_forward(qkv.tolist(), 2)
    with pytest.raises(TypeError, match=r"qkv must have a floating dtype"):
        attention_forward(qkv.astype(np.int64), 2)
    with pytest.raises(ValueError, match=r"qkv must have 3 dimensions, got shape \(4, 12\)"):
        attention_forward(qkv[0], 2)
    with pytest.raises(ValueError, match=r"qkv must have last dimension 3\*C.*got shape \(2, 4, 13\)"):
        attention_forward(np.zeros((2, 4, 13)), 1)
    with pytest.raises(ValueError, match=r"C=4 \(qkv shape \(2, 4, 12\)\) is not divisible by n_head=3"):
        attention_forward(qkv, 3)
    for bad_n_head in (0, -2, 2.0, True, "2"):
        with pytest.raises(ValueError, match=r"n_head must be a positive integer"):
            attention_forward(qkv, bad_n_head)


def test_an_empty_sequence_works_or_is_rejected_by_name():
    # T = 0 must either give empty results or a ValueError that names qkv; today
    # the row max over an empty axis raises numpy's "zero-size array to
    # reduction operation maximum which has no identity".
    qkv = np.zeros((2, 0, 12))
    try:
        out, cache = attention_forward(qkv, 2)
    except ValueError as exc:
        assert "qkv" in str(exc), str(exc)
    else:
        assert out.shape == (2, 0, 4)
        assert attention_backward(np.zeros((2, 0, 4)), cache).shape == (2, 0, 12)


def test_backward_rejects_a_wrong_dout():
    _, cache = attention_forward(np.zeros((2, 4, 12)), 2)
    with pytest.raises(ValueError, match=r"dout must have the forward output's shape \(2, 4, 4\), got \(2, 4, 12\)"):
        attention_backward(np.zeros((2, 4, 12)), cache)
    with pytest.raises(TypeError, match=r"dout has dtype float32"):
        attention_backward(np.zeros((2, 4, 4), dtype=np.float32), cache)


@pytest.mark.parametrize("B, T, n_head", [(6, 64, 4), (2, 256, 3), (3, 300, 2)])
def test_blocked_heads_match_the_whole_array_formulas(B, T, n_head):
    # The layer runs product, softmax and P V (and the backward) on blocks of heads of about
    # BLOCK scores (head_blocks): here 4 batch elements per block, then 2; one head per block;
    # and blocks larger than BLOCK. Forward against the per-position definition, backward
    # against the whole-array formulas (backward_with_ds without the transpose bug).
    from numgpt.layers.attention import head_blocks
    blocks = head_blocks(B, n_head, T)
    assert len(blocks) > 1
    rng = np.random.default_rng(T)
    qkv = rng.standard_normal((B, T, 3 * n_head * 2))
    dout = rng.standard_normal((B, T, n_head * 2))
    out, cache = attention_forward(qkv, n_head)
    np.testing.assert_allclose(out, reference_attention(qkv, n_head), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(attention_backward(dout, cache), backward_with_ds(dout, cache, transpose=False),
                               rtol=1e-11, atol=1e-13)
