"""Tests for numgpt.muon: the quintic Newton-Schulz iteration and the Muon update.

The iteration is a polynomial in X X^T, so it keeps the singular vectors of its
input and sends each normalised singular value s through the scalar map
p(s) = a s + b s^3 + c s^5 five times. The tests pin that down against an SVD,
measure where the singular values end (the band stated on
docs/derivations/muon.md), and check the optimizer on a least-squares problem.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import strategies as ns
from numgpt.muon import (NS_COEFFICIENTS, NS_EPS, NS_STEPS, Muon, fused_parts, hidden_matrices, muon_update,
                         newton_schulz)

BAND = (0.68, 1.21)            # five steps, every normalised singular value >= 2e-3
BAND_WELL = (0.68, 1.14)       # five steps, every normalised singular value >= 1e-2
SHAPES = [(16, 48), (48, 16), (24, 24)]


def scalar_map(s, steps=NS_STEPS):
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s ** 3 + c * s ** 5
    return s


def with_singular_values(rng, shape, s):
    """A random matrix of ``shape`` whose singular values are ``s`` (largest first)."""
    m, n = shape
    k = min(m, n)
    P, _ = np.linalg.qr(rng.standard_normal((m, k)))
    Q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return (P * s) @ Q.T


def singular_values(X):
    return np.linalg.svd(X.astype(np.float64), compute_uv=False)


def polar_factor(G):
    P, _, Qt = np.linalg.svd(G, full_matrices=False)
    return P @ Qt


# -- the iteration is the scalar map on the singular values ---------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_newton_schulz_is_the_scalar_map_on_the_singular_values(shape):
    G = np.random.default_rng(0).standard_normal(shape)
    P, s, Qt = np.linalg.svd(G, full_matrices=False)
    want = (P * scalar_map(s / (np.linalg.norm(G) + NS_EPS))) @ Qt
    np.testing.assert_allclose(newton_schulz(G), want, rtol=0, atol=1e-12)


@given(st.integers(1, 6), st.integers(1, 6), st.data())
def test_singular_vectors_are_kept_and_every_singular_value_stays_positive(m, n, data):
    G = data.draw(ns.float_arrays((m, n), min_value=-2, max_value=2))
    O = newton_schulz(G)
    assert O.shape == (m, n) and np.all(np.isfinite(O))
    # O = P phi(S) Q^T with phi > 0  <=>  O G^T and G^T O are symmetric positive semi-definite.
    for M in (O @ G.T, G.T @ O):
        np.testing.assert_allclose(M, M.T, rtol=0, atol=1e-12)
        assert np.linalg.eigvalsh(M).min() > -1e-12
    if np.any(O):       # (scaled to 1 first: for a G of 1e-187 the plain product underflows to 0)
        assert np.vdot(O / np.abs(O).max(), G / np.abs(G).max()) > 0


# -- where the singular values end: the band ----------------------------------------------


def test_the_band_of_the_scalar_map():
    s0 = np.geomspace(2e-3, 1.0, 200_001)
    s5 = scalar_map(s0)
    assert BAND[0] <= s5.min() and s5.max() <= BAND[1]
    assert s5.max() > 1.2 and s5.min() < 0.6819                   # and the band is not loose
    s5_well = s5[s0 >= 1e-2]
    assert BAND_WELL[0] <= s5_well.min() and s5_well.max() <= BAND_WELL[1]
    # p(1) = a + b + c = 0.701: 1 is not a fixed point; the iteration oscillates instead of converging.
    np.testing.assert_allclose(scalar_map(1.0, steps=1), 0.701, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_well_conditioned_gaussian_matrices_land_in_the_band(shape, dtype):
    rng = np.random.default_rng(1)
    G = rng.standard_normal(shape) if shape[0] != shape[1] else with_singular_values(
        rng, shape, np.linspace(1.0, 0.2, shape[0]))
    O = newton_schulz(G.astype(dtype))
    assert O.dtype == dtype
    s = singular_values(O)
    assert BAND_WELL[0] <= s.min() and s.max() <= BAND_WELL[1], (s.min(), s.max())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
def test_ill_conditioned_matrices_land_in_the_band(shape, dtype):
    # Condition number 200: the smallest normalised singular value is about 3.5e-3, above 2e-3.
    k = min(shape)
    G = with_singular_values(np.random.default_rng(2), shape, np.geomspace(1.0, 1.0 / 200, k))
    assert singular_values(G).min() / np.linalg.norm(G) > 2e-3
    s = singular_values(newton_schulz(G.astype(dtype)))
    assert BAND[0] <= s.min() and s.max() <= BAND[1], (s.min(), s.max())


def test_tiny_singular_values_are_amplified_about_a_to_the_fifth_but_not_to_one():
    # The stated limit of the band: below 2e-3 five steps multiply s by at most a^5, about 485.
    s_in = np.array([1.0, 0.5, 1e-4, 1e-5])
    G = with_singular_values(np.random.default_rng(3), (4, 6), s_in)
    s_norm = s_in / np.linalg.norm(s_in)
    s_out = singular_values(newton_schulz(G))
    np.testing.assert_allclose(s_out, np.sort(scalar_map(s_norm))[::-1], rtol=1e-6)   # [1, 0.5] swap places
    assert s_out[-1] < s_out[-2] < 0.1
    assert np.all(s_out[2:] <= NS_COEFFICIENTS[0] ** 5 * s_norm[2:])
    np.testing.assert_allclose(s_out[2:] / s_norm[2:], NS_COEFFICIENTS[0] ** 5, rtol=1e-3)


@pytest.mark.parametrize("shape", SHAPES)
def test_close_to_the_svd_polar_factor_within_the_band(shape):
    G = np.random.default_rng(4).standard_normal(shape)
    G = with_singular_values(np.random.default_rng(4), shape, np.geomspace(1.0, 0.05, min(shape))) \
        if shape[0] == shape[1] else G
    err = np.linalg.norm(newton_schulz(G) - polar_factor(G), ord=2)
    # ||P phi(S) Q^T - P Q^T||_2 = max |phi(s) - 1|, at most 0.32 inside BAND_WELL.
    assert err <= 1 - BAND_WELL[0]
    # Ten more steps do not converge either: the band is where the iteration stays.
    s_many = singular_values(newton_schulz(G, steps=60))
    assert s_many.min() > 0.68 and s_many.max() < 1.135 and s_many.max() - s_many.min() > 0.05


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float32_follows_float64(dtype):
    G = np.random.default_rng(5).standard_normal((32, 64))
    np.testing.assert_allclose(newton_schulz(G.astype(dtype)), newton_schulz(G), rtol=0,
                               atol=1e-4 if dtype == np.float32 else 0)


# -- shapes, orientation, zeros -----------------------------------------------------------


def test_tall_matrices_are_run_transposed():
    G = np.random.default_rng(6).standard_normal((40, 12))
    O = newton_schulz(G)
    assert O.shape == (40, 12) and O.flags.c_contiguous
    np.testing.assert_array_equal(O, newton_schulz(np.ascontiguousarray(G.T)).T)
    for shape in [(1, 7), (7, 1), (1, 1)]:                       # a vector's one singular value is ||g||
        g = np.random.default_rng(7).standard_normal(shape)
        norm = np.linalg.norm(g)
        np.testing.assert_allclose(newton_schulz(g), g / norm * scalar_map(norm / (norm + NS_EPS)), rtol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_zero_matrix_gives_zeros_not_nan(dtype):
    with np.errstate(all="raise"):
        O = newton_schulz(np.zeros((5, 3), dtype=dtype))
    assert O.dtype == dtype
    np.testing.assert_array_equal(O, 0.0)


def test_scale_invariance_up_to_eps():
    G = np.random.default_rng(8).standard_normal((8, 12))
    np.testing.assert_allclose(newton_schulz(1e3 * G), newton_schulz(G), rtol=0, atol=1e-6)


def test_negative_controls_the_band_tests_reject():
    G = with_singular_values(np.random.default_rng(9), (24, 24), np.geomspace(1.0, 1.0 / 300, 24))
    a, b, c = NS_COEFFICIENTS
    # Fewer steps leave the small singular values behind; the classic cubic (1.5, -0.5, 0) is slower still.
    with np.errstate(over="ignore", invalid="ignore"):           # b and c swapped diverges
        wrongs = [newton_schulz(G, steps=3), newton_schulz(G, coefficients=(1.5, -0.5, 0.0)),
                  newton_schulz(G, coefficients=(a, c, b))]
    for wrong in wrongs:
        assert not (np.all(np.isfinite(wrong)) and BAND[0] <= singular_values(wrong).min()
                    and singular_values(wrong).max() <= BAND[1])
    s = singular_values(newton_schulz(G))                         # the right one passes
    assert BAND[0] <= s.min() and s.max() <= BAND[1]


# -- the Muon update ----------------------------------------------------------------------


def reference_muon_update(grad, momentum, beta, nesterov):
    """Keller Jordan's muon_update, in its lerp form (torch's a.lerp_(b, w) is a + w (b - a)).

    ``grad`` is a PyTorch weight's gradient, (fan_out, fan_in).
    """
    momentum = momentum + (1 - beta) * (grad - momentum)
    update = grad + beta * (momentum - grad) if nesterov else momentum
    rows, cols = grad.shape
    return newton_schulz(update) * max(1, rows / cols) ** 0.5, momentum


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_muon_update_matches_the_reference(shape, nesterov):
    rng = np.random.default_rng(10)
    grad, momentum = rng.standard_normal((2,) + shape)
    grad_before = grad.copy()
    want, want_momentum = reference_muon_update(grad, momentum, 0.95, nesterov)
    got = muon_update(grad, momentum, beta=0.95, nesterov=nesterov, layout="out_in")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(momentum, want_momentum, rtol=1e-14)
    np.testing.assert_array_equal(grad, grad_before)              # the gradient is left alone


def test_update_scale_is_sqrt_of_fan_out_over_fan_in_when_above_one():
    rng = np.random.default_rng(11)
    # GPT-2's c_fc maps C to 4C: numgpt stores it (C, 4C), PyTorch (4C, C); both get sqrt(4) = 2.
    for shape, layout, scale in [((16, 64), "in_out", 2.0), ((64, 16), "out_in", 2.0),
                                 ((64, 16), "in_out", 1.0), ((16, 64), "out_in", 1.0), ((16, 16), "in_out", 1.0)]:
        grad = rng.standard_normal(shape)
        got = muon_update(grad, np.zeros(shape), beta=0.0, layout=layout)
        np.testing.assert_allclose(got, scale * newton_schulz(grad), rtol=1e-15)
    W = np.zeros((16, 64))
    opt = Muon([W], [np.ones_like(W)], lr=1.0, momentum=0.0)
    opt.step()
    np.testing.assert_allclose(np.linalg.norm(W, ord=2), 2.0 * scalar_map(1.0), rtol=1e-6)   # rank 1: phi(1)


# -- fused matrices: c_attn's q, k and v orthogonalised apart ------------------------------------


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("layout, shape, axis, parts", [("in_out", (8, 24), 1, 3), ("out_in", (24, 8), 0, 3),
                                                        ("in_out", (16, 12), 1, 3), ("out_in", (4, 10), 0, 2)])
def test_parts_orthogonalise_and_scale_each_block_on_its_own(layout, shape, axis, parts, nesterov):
    rng = np.random.default_rng(14)
    grad, momentum = rng.standard_normal((2,) + shape)
    blocks_momentum = np.split(momentum.copy(), parts, axis=axis)
    fused_momentum = momentum.copy()
    got = muon_update(grad, momentum, beta=0.9, nesterov=nesterov, layout=layout, parts=parts)
    want = np.concatenate([muon_update(g, m, beta=0.9, nesterov=nesterov, layout=layout)
                           for g, m in zip(np.split(grad, parts, axis=axis), blocks_momentum)], axis=axis)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)
    np.testing.assert_allclose(momentum, np.concatenate(blocks_momentum, axis=axis), rtol=1e-15)
    # the negative control: one polar factor of the whole matrix is another update
    whole = muon_update(grad, fused_momentum, beta=0.9, nesterov=nesterov, layout=layout)
    assert np.abs(whole - got).max() > 0.1
    np.testing.assert_array_equal(fused_momentum, momentum)      # the momentum does not depend on the parts


def test_each_block_of_a_fused_update_is_orthogonal_with_its_own_scale():
    # numgpt's c_attn (C, 3C): three (C, C) blocks, each scale 1, each about orthogonal
    C = 12
    grad = np.random.default_rng(15).standard_normal((C, 3 * C))
    update = muon_update(grad, np.zeros_like(grad), beta=0.0, parts=3)
    for block in np.split(update, 3, axis=1):
        s = singular_values(block)
        assert BAND[0] <= s.min() and s.max() <= BAND[1]       # a square Gaussian block: some values below 1e-2
    # fused, the whole (C, 3C) matrix gets scale sqrt(3) and one set of C singular values
    s = singular_values(muon_update(grad, np.zeros_like(grad), beta=0.0, parts=1))
    assert s.size == C and BAND_WELL[0] * math.sqrt(3) <= s.min()


def test_muon_with_parts_equals_separate_matrices():
    rng = np.random.default_rng(16)
    W = rng.standard_normal((8, 24))
    blocks = [np.ascontiguousarray(b) for b in np.split(W, 3, axis=1)]
    G = np.zeros_like(W)
    block_grads = [np.zeros_like(b) for b in blocks]
    fused = Muon([W], [G], lr=0.05, weight_decay=0.1, parts=[3])
    apart = Muon(blocks, block_grads, lr=0.05, weight_decay=0.1)
    for _ in range(3):
        G[...] = rng.standard_normal(G.shape)
        for g, part in zip(block_grads, np.split(G, 3, axis=1)):
            g[...] = part
        fused.step()
        apart.step()
    np.testing.assert_allclose(W, np.concatenate(blocks, axis=1), rtol=0, atol=1e-14)
    np.testing.assert_allclose(fused.buffers[0], np.concatenate(apart.buffers, axis=1), rtol=0, atol=1e-15)


def test_fused_parts_names_c_attn_only():
    layout = [("wte", (65, 16)), ("h.0.attn.c_attn.weight", (16, 48)), ("h.0.attn.c_proj.weight", (16, 16)),
              ("h.0.mlp.c_fc.weight", (16, 64)), ("h.0.mlp.c_proj.weight", (64, 16))]
    assert [fused_parts(name) for name, _, _ in hidden_matrices(layout)] == [3, 1, 1, 1]


def least_squares(dtype, seed=12):
    """Fit Y = X W_true with W (32, 16), numgpt's (fan_in, fan_out) layout: the update scale is 1."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((256, 32))
    Y = X @ rng.standard_normal((32, 16)) / math.sqrt(32)
    W = np.zeros((32, 16), dtype=dtype)
    G = np.zeros_like(W)

    def loss_and_grad():
        R = X @ W - Y                                         # (256, 16)
        G[...] = X.T @ R / X.shape[0]
        return 0.5 * float(np.mean(np.sum(R * R, axis=1)))
    return W, G, loss_and_grad


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_muon_reduces_a_least_squares_loss(dtype):
    W, G, loss_and_grad = least_squares(dtype)
    opt = Muon([W], [G], lr=0.02)
    losses = [loss_and_grad()]
    for _ in range(150):
        opt.step()
        losses.append(loss_and_grad())
    assert W.dtype == dtype and opt.t == 150
    assert losses[1] < losses[0]                                  # the first step already helps
    assert losses[-1] < 1e-2 * losses[0], losses[::25]


def test_one_step_moves_by_lr_times_an_orthogonalised_direction():
    W, G, loss_and_grad = least_squares(np.float64)
    loss_and_grad()
    W0, G0 = W.copy(), G.copy()
    Muon([W], [G], lr=0.1).step()
    # Step 1 from a zero buffer: M = 0.05 G, U = 0.05 G + 0.95 M = 0.0975 G; NS ignores the scale.
    np.testing.assert_allclose(W, W0 - 0.1 * newton_schulz(0.0975 * G0), rtol=0, atol=1e-14)
    assert BAND_WELL[0] <= singular_values((W0 - W) / 0.1).min()


def test_weight_decay_alone_shrinks_the_weights():
    W = np.random.default_rng(13).standard_normal((4, 6))
    W0 = W.copy()
    opt = Muon([W], [np.zeros_like(W)], lr=0.5, weight_decay=0.1)
    opt.step()
    np.testing.assert_allclose(W, W0 * (1 - 0.05), rtol=1e-15)   # the zero gradient's update is exactly 0


def test_state_dict_round_trip_continues_identically():
    W, G, loss_and_grad = least_squares(np.float64)
    opt = Muon([W], [G])
    for _ in range(3):
        loss_and_grad()
        opt.step()
    state = opt.state_dict()
    W_copy, G_copy = W.copy(), G.copy()
    twin = Muon([W_copy], [G_copy])
    twin.load_state_dict(state)
    assert twin.t == 3
    loss_and_grad()
    G_copy[...] = G
    opt.step()
    twin.step()
    np.testing.assert_array_equal(W, W_copy)


# -- bad input -----------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    with pytest.raises(TypeError, match=r"G must be a numpy.ndarray, got list"):
        newton_schulz([[1.0]])
    with pytest.raises(TypeError, match=r"G must have a floating dtype.*int64"):
        newton_schulz(np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"G must be a 2-D matrix, got shape \(2, 2, 2\)"):
        newton_schulz(np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"steps must be a non-negative integer, got -1"):
        newton_schulz(np.ones((2, 2)), steps=-1)
    for parts, match in [(0, "parts must be a positive integer, got 0"), (True, "parts must be a positive integer"),
                         (1.5, "parts must be a positive integer"),
                         (5, r"parts=5 does not divide the fan_out axis of a matrix of shape \(4, 6\) stored in_out "
                             r"\(fan_out 6\)")]:
        with pytest.raises(ValueError, match=match):
            muon_update(np.ones((4, 6)), np.zeros((4, 6)), parts=parts)
    with pytest.raises(ValueError, match=r"parts\[1\]=4 does not divide .* shape \(6, 4\) stored out_in \(fan_out 6\)"):
        Muon([np.ones((4, 6)), np.ones((6, 4))], [np.ones((4, 6)), np.ones((6, 4))], layout="out_in", parts=[1, 4])
    with pytest.raises(ValueError, match="parts must give one count per matrix: 1 matrices, got 2 counts"):
        Muon([np.ones((4, 6))], [np.ones((4, 6))], parts=[1, 1])
    with pytest.raises(ValueError, match=r"momentum must match grad's shape \(2, 3\)"):
        muon_update(np.ones((2, 3)), np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"params and grads must pair up, got 1 params and 0 grads"):
        Muon([np.ones((2, 2))], [])
    with pytest.raises(ValueError, match=r"params\[0\] must be a 2-D matrix, got shape \(4,\)"):
        Muon([np.ones(4)], [np.ones(4)])
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        Muon([np.ones((2, 2))], [np.ones((2, 2))], momentum=1.0)
    opt = Muon([np.ones((2, 2))], [np.ones((2, 2))])
    with pytest.raises(ValueError, match=r"layout must be one of \('in_out', 'out_in'\), got 'io'"):
        muon_update(np.ones((2, 3)), np.ones((2, 3)), layout="io")
    with pytest.raises(ValueError, match=r"layout must be one of"):
        Muon([np.ones((2, 2))], [np.ones((2, 2))], layout="transposed")
    with pytest.raises(ValueError, match=r"optimizer state does not match"):
        opt.load_state_dict({"buffers": [np.ones((3, 2))], "t": 1})


# -- the derivation page ---------------------------------------------------------------------


def _derivation_docs():
    """tests/test_derivation_docs.py as a module: its quote matcher and page parser."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent / "test_derivation_docs.py"
    spec = importlib.util.spec_from_file_location("_derivation_docs_for_muon", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_muon_page_examples_run_and_its_code_quotes_appear_in_muon_py():
    docs = _derivation_docs()
    page = docs.ROOT / "docs" / "derivations" / "optim" / "muon.md"
    text = page.read_text(encoding="utf-8")
    quotes = docs.code_quotes(text)
    assert len(quotes) >= 8
    source = [docs.code_without_comments_and_docstrings(docs.ROOT / "numgpt" / "muon.py")]
    missing = [q for q in quotes if not docs.quote_found(q, source)]
    assert not missing, f"code quotes of {page.name} not in numgpt/muon.py: {missing}"
    blocks = docs.PYTHON_BLOCK.findall(text)
    assert blocks
    for code in blocks:
        exec(compile(code, str(page), "exec"), {"__name__": "muon_page_example"})
    assert not docs.quote_found("X = a * X - B @ X", source)        # the matcher can fail


# --- threads ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_threads", [2, 3, 8])
def test_threads_give_the_same_bits_as_one(n_threads):
    rng = np.random.default_rng(11)
    shapes = [(16, 48), (16, 16), (16, 64), (64, 16), (8, 8)]
    starts = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    runs = []
    for threads in (1, n_threads):
        params = [p.copy() for p in starts]
        grads = [np.zeros_like(p) for p in params]
        opt = Muon(params, grads, n_threads=threads)
        g_rng = np.random.default_rng(12)
        for _ in range(3):
            for g in grads:
                g[...] = g_rng.standard_normal(g.shape)
            opt.step(0.01)
        runs.append((params, opt.state_dict()))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(runs[0][1]["buffers"], runs[1][1]["buffers"]):
        np.testing.assert_array_equal(a, b)


def test_no_matrices_and_bad_thread_counts():
    opt = Muon([], [], n_threads=2)
    opt.step()
    assert opt.t == 1
    with pytest.raises(ValueError, match="n_threads must be >= 1, got 0"):
        Muon([], [], n_threads=0)


# --- the trainer's clipping: a grad_scale ------------------------------------------------------------

@pytest.mark.parametrize("n_threads", [1, 2])
def test_grad_scale_is_the_step_on_the_scaled_gradients(n_threads):
    rng = np.random.default_rng(13)
    shapes = [(16, 48), (16, 16), (64, 16)]
    starts = [rng.standard_normal(s) for s in shapes]
    runs = []
    for scaled_in_place in (False, True):
        params = [p.copy() for p in starts]
        grads = [np.zeros_like(p) for p in params]
        opt = Muon(params, grads, weight_decay=0.1, n_threads=n_threads)
        g_rng = np.random.default_rng(14)
        for step in range(3):
            scale = 0.3 / (step + 1)
            for g in grads:
                g[...] = g_rng.standard_normal(g.shape) * 10.0 ** step
            kept = [g.copy() for g in grads]
            if scaled_in_place:
                for g in grads:
                    g *= scale
                opt.step(0.01)
            else:
                opt.step(0.01, grad_scale=scale)
                for g, k in zip(grads, kept):
                    np.testing.assert_array_equal(g, k)     # the gradients are not scaled in place
        runs.append((params, opt.state_dict()["buffers"]))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # Newton-Schulz nearly forgets the gradient's scale; the momentum does not, so the scale was applied.
    unscaled = Muon([p.copy() for p in starts], [np.ones(s) for s in shapes])
    unscaled.step(0.01)
    scaled = Muon([p.copy() for p in starts], [np.ones(s) for s in shapes])
    scaled.step(0.01, grad_scale=0.5)
    for a, b in zip(unscaled.buffers, scaled.buffers):
        np.testing.assert_allclose(b, 0.5 * a, rtol=1e-15)


@pytest.mark.parametrize("grad_scale", [0.0, -1.0, float("nan"), float("inf")])
def test_grad_scale_must_be_positive_and_finite(grad_scale):
    opt = Muon([np.zeros((4, 4))], [np.ones((4, 4))])
    with pytest.raises(ValueError, match="grad_scale must be positive and finite, got"):
        opt.step(0.01, grad_scale=grad_scale)
    assert opt.t == 0


@pytest.mark.parametrize("grad_scale", ["0.5", True, None, np.array([0.5])])
def test_grad_scale_must_be_a_real_number(grad_scale):
    opt = Muon([np.zeros((4, 4))], [np.ones((4, 4))])
    with pytest.raises(TypeError, match="grad_scale must be a real number, got"):
        opt.step(0.01, grad_scale=grad_scale)
    assert opt.t == 0
    opt.step(0.01, grad_scale=np.float32(0.5))     # NumPy scalars are real numbers
    assert opt.t == 1


def test_muon_refuses_a_non_bool_nesterov_and_a_bad_step_learning_rate():
    p, g = np.ones((4, 3)), np.full((4, 3), 0.1)
    with pytest.raises(TypeError, match="nesterov must be True or False, got 'no'"):
        Muon([p], [g], nesterov="no")
    opt = Muon([p], [g], n_threads=1)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0, got nan"):
        opt.step(lr=float("nan"))
    np.testing.assert_array_equal(p, 1.0)
    assert opt.t == 0


@pytest.mark.parametrize("state, message", [
    ({"buffers": []}, r"lacks \['t'\]"),
    ({"t": 3}, r"lacks \['buffers'\]"),
    ({"buffers": [np.zeros((2, 3))], "t": -2}, "must be an integer >= 0, got -2"),
])
def test_load_state_dict_names_a_missing_key_or_bad_step_count(state, message):
    opt = Muon([np.zeros((2, 3))], [np.zeros((2, 3))])
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(state)
    assert opt.t == 0
