"""Tests for numgpt.optim: AdamW against a per-tensor reference written from
PyTorch's formulas, gradient clipping, the learning-rate schedule, and one
optimizer step after gradient accumulation against one step on the big batch."""

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from numgpt import optim
from numgpt.model import GPT, GPTConfig
from numgpt.optim import (
    AdamW,
    clip_grad_norm,
    clip_scale,
    cosine_lr,
    decay_mask_from_layout,
    grad_norm,
    ranges_outside,
)

LAYOUT = [("wte", (5, 3)), ("bias", (4,)), ("w", (2, 3, 2)), ("gain", (3,))]
SIZE = sum(math.prod(s) for _, s in LAYOUT)


def reference_adamw(tensors, grads_per_step, lrs, betas, eps, weight_decay):
    """torch.optim.AdamW, written out tensor by tensor; decay only on tensors of 2+ dims."""
    b1, b2 = betas
    params = {k: v.copy() for k, v in tensors.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for step, (grads, lr) in enumerate(zip(grads_per_step, lrs, strict=True), start=1):
        for name, p in params.items():
            g = grads[name]
            if p.ndim >= 2:
                p *= 1 - lr * weight_decay
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g * g
            bias_correction1 = 1 - b1 ** step
            bias_correction2 = 1 - b2 ** step
            denom = np.sqrt(v[name]) / math.sqrt(bias_correction2) + eps
            p -= (lr / bias_correction1) * m[name] / denom
    return params


def split(flat):
    out, offset = {}, 0
    for name, shape in LAYOUT:
        size = math.prod(shape)
        out[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return out


def test_decay_mask_from_layout():
    mask = decay_mask_from_layout(LAYOUT)
    assert mask.dtype == bool and mask.shape == (SIZE,)
    parts = split(mask)
    assert parts["wte"].all() and parts["w"].all()
    assert not parts["bias"].any() and not parts["gain"].any()
    assert decay_mask_from_layout([]).shape == (0,) and decay_mask_from_layout([]).dtype == bool


@pytest.mark.parametrize("betas, weight_decay", [((0.9, 0.95), 0.1), ((0.8, 0.999), 0.5), ((0.0, 0.5), 0.0)])
def test_adamw_matches_reference(betas, weight_decay):
    rng = np.random.default_rng(0)
    params = rng.standard_normal(SIZE)
    grads = np.zeros(SIZE)
    eps = 1e-8
    opt = AdamW(params, grads, decay_mask_from_layout(LAYOUT), lr=1e-2, betas=betas, eps=eps,
                weight_decay=weight_decay)
    start = {k: v.copy() for k, v in split(params).items()}
    steps, lrs = [], [1e-2, 3e-2, 5e-3, 1e-2, 2e-2, 1e-3]
    for lr in lrs:
        g = rng.standard_normal(SIZE) * rng.choice([1e-3, 1.0, 10.0])
        grads[...] = g
        steps.append({k: v.copy() for k, v in split(g).items()})
        opt.step(lr)
    expected = reference_adamw(start, steps, lrs, betas, eps, weight_decay)
    for name, p in split(params).items():
        np.testing.assert_allclose(p, expected[name], rtol=1e-12, atol=1e-14, err_msg=name)
    assert opt.t == len(lrs)


def test_default_lr_is_used_when_step_gets_none():
    a_params, b_params = np.ones(4), np.ones(4)
    g = np.full(4, 0.5)
    a = AdamW(a_params, g.copy(), lr=0.1, weight_decay=0.0)
    b = AdamW(b_params, g.copy(), lr=0.7, weight_decay=0.0)
    a.step()
    b.step(0.1)
    np.testing.assert_array_equal(a_params, b_params)


def test_first_step_is_about_lr_per_element():
    # Bias correction: after one step m_hat = g and v_hat = g^2, so the update is
    # lr * g / (|g| + eps): lr in magnitude, against the sign of g, whatever |g| is.
    rng = np.random.default_rng(1)
    params = rng.standard_normal(SIZE)
    start = params.copy()
    grads = rng.standard_normal(SIZE) * np.logspace(-3, 2, SIZE)
    lr = 0.01
    mask = decay_mask_from_layout(LAYOUT)
    AdamW(params, grads, mask, lr=lr, betas=(0.9, 0.95), weight_decay=0.1).step()
    delta = params - start
    keep = ~mask
    adam = -lr * grads / (np.abs(grads) + 1e-8)
    np.testing.assert_allclose(delta[keep], adam[keep], rtol=1e-10)
    np.testing.assert_allclose(np.abs(delta[keep]), lr, rtol=1e-3)
    # decayed entries also shrink by lr * wd * p
    np.testing.assert_allclose(delta[mask], -lr * 0.1 * start[mask] + adam[mask], rtol=1e-10)


def test_weight_decay_only_on_masked_entries():
    params = np.ones(SIZE)
    grads = np.zeros(SIZE)          # no gradient: only weight decay moves anything
    mask = decay_mask_from_layout(LAYOUT)
    opt = AdamW(params, grads, mask, lr=0.1, weight_decay=0.5)
    opt.step()
    np.testing.assert_allclose(params[mask], 1 - 0.1 * 0.5)
    np.testing.assert_array_equal(params[~mask], 1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"betas": (1.0, 0.9)}, r"^beta1 must be in \[0, 1\), got 1.0$"),
    ({"betas": (-0.1, 0.9)}, "beta1"),
    ({"betas": (0.9, 1.0)}, r"^beta2 must be in \[0, 1\), got 1.0$"),
    ({"betas": (0.9, 1.5)}, "beta2"),
    ({"eps": 0.0}, "eps"),
    ({"eps": -1e-8}, "eps"),
    ({"eps": float("nan")}, "eps"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"lr": -1e-3}, "lr"),
])
def test_adamw_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW(np.zeros(4), np.zeros(4), **kwargs)


def test_adamw_defaults_and_a_zero_learning_rate():
    # nanoGPT's betas and weight decay, PyTorch's lr and eps; lr = 0 is allowed: the parameters
    # stay where they are and only the moments move.
    params = np.ones(4)
    opt = AdamW(params, np.full(4, 0.5), lr=0.0, n_threads=3)
    assert (opt.lr, opt.beta1, opt.beta2, opt.eps, opt.weight_decay) == (0.0, 0.9, 0.95, 1e-8, 0.1)
    assert opt.n_threads == 3
    assert AdamW(np.ones(4), np.ones(4)).lr == 1e-3
    opt.step()
    np.testing.assert_array_equal(params, 1.0)
    assert opt.t == 1 and opt.m.any()


def test_adamw_buffer_validation():
    with pytest.raises(ValueError, match="1-D"):
        AdamW(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="dtype"):
        AdamW(np.zeros(4), np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="decay_mask"):
        AdamW(np.zeros(4), np.zeros(4), decay_mask=np.ones(3, dtype=bool))


def test_adamw_float32_stays_float32():
    params = np.ones(8, dtype=np.float32)
    grads = np.full(8, 0.3, dtype=np.float32)
    opt = AdamW(params, grads, lr=0.1)
    opt.step()
    assert params.dtype == opt.m.dtype == opt.v.dtype == np.float32
    assert (params < 1).all()


def test_adamw_state_dict_round_trip():
    rng = np.random.default_rng(2)
    p1 = rng.standard_normal(SIZE)
    g1 = np.zeros(SIZE)
    mask = decay_mask_from_layout(LAYOUT)
    opt1 = AdamW(p1, g1, mask, lr=1e-2)
    for _ in range(3):
        g1[...] = rng.standard_normal(SIZE)
        opt1.step()
    state = opt1.state_dict()
    assert state["t"] == 3
    state_copy = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}
    p2, g2 = p1.copy(), np.zeros(SIZE)
    opt2 = AdamW(p2, g2, mask, lr=1e-2)
    opt2.load_state_dict(state)
    g_next = rng.standard_normal(SIZE)
    g1[...] = g_next
    g2[...] = g_next
    opt1.step()
    opt2.step()
    np.testing.assert_array_equal(p1, p2)
    # state_dict is a snapshot, not a view of the live moments
    np.testing.assert_array_equal(state["m"], state_copy["m"])
    with pytest.raises(ValueError, match="shape"):
        opt2.load_state_dict({"m": np.zeros(3), "v": np.zeros(3), "t": 1})


# --- clipping ------------------------------------------------------------------------------------

def test_clip_grad_norm_scales_to_max_norm():
    grads = np.array([3.0, 4.0, 0.0, 12.0])                 # norm 13
    norm = clip_grad_norm(grads, 1.0)
    assert norm == pytest.approx(13.0, rel=1e-15)          # the norm before clipping
    assert grad_norm(grads) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(grads, np.array([3, 4, 0, 12]) / 13, rtol=1e-6)


def test_clip_grad_norm_no_op_below_and_disabled_with_zero():
    grads = np.array([0.3, 0.4])
    assert clip_grad_norm(grads, 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(grads, [0.3, 0.4])
    big = np.array([30.0, 40.0])
    assert clip_grad_norm(big, 0.0) == pytest.approx(50.0)
    np.testing.assert_array_equal(big, [30.0, 40.0])


def test_clip_grad_norm_leaves_a_norm_of_exactly_max_norm_alone():
    grads = np.array([3.0, 4.0])                            # norm 5, exactly
    assert clip_grad_norm(grads, 5.0) == 5.0
    np.testing.assert_array_equal(grads, [3.0, 4.0])


def test_clip_grad_norm_float32_large_buffer():
    # 3 million float32 entries: the norm must not drift by more than float32 summation allows
    grads = np.full(3_000_000, 1e-3, dtype=np.float32)
    norm = clip_grad_norm(grads, 0.5)
    assert isinstance(norm, float)
    assert norm == pytest.approx(math.sqrt(3.0), rel=1e-4)
    assert grads.dtype == np.float32
    assert grad_norm(grads) == pytest.approx(0.5, rel=1e-4)


@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20),
       st.floats(1e-3, 1e3))
@example(values=[0.0625], max_norm=0.03125)    # a small norm: the 1e-6 leaves the result 1.6e-5 short of max_norm
def test_clip_grad_norm_property(values, max_norm):
    grads = np.array(values)
    before = float(np.sqrt(np.sum(grads ** 2)))
    original = grads.copy()
    norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(before, rel=1e-12, abs=1e-300)
    if before <= max_norm:
        np.testing.assert_array_equal(grads, original)
    else:
        # The scale is max_norm / (norm + 1e-6), as in PyTorch: just under max_norm, never over.
        np.testing.assert_allclose(grads, original * (max_norm / (norm + 1e-6)), rtol=1e-12, atol=0)
        assert grad_norm(grads) <= max_norm * (1 + 1e-12)
        # max_norm * norm / (norm + 1e-6): within 1e-5 of max_norm only for norms above 0.1.
        assert grad_norm(grads) == pytest.approx(max_norm * norm / (norm + 1e-6), rel=1e-12)


@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 1.0, 7.0])
def test_clipped_norm_never_exceeds_max_norm(max_norm):
    # The 1e-6 keeps the clipped norm under max_norm (norm / (norm + 1e-6) < 1); a scale of
    # max_norm / (norm - 1e-6) would leave it above by a relative 1e-6 / norm.
    rng = np.random.default_rng(3)
    for scale in (1.0, 10.0, 1e3):
        grads = rng.standard_normal(50) * scale
        original = grads.copy()
        norm = clip_grad_norm(grads, max_norm)
        assert norm > max_norm
        assert grad_norm(grads) <= max_norm * (1 + 1e-12), (scale, grad_norm(grads) / max_norm - 1)
        np.testing.assert_allclose(grads, original * (max_norm / (norm + 1e-6)), rtol=1e-12, atol=0)


# --- schedule ---------------------------------------------------------------------------------------------

def test_cosine_lr_warmup_peak_and_floor():
    lr, min_lr, warmup, decay = 1e-3, 1e-4, 10, 100
    first = cosine_lr(0, lr, min_lr, warmup, decay)
    assert first > 0
    assert first == pytest.approx(lr / (warmup + 1))
    warm = [cosine_lr(i, lr, min_lr, warmup, decay) for i in range(warmup)]
    np.testing.assert_allclose(np.diff(warm), lr / (warmup + 1))      # linear
    assert cosine_lr(warmup, lr, min_lr, warmup, decay) == pytest.approx(lr)
    after = [cosine_lr(i, lr, min_lr, warmup, decay) for i in range(warmup, decay + 1)]
    assert all(np.diff(after) < 0)                                   # strictly decreasing
    assert cosine_lr(decay, lr, min_lr, warmup, decay) == pytest.approx(min_lr)
    assert all(cosine_lr(i, lr, min_lr, warmup, decay) == min_lr for i in range(decay, decay + 50))
    # halfway through the decay the cosine is at its midpoint
    mid = (warmup + decay) // 2
    assert cosine_lr(mid, lr, min_lr, warmup, decay) == pytest.approx((lr + min_lr) / 2)


def test_cosine_lr_without_warmup_starts_at_peak():
    assert cosine_lr(0, 1e-3, 1e-4, 0, 100) == pytest.approx(1e-3)


@pytest.mark.parametrize("warmup, decay", [(0, 0), (1, 1), (10, 10), (10, 9), (10, 1), (10, 0), (3, 2)])
def test_cosine_lr_without_a_cosine_phase_goes_from_warmup_to_min_lr(warmup, decay):
    # lr_decay_iters <= warmup_iters: the warmup, then min_lr from it == warmup_iters on (at
    # it == warmup_iters == lr_decay_iters, where nanoGPT's get_lr divides by zero, too).
    lr, min_lr = 1e-3, 1e-4
    for it in range(warmup):
        assert cosine_lr(it, lr, min_lr, warmup, decay) == lr * (it + 1) / (warmup + 1)
    for it in range(warmup, warmup + 5):
        assert cosine_lr(it, lr, min_lr, warmup, decay) == min_lr


def test_cosine_lr_one_step_of_decay():
    # lr_decay_iters == warmup_iters + 1: the peak at warmup_iters, min_lr right after.
    assert cosine_lr(5, 1e-3, 1e-4, 5, 6) == 1e-3
    assert cosine_lr(6, 1e-3, 1e-4, 5, 6) == 1e-4


@given(st.integers(0, 50), st.integers(-50, 200), st.integers(0, 400))
def test_cosine_lr_bounds(warmup, decay_extra, it):
    lr, min_lr = 6e-4, 6e-5
    decay = max(0, warmup + decay_extra)           # lr_decay_iters <= warmup_iters included
    value = cosine_lr(it, lr, min_lr, warmup, decay)
    assert 0 < value <= lr * (1 + 1e-12)
    if it >= warmup:
        assert value >= min_lr * (1 - 1e-12)
        assert value >= cosine_lr(it + 1, lr, min_lr, warmup, decay)


# --- gradient accumulation through the optimizer ------------------------------------------------------------

def test_accumulated_micro_batches_give_the_same_update_as_one_batch():
    config = GPTConfig(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
    a = GPT(config, seed=3, dtype=np.float64)
    b = GPT(config, seed=3, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(6, 8))
    y = rng.integers(0, 17, size=(6, 8))
    opts = [AdamW(m.flat_params, m.flat_grads, decay_mask_from_layout(m.layout), lr=1e-2, weight_decay=0.1)
            for m in (a, b)]
    for _ in range(3):
        # a: three micro-batches of 2, each scaled by 1/3; b: one batch of 6
        for micro in range(3):
            a.loss_and_grads(x[2 * micro:2 * micro + 2], y[2 * micro:2 * micro + 2],
                             accumulate=micro > 0, loss_scale=1 / 3)
        b.loss_and_grads(x, y)
        np.testing.assert_allclose(a.flat_grads, b.flat_grads, rtol=1e-10, atol=1e-15)
        norms = [clip_grad_norm(m.flat_grads, 1.0) for m in (a, b)]
        assert norms[0] == pytest.approx(norms[1], rel=1e-12)
        for opt in opts:
            opt.step()
        np.testing.assert_allclose(a.flat_params, b.flat_params, rtol=0, atol=1e-10)
    assert not np.array_equal(a.flat_params, GPT(config, seed=3, dtype=np.float64).flat_params)


def test_blocked_and_threaded_update_matches_the_plain_formula():
    # Large enough for several cache blocks and both threads, with a decay mask that is
    # all True in some blocks and mixed in others.
    layout = [("w1", (700, 400)), ("b1", (400,)), ("w2", (200, 300)), ("g", (5000,)), ("w3", (123, 7))]
    n = sum(math.prod(s) for _, s in layout)
    assert n > 2 * optim._BLOCK                     # three blocks or more, whatever the block size
    mask = decay_mask_from_layout(layout)
    rng = np.random.default_rng(4)
    start = rng.standard_normal(n)
    b1, b2, eps, wd = 0.9, 0.99, 1e-8, 0.1
    runs = []
    for n_threads in (1, 2, 3):
        params, grads = start.copy(), np.zeros(n)
        opt = AdamW(params, grads, mask, lr=1e-2, betas=(b1, b2), eps=eps, weight_decay=wd, n_threads=n_threads)
        g_rng = np.random.default_rng(5)
        for _ in range(3):
            grads[...] = g_rng.standard_normal(n)
            opt.step(2e-2)
        runs.append(params)
    # the plain formula, over the whole buffer at once
    p, m, v = start.copy(), np.zeros(n), np.zeros(n)
    g_rng = np.random.default_rng(5)
    for t in range(1, 4):
        g = g_rng.standard_normal(n)
        p = np.where(mask, p * (1 - 2e-2 * wd), p)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - 2e-2 * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    for params in runs:
        np.testing.assert_allclose(params, p, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("grad_scale", [1.0, 0.37])
def test_float32_update_is_the_folded_formula_in_float32_bit_for_bit(grad_scale):
    # The blocked update's scratch has the parameters' dtype: every intermediate is rounded to
    # float32 exactly as the formula below, with the same scalars folded, rounds it in float32
    # (a float64 scratch would not).
    n = 3000
    rng = np.random.default_rng(6)
    start = rng.standard_normal(n).astype(np.float32)
    params, grads = start.copy(), np.zeros(n, dtype=np.float32)
    lr, b1, b2, eps, wd = 3e-2, 0.9, 0.95, 1e-8, 0.1
    opt = AdamW(params, grads, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, n_threads=1)
    p, m, v = start.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
    for t in range(1, 4):
        g = (rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, n)).astype(np.float32)
        grads[...] = g
        opt.step(grad_scale=grad_scale)
        np.testing.assert_array_equal(grads, g)                    # the gradient is not scaled in place
        sqrt_bias2 = math.sqrt(1.0 - b2 ** t)
        p = p * (1.0 - lr * wd)
        m = m * b1 + g * ((1.0 - b1) * grad_scale)
        v = v * b2 + (g * g) * ((1.0 - b2) * grad_scale * grad_scale)
        p = p - (m / (np.sqrt(v) + eps * sqrt_bias2)) * (lr * sqrt_bias2 / (1.0 - b1 ** t))
        assert p.dtype == np.float32
        np.testing.assert_array_equal(params, p)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_grad_scale_is_the_update_on_the_scaled_gradient(n_threads):
    # Clipping as the trainer does it (a grad_scale) against clipping in place and a plain step.
    layout = [("w1", (700, 300)), ("b1", (300,)), ("w2", (300, 200)), ("g", (5000,))]
    n = sum(math.prod(s) for _, s in layout)
    assert n > 2 * optim._BLOCK
    mask = decay_mask_from_layout(layout)
    rng = np.random.default_rng(8)
    start = rng.standard_normal(n)
    scaled, clipped = [start.copy(), np.zeros(n)], [start.copy(), np.zeros(n)]
    opts = [AdamW(p, g, mask, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, n_threads=n_threads)
            for p, g in (scaled, clipped)]
    for step in range(4):
        g = rng.standard_normal(n) * 10.0 ** step          # norms from about 6e2 to 6e5: always clipped
        scaled[1][...] = g
        clipped[1][...] = g
        norm = grad_norm(scaled[1])
        scale = clip_scale(norm, 1.0)
        assert 0 < scale < 1e-2
        opts[0].step(grad_scale=scale)
        np.testing.assert_array_equal(scaled[1], g)
        assert clip_grad_norm(clipped[1], 1.0) == norm
        opts[1].step()
        np.testing.assert_allclose(scaled[0], clipped[0], rtol=1e-12, atol=1e-15)
        for name in ("m", "v"):       # entries near 0 after cancellation: absolute to the moment's scale
            want = getattr(opts[1], name)
            np.testing.assert_allclose(getattr(opts[0], name), want, rtol=1e-12, atol=1e-14 * np.abs(want).max())
    assert not np.allclose(scaled[0], start)


@pytest.mark.parametrize("grad_scale", [0.0, -0.5, float("nan"), float("inf")])
def test_grad_scale_must_be_positive_and_finite(grad_scale):
    opt = AdamW(np.zeros(4), np.ones(4))
    with pytest.raises(ValueError, match="grad_scale must be positive and finite, got"):
        opt.step(grad_scale=grad_scale)
    assert opt.t == 0 and not opt.m.any()

@pytest.mark.parametrize("grad_scale", ["0.5", True, None, np.array([0.5])])
def test_grad_scale_must_be_a_real_number(grad_scale):
    opt = AdamW(np.zeros(4), np.ones(4))
    with pytest.raises(TypeError, match="grad_scale must be a real number, got"):
        opt.step(grad_scale=grad_scale)
    assert opt.t == 0
    opt.step(grad_scale=np.float32(0.5))     # NumPy scalars are real numbers
    assert opt.t == 1


def test_clip_scale():
    assert clip_scale(0.5, 1.0) == 1.0                     # below max_norm
    assert clip_scale(1.0, 1.0) == 1.0                     # exactly max_norm: left alone
    assert clip_scale(13.0, 1.0) == 1.0 / (13.0 + 1e-6)    # as torch.nn.utils.clip_grad_norm_
    assert clip_scale(13.0, 0.0) == 1.0                    # clipping off
    assert clip_scale(13.0, -1.0) == 1.0
    assert clip_scale(float("inf"), 1.0) == 1.0            # the trainer stops on these; no scale is made up
    assert clip_scale(float("nan"), 1.0) == 1.0


# --- AdamW over some ranges of the buffer (the rest is Muon's) --------------------------------------

@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_adamw_over_ranges_updates_them_as_the_whole_buffer_and_leaves_the_rest(n_threads):
    # Ranges that start and stop inside cache blocks, span several blocks, and cut a decay mask.
    layout = [("w1", (700, 400)), ("b1", (400,)), ("w2", (200, 300)), ("g", (5000,)), ("w3", (123, 7))]
    n = sum(math.prod(s) for _, s in layout)
    assert n > 2 * optim._BLOCK
    mask = decay_mask_from_layout(layout)
    ranges = [(7, 200_000), (279_950, 280_500), (285_000, n - 3)]   # the second cuts w1 | b1 | w2
    owned = np.zeros(n, dtype=bool)
    for lo, hi in ranges:
        owned[lo:hi] = True
    rng = np.random.default_rng(7)
    start = rng.standard_normal(n)
    whole_p, whole_g = start.copy(), np.zeros(n)
    part_p, part_g = start.copy(), np.zeros(n)
    whole = AdamW(whole_p, whole_g, mask, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, n_threads=n_threads)
    part = AdamW(part_p, part_g, mask, lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, n_threads=n_threads,
                 ranges=ranges)
    for _ in range(3):
        whole_g[...] = part_g[...] = rng.standard_normal(n)
        whole.step(2e-2)
        part.step(2e-2)
    np.testing.assert_array_equal(part_p[owned], whole_p[owned])
    np.testing.assert_array_equal(part.m[owned], whole.m[owned])
    np.testing.assert_array_equal(part.v[owned], whole.v[owned])
    np.testing.assert_array_equal(part_p[~owned], start[~owned])
    assert not part.m[~owned].any() and not part.v[~owned].any()


def test_adamw_over_no_range_changes_nothing():
    params, grads = np.ones(10), np.ones(10)
    opt = AdamW(params, grads, ranges=[])
    opt.step()
    np.testing.assert_array_equal(params, np.ones(10))
    assert opt.t == 1


@pytest.mark.parametrize("ranges, match", [
    ([(0, 11)], r"ranges must lie within \[0, 10\] with start <= stop, got \(0, 11\)"),
    ([(5, 4)], r"got \(5, 4\)"),
    ([(-1, 4)], r"got \(-1, 4\)"),
    ([(4, 8), (2, 5)], r"ranges must be sorted and not overlap, got \(2, 5\) after \(4, 8\)"),
    ([(1, 2, 3)], r"ranges must be \(start, stop\) pairs of integers, got \(1, 2, 3\)"),
    ([("a", 2)], "ranges must be"),
])
def test_adamw_ranges_are_checked(ranges, match):
    with pytest.raises(ValueError, match=match):
        AdamW(np.zeros(10), np.zeros(10), ranges=ranges)


def test_ranges_outside():
    assert ranges_outside(10, []) == [(0, 10)]
    assert ranges_outside(10, [(0, 10)]) == []
    assert ranges_outside(10, [(6, 8), (2, 4)]) == [(0, 2), (4, 6), (8, 10)]
    assert ranges_outside(10, [(0, 3), (3, 5)]) == [(5, 10)]


def test_grad_norm_and_clipping_do_not_depend_on_the_thread_count():
    # The blocks' sums of squares run on threads and are added in block order afterwards: the
    # norm and the clipped buffer are the same bit for bit on 1, 2 or 3 threads, and equal the
    # float64 norm to float32 round-off (BLAS sums each block in float32). 3.5 blocks of 2^20,
    # so the threads get uneven shares.
    rng = np.random.default_rng(5)
    grads = rng.standard_normal(7 * (1 << 19)).astype(np.float32)
    want = math.sqrt(float(np.dot(grads.astype(np.float64), grads.astype(np.float64))))
    norms, clipped = [], []
    for n_threads in (1, 2, 3):
        assert grad_norm(grads, n_threads) == pytest.approx(want, rel=1e-5)   # float32 dot per block
        g = grads.copy()
        norms.append(clip_grad_norm(g, 1.0, n_threads))
        clipped.append(g)
    assert norms[0] == norms[1] == norms[2] == grad_norm(grads, 1)
    for g in clipped[1:]:
        np.testing.assert_array_equal(g, clipped[0])
    np.testing.assert_array_equal(clipped[0], grads * np.float32(1.0 / (norms[0] + 1e-6)))


# --- bad values a user can pass at a step -----------------------------------------------------------------

@pytest.mark.parametrize("lr", [float("nan"), -1.0, float("inf"), "0.1", True])
def test_a_step_refuses_a_learning_rate_that_would_spoil_every_parameter(lr):
    params, grads = np.ones(6), np.full(6, 0.5)
    opt = AdamW(params, grads, n_threads=1)
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0, got " + repr(lr).replace("(", r"\(")):
        opt.step(lr=lr)
    np.testing.assert_array_equal(params, 1.0)
    assert opt.t == 0                      # no step counted: bias correction stays right for the next one
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        AdamW(params, grads, lr=lr)


@pytest.mark.parametrize("args, message", [
    ((-20, 1e-3, 1e-4, 10, 100), "it must be a finite number >= 0, got -20"),
    ((5, float("nan"), 1e-4, 10, 100), "learning_rate must be a finite number >= 0, got nan"),
    ((5, 1e-3, -1e-4, 10, 100), "min_lr must be a finite number >= 0"),
    ((5, 1e-3, 1e-4, -1, 100), "warmup_iters must be a non-negative integer, got -1"),
    ((5, 1e-3, 1e-4, 10, 2.5), "lr_decay_iters must be a non-negative integer, got 2.5"),
])
def test_cosine_lr_refuses_what_would_give_a_negative_or_nan_rate(args, message):
    with pytest.raises(ValueError, match=message):
        cosine_lr(*args)
    assert cosine_lr(12.5, 1e-3, 1e-4, 10, 100) > 0          # a float position: max_time's schedule


def test_grad_norm_takes_the_flat_floating_buffer_only():
    for bad in (np.array([100, 100], np.int8), np.ones((3, 4)), [1.0, 2.0]):
        with pytest.raises(TypeError, match="grads must be a 1-D floating-point array"):
            grad_norm(bad)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"betas": 0.9}, ValueError, r"betas must be a pair \(beta1, beta2\), got 0.9"),
    ({"betas": (0.9,)}, ValueError, r"betas must be a pair"),
    ({"betas": ("0.9", 0.95)}, ValueError, r"beta1 must be in \[0, 1\), got '0.9'"),
    ({"eps": float("inf")}, ValueError, r"eps must be a finite positive number, got inf"),
    ({"weight_decay": float("inf")}, ValueError, r"weight_decay must be a finite number >= 0, got inf"),
    ({"n_threads": 0}, ValueError, r"n_threads must be >= 1, got 0"),
    ({"decay_mask": [True] * 5}, ValueError, r"decay_mask must have shape \(6,\), got \(5,\)"),
])
def test_adamw_names_a_bad_argument(kwargs, error, message):
    with pytest.raises(error, match=message):
        AdamW(np.ones(6), np.zeros(6), **kwargs)


def test_adamw_names_buffers_that_are_not_flat_float_arrays():
    for params, grads in (([1.0, 2.0], np.zeros(2)), (np.ones(2, int), np.zeros(2, int)), (np.ones(2), np.zeros(3))):
        with pytest.raises(ValueError, match="params and grads must be 1-D floating-point numpy buffers"):
            AdamW(params, grads)
    AdamW(np.ones(6), np.zeros(6), decay_mask=[True, False] * 3)     # a list mask of the right length is fine


@pytest.mark.parametrize("state, message", [
    ({"m": None, "v": None}, r"lacks \['t'\]"),
    ({"v": None, "t": 1}, r"lacks \['m'\]"),
    ({"m": None, "v": None, "t": -1}, "must be an integer >= 0, got -1"),
    ({"m": None, "v": None, "t": 1.5}, "must be an integer >= 0, got 1.5"),
    ({"m": None, "v": None, "t": True}, "must be an integer >= 0, got True"),
    ({"m": None, "v": None, "t": "3"}, "must be an integer >= 0, got '3'"),
])
def test_adamw_load_state_dict_names_a_missing_key_or_bad_step_count(state, message):
    params = np.zeros(4, np.float32)
    opt = AdamW(params, np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert opt.t == 0


def test_adamw_load_state_dict_takes_a_numpy_step_count():
    opt = AdamW(np.zeros(4, np.float32), np.zeros(4, np.float32))
    opt.load_state_dict({"m": np.ones(4, np.float32), "v": np.ones(4, np.float32), "t": np.array(7)})
    assert opt.t == 7 and opt.m[0] == 1


def test_adamw_load_state_dict_refuses_a_non_dict():
    opt = AdamW(np.zeros(4, np.float32), np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="must be a dict"):
        opt.load_state_dict([1, 2])
