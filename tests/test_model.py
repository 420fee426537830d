"""Tests for numgpt.model: configuration, parameter layout, initialisation,
the whole-model gradient against finite differences, and inference paths.

The central test is the finite-difference check of the full model in float64:
every parameter tensor is checked along a random direction
(:func:`numgpt.gradcheck.adjoint_check`) and a few tensors element by element
(:func:`numgpt.gradcheck.numerical_gradient`). The parameters are first moved
well away from their initial values (weights N(0, 0.3), layer-norm gains
around 1, biases non-zero) so that no gradient is trivially zero and no
identity gain hides a missing factor.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numgpt.gradcheck import adjoint_check, numerical_gradient, rel_error
from numgpt.model import GPT, GPTConfig, param_layout

RTOL = 1e-6


def tiny_config(**overrides):
    sizes = {"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 8}
    return GPTConfig(**{**sizes, **overrides})


def randomised_model(config, seed=0, dtype=np.float64):
    """A model whose parameters are far from their initial values."""
    model = GPT(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 100)
    model.flat_params[...] = rng.normal(0.0, 0.3, model.num_params)
    for name, p in model.params.items():
        if name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
            p[...] = 1.0 + rng.normal(0.0, 0.3, p.shape)
    return model


def batch(config, B=2, T=6, seed=1, ignore_fraction=0.0):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, config.vocab_size, size=(B, T))
    idx[0, :2] = idx[0, 2]                    # repeated ids: the embedding gradient must accumulate
    targets = rng.integers(0, config.vocab_size, size=(B, T))
    if ignore_fraction:
        targets[rng.random((B, T)) < ignore_fraction] = -1
        targets[0, 0] = 1                     # never all ignored
        targets[1, -1] = -1                   # at least one ignored
    return idx, targets


def loss_of(model, name, idx, targets):
    """f(x): the evaluation loss with parameter ``name`` set to x (restored afterwards)."""
    p = model.params[name]

    def f(x):
        saved = p.copy()
        p[...] = x
        try:
            return model.loss(idx, targets)
        finally:
            p[...] = saved
    return f


# --- configuration ------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["vocab_size", "block_size", "n_layer", "n_head", "n_embd"])
@pytest.mark.parametrize("bad", [0, -3, 2.0, True, "4"])
def test_config_rejects_non_positive_sizes(field, bad):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: bad})


def test_config_n_embd_divisible_by_n_head():
    with pytest.raises(ValueError, match="n_embd.*n_head"):
        tiny_config(n_embd=10, n_head=3)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_config_dropout_range(bad):
    with pytest.raises(ValueError, match="dropout"):
        tiny_config(dropout=bad)


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_config_bias_must_be_bool(bad):
    with pytest.raises(ValueError, match="bias"):
        tiny_config(bias=bad)


def test_config_dict_round_trip_and_unknown_fields():
    config = tiny_config(dropout=0.25, bias=False)
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="n_embed"):
        GPTConfig.from_dict({**config.to_dict(), "n_embed": 8})


def test_model_rejects_bad_construction_args():
    with pytest.raises(TypeError, match="config"):
        GPT({"vocab_size": 11})
    with pytest.raises(TypeError, match="dtype"):
        GPT(tiny_config(), dtype=np.float16)


# --- parameter layout -------------------------------------------------------------------------

def test_param_names_and_shapes_are_gpt2s():
    V, Tm, L, C = 13, 7, 3, 12
    model = GPT(GPTConfig(vocab_size=V, block_size=Tm, n_layer=L, n_head=3, n_embd=C))
    expected = {"wte": (V, C), "wpe": (Tm, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(L):
        h = f"h.{i}."
        expected.update({
            h + "ln_1.weight": (C,), h + "ln_1.bias": (C,),
            h + "attn.c_attn.weight": (C, 3 * C), h + "attn.c_attn.bias": (3 * C,),
            h + "attn.c_proj.weight": (C, C), h + "attn.c_proj.bias": (C,),
            h + "ln_2.weight": (C,), h + "ln_2.bias": (C,),
            h + "mlp.c_fc.weight": (C, 4 * C), h + "mlp.c_fc.bias": (4 * C,),
            h + "mlp.c_proj.weight": (4 * C, C), h + "mlp.c_proj.bias": (C,),
        })
    assert {k: v.shape for k, v in model.params.items()} == expected
    assert {k: v.shape for k, v in model.grads.items()} == expected
    assert model.num_params == sum(math.prod(s) for s in expected.values())
    assert [n for n, _ in model.layout] == list(model.params)


def test_bias_false_drops_every_bias():
    with_bias = param_layout(tiny_config())
    without = param_layout(tiny_config(bias=False))
    assert [n for n, _ in without] == [n for n, _ in with_bias if not n.endswith(".bias")]
    model = GPT(tiny_config(bias=False))
    assert not any(name.endswith(".bias") for name in model.params)
    # the model still runs with no biases at all
    idx, targets = batch(model.config)
    loss, _ = model.loss_and_grads(idx, targets)
    assert math.isfinite(loss)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_params_and_grads_are_views_into_the_flat_buffers(dtype):
    model = GPT(tiny_config(), dtype=dtype)
    assert model.flat_params.dtype == model.flat_grads.dtype == dtype
    assert model.flat_params.shape == model.flat_grads.shape == (model.num_params,)
    covered = 0
    for name in model.params:
        p, g = model.params[name], model.grads[name]
        assert np.shares_memory(p, model.flat_params), name
        assert np.shares_memory(g, model.flat_grads), name
        assert p.dtype == g.dtype == dtype
        covered += p.size
    assert covered == model.num_params
    # Writing through the flat buffer changes every named entry, and vice versa.
    model.flat_params[...] = np.arange(model.num_params, dtype=dtype)
    offset = 0
    for name, shape in model.layout:
        size = math.prod(shape)
        np.testing.assert_array_equal(model.params[name].reshape(-1), np.arange(offset, offset + size))
        offset += size
    model.flat_grads[...] = 7.0
    assert all((g == 7.0).all() for g in model.grads.values())
    model.params["h.1.mlp.c_fc.bias"][3] = -1.0
    assert (model.flat_params == -1.0).sum() == 1
    # loss_and_grads writes the gradient into the same buffer (no rebinding)
    idx, targets = batch(model.config)
    _, grads = model.loss_and_grads(idx, targets)
    assert grads is model.grads
    assert all(np.shares_memory(g, model.flat_grads) for g in grads.values())
    assert np.abs(model.flat_grads).sum() > 0


def test_initialisation_statistics():
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(config, seed=0)
    proj_std = 0.02 / math.sqrt(2 * config.n_layer)
    for name, p in model.params.items():
        if name.endswith(".bias"):
            assert (p == 0).all(), name
        elif name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
            assert (p == 1).all(), name
        else:
            std = proj_std if name.endswith("c_proj.weight") else 0.02
            assert abs(float(p.mean())) < 4 * std / math.sqrt(p.size), name
            assert float(p.std()) == pytest.approx(std, rel=0.05), name
    # The seed decides the initialisation.
    assert np.array_equal(GPT(config, seed=0).flat_params, model.flat_params)
    assert not np.array_equal(GPT(config, seed=1).flat_params, model.flat_params)


def test_parameter_count_matches_nanogpt():
    # nanoGPT's Shakespeare-char CPU model: "number of parameters: 0.80M"
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))
    C = 128
    per_layer = 12 * C * C + 13 * C
    assert model.num_params == 65 * C + 64 * C + 4 * per_layer + 2 * C
    assert model.num_params_report() == model.num_params - 64 * C == 801_664
    assert f"{model.num_params_report() / 1e6:.2f}M" == "0.80M"
    assert model.num_params_report(non_embedding=False) == model.num_params


# --- the whole model against finite differences ---------------------------------------------------

def _check_every_tensor(model, idx, targets, h=None, order=4):
    """Adjoint check of every parameter tensor (difference step ``h``, stencil ``order``);
    returns the analytic grads (copies)."""
    loss, grads = model.loss_and_grads(idx, targets)
    grads = {k: g.copy() for k, g in grads.items()}
    assert loss == pytest.approx(model.loss(idx, targets), rel=1e-12)
    rng = np.random.default_rng(7)
    for name in model.params:
        assert np.abs(grads[name]).max() > 0, f"gradient of {name} is all zero"
        fd, analytic, rel = adjoint_check(loss_of(model, name, idx, targets), model.params[name].copy(),
                                          1.0, grads[name], rng=rng, h=h, order=order)
        assert rel < RTOL, f"{name}: finite differences {fd!r} vs backward {analytic!r} (rel {rel:.2e})"
    return grads


def test_whole_model_gradient_adjoint_every_parameter():
    model = randomised_model(tiny_config())
    idx, targets = batch(model.config)
    _check_every_tensor(model, idx, targets)


@pytest.mark.parametrize("name", ["wte", "wpe", "h.0.ln_1.weight", "h.0.attn.c_attn.bias",
                                  "h.1.attn.c_proj.weight", "h.1.ln_2.bias", "h.0.mlp.c_fc.bias",
                                  "ln_f.weight"])
def test_whole_model_gradient_elementwise(name):
    model = randomised_model(tiny_config())
    idx, targets = batch(model.config)
    _, grads = model.loss_and_grads(idx, targets)
    analytic = grads[name].copy()
    x = model.params[name].copy()
    numeric = numerical_gradient(loss_of(model, name, idx, targets), x, order=4)
    assert rel_error(analytic, numeric) < RTOL, name


def test_whole_model_gradient_without_biases():
    model = randomised_model(tiny_config(bias=False, n_layer=1))
    idx, targets = batch(model.config)
    _check_every_tensor(model, idx, targets)
    _, grads = model.loss_and_grads(idx, targets)
    analytic = grads["h.0.ln_2.weight"].copy()
    numeric = numerical_gradient(loss_of(model, "h.0.ln_2.weight", idx, targets),
                                 model.params["h.0.ln_2.weight"].copy(), order=4)
    assert rel_error(analytic, numeric) < RTOL


def test_whole_model_gradient_with_ignored_targets():
    model = randomised_model(tiny_config(n_layer=1))
    idx, targets = batch(model.config, ignore_fraction=0.4)
    assert (targets == -1).any() and (targets != -1).any()
    _check_every_tensor(model, idx, targets)
    # an ignored position contributes nothing: changing its target changes nothing
    loss, _ = model.loss_and_grads(idx, targets)
    grads = model.flat_grads.copy()
    other = targets.copy()
    other[other == -1] = -7
    loss2, _ = model.loss_and_grads(idx, other, ignore_index=-7)
    assert loss2 == loss
    np.testing.assert_array_equal(model.flat_grads, grads)


def dropout_loss_of(model, name, idx, targets, seed):
    """f(x): the training loss, dropout masks drawn from ``seed``, with parameter ``name`` set to x.

    The same generator seed gives the same masks, so the training loss is a
    deterministic function of the parameters and can be differentiated numerically.
    """
    p = model.params[name]

    def f(x):
        saved = p.copy()
        p[...] = x
        try:
            return model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(seed))[0]
        finally:
            p[...] = saved
    return f


def test_whole_model_gradient_with_dropout():
    model = randomised_model(tiny_config(n_layer=1, dropout=0.3))
    idx, targets = batch(model.config)
    seed = 5

    def f_for(name):
        return dropout_loss_of(model, name, idx, targets, seed)

    _, grads = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(seed))
    grads = {k: g.copy() for k, g in grads.items()}
    rng = np.random.default_rng(3)
    for name in model.params:
        _, _, rel = adjoint_check(f_for(name), model.params[name].copy(), 1.0, grads[name], rng=rng)
        assert rel < RTOL, name


def test_tied_wte_gradient_is_the_sum_of_both_paths():
    config = tiny_config(vocab_size=13, n_layer=1)
    model = randomised_model(config)
    idx, targets = batch(config)
    idx = idx % 6                               # ids 6..12 never appear in the input
    _, grads = model.loss_and_grads(idx, targets)
    dwte = grads["wte"].copy()
    numeric = numerical_gradient(loss_of(model, "wte", idx, targets), model.params["wte"].copy(), order=4)
    assert rel_error(dwte, numeric) < RTOL

    # The lm-head path alone, from public outputs: logits = h @ wte.T with V > C, so the
    # final hidden states h are recovered exactly by least squares.
    wte = model.params["wte"]
    logits = model.forward(idx)
    V = wte.shape[0]
    h = np.linalg.lstsq(wte, logits.reshape(-1, V).T, rcond=None)[0].T       # (B*T, C)
    np.testing.assert_allclose(h @ wte.T, logits.reshape(-1, V), atol=1e-10)
    z = logits.reshape(-1, V)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(p)), targets.reshape(-1)] -= 1.0
    head_path = (p / len(p)).T @ h                                          # (V, C)

    embedding_path = dwte - head_path
    absent = np.arange(6, V)
    # rows of ids that never occur get only the head gradient ...
    np.testing.assert_allclose(embedding_path[absent], 0.0, atol=1e-12)
    assert np.abs(dwte[absent]).max() > 1e-4
    # ... and rows of ids that occur get both: neither path alone is the gradient
    present = np.unique(idx)
    assert np.abs(embedding_path[present]).min(axis=1).max() > 1e-4
    assert np.abs(head_path[present]).max() > 1e-4


# --- forward -----------------------------------------------------------------------------------------

def test_loss_at_init_is_close_to_log_vocab():
    config = GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config, seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 30, size=(8, 16))
    targets = rng.integers(0, 30, size=(8, 16))
    assert abs(model.loss(idx, targets) - math.log(30)) < 0.1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_preserves_dtype(dtype):
    model = GPT(tiny_config(), dtype=dtype)
    idx, targets = batch(model.config)
    logits = model.forward(idx)
    assert logits.dtype == dtype and logits.shape == (2, 6, 11)
    loss, grads = model.loss_and_grads(idx, targets)
    assert isinstance(loss, float)
    assert all(g.dtype == dtype for g in grads.values())
    cache = model.new_kv_cache(2)
    assert model.forward_step(idx, cache).dtype == dtype


@pytest.mark.parametrize("idx, error, match", [
    (np.zeros((2, 4), dtype=np.float64), TypeError, "integer"),
    ([[1, 2, 3]], TypeError, "integer"),
    (np.array([[1, 2, 11]]), ValueError, "outside"),
    (np.array([[1, -1, 2]]), ValueError, "outside"),
    (np.zeros((1, 9), dtype=np.int64), ValueError, "block_size"),
    (np.zeros(4, dtype=np.int64), ValueError, r"\(B, T\)"),
    (np.zeros((1, 2, 3), dtype=np.int64), ValueError, r"\(B, T\)"),
    (np.zeros((1, 0), dtype=np.int64), ValueError, "at least one"),
])
def test_bad_idx_is_rejected_clearly(idx, error, match):
    model = GPT(tiny_config())
    with pytest.raises(error, match=match):
        model.forward(idx)
    with pytest.raises(error, match=match):
        model.loss_and_grads(idx, np.zeros(np.shape(idx), dtype=np.int64))


def test_bad_targets_are_rejected_clearly():
    model = GPT(tiny_config())
    idx, targets = batch(model.config)
    with pytest.raises(ValueError, match="shape"):
        model.loss_and_grads(idx, targets[:, :-1])
    with pytest.raises(TypeError, match="targets"):
        model.loss(idx, targets.astype(np.float64))
    bad = targets.copy()
    bad[0, 0] = 11
    with pytest.raises(ValueError, match="outside"):
        model.loss_and_grads(idx, bad)


def test_forward_step_rejects_out_of_range_ids():
    # forward() checks ids through the embedding layer; the cached path must too,
    # or a negative id silently reads the last row of wte.
    model = GPT(tiny_config())
    for bad in (-1, 11):
        cache = model.new_kv_cache(1)
        with pytest.raises(ValueError, match="outside"):
            model.forward_step(np.array([[1, bad]]), cache)


# --- gradient accumulation, dropout ------------------------------------------------------------------------

def test_gradient_accumulation_equals_one_big_batch():
    model = randomised_model(tiny_config(), dtype=np.float64)
    idx, targets = batch(model.config, B=4, seed=3)
    loss_all, _ = model.loss_and_grads(idx, targets)
    full = model.flat_grads.copy()
    model.flat_grads[...] = 123.0               # stale values must be cleared by the first micro-batch
    loss_a, _ = model.loss_and_grads(idx[:2], targets[:2], accumulate=False, loss_scale=0.5)
    loss_b, _ = model.loss_and_grads(idx[2:], targets[2:], accumulate=True, loss_scale=0.5)
    np.testing.assert_allclose(model.flat_grads, full, rtol=1e-12, atol=1e-15)
    assert (loss_a + loss_b) / 2 == pytest.approx(loss_all, rel=1e-13)
    # the returned loss is not scaled
    assert loss_a == pytest.approx(model.loss(idx[:2], targets[:2]), rel=1e-13)


def test_accumulate_false_zeroes_old_gradients():
    model = randomised_model(tiny_config(n_layer=1))
    idx, targets = batch(model.config)
    model.loss_and_grads(idx, targets)
    once = model.flat_grads.copy()
    model.loss_and_grads(idx, targets)
    np.testing.assert_array_equal(model.flat_grads, once)
    model.loss_and_grads(idx, targets, accumulate=True)
    np.testing.assert_allclose(model.flat_grads, 2 * once, rtol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
def test_every_gradient_slot_is_overwritten_without_accumulate(bias):
    # The step copies (not adds) its first contribution into each slot instead of zeroing
    # the buffer first: whatever was there before, NaN included, must be gone.
    model = randomised_model(tiny_config(n_layer=2, bias=bias))
    idx, targets = batch(model.config)
    assert_every_slot_overwritten(model, idx, targets)


def assert_every_slot_overwritten(model, idx, targets):
    """A step without accumulate leaves the gradient of an accumulating step from zero, whatever the
    buffer held before (NaN here): no slot is skipped by the copy-first reducer."""
    model.flat_grads[...] = 0.0
    model.loss_and_grads(idx, targets, accumulate=True)
    want = model.flat_grads.copy()
    model.flat_grads[...] = np.nan
    model.loss_and_grads(idx, targets)
    np.testing.assert_array_equal(model.flat_grads, want)

def test_dropout_changes_the_loss_reproducibly():
    model = GPT(tiny_config(dropout=0.3), seed=0, dtype=np.float64)
    idx, targets = batch(model.config)
    eval_loss = model.loss(idx, targets)
    # no generator: evaluation mode, even with dropout configured
    assert model.loss_and_grads(idx, targets)[0] == pytest.approx(eval_loss, rel=1e-12)
    a, _ = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(42))
    ga = model.flat_grads.copy()
    b, _ = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(42))
    np.testing.assert_array_equal(model.flat_grads, ga)
    c, _ = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(43))
    assert a != eval_loss
    assert a == b
    assert c != a


# --- KV cache, attention maps ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("chunks", [[8], [1] * 8, [3, 1, 4], [2, 5, 1]])
def test_forward_step_matches_forward(dtype, atol, chunks):
    model = GPT(tiny_config(), seed=1, dtype=dtype)
    rng = np.random.default_rng(0)
    model.flat_params[...] += rng.normal(0, 0.1, model.num_params).astype(dtype)
    idx = rng.integers(0, 11, size=(3, sum(chunks)))
    full = model.forward(idx)
    cache = model.new_kv_cache(3)
    pieces, pos = [], 0
    for t in chunks:
        pieces.append(model.forward_step(idx[:, pos:pos + t], cache))
        pos += t
        assert cache["pos"] == pos
    stepped = np.concatenate(pieces, axis=1)
    assert stepped.dtype == dtype
    np.testing.assert_allclose(stepped, full, rtol=0, atol=atol)


def test_forward_step_last_only_is_the_last_row_and_fills_the_same_cache():
    model = GPT(tiny_config(), seed=1, dtype=np.float64)
    idx = np.random.default_rng(0).integers(0, 11, size=(2, 5))
    full_cache, last_cache = model.new_kv_cache(2), model.new_kv_cache(2)
    every = model.forward_step(idx, full_cache)
    last = model.forward_step(idx, last_cache, last_only=True)
    assert last.shape == (2, 1, 11)
    np.testing.assert_array_equal(last[:, 0], every[:, -1])
    assert last_cache["pos"] == full_cache["pos"] == 5
    np.testing.assert_array_equal(last_cache["k"], full_cache["k"])
    np.testing.assert_array_equal(last_cache["v"], full_cache["v"])


def test_forward_step_refuses_to_overflow_the_cache():
    model = GPT(tiny_config())
    cache = model.new_kv_cache(1)
    model.forward_step(np.zeros((1, 6), dtype=np.int64), cache)
    with pytest.raises(ValueError, match="block_size"):
        model.forward_step(np.zeros((1, 3), dtype=np.int64), cache)
    assert cache["pos"] == 6


@settings(max_examples=10)
@given(T=st.integers(1, 8), B=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_attention_maps_are_causal_distributions(T, B, seed):
    model = GPT(tiny_config(n_layer=2, n_head=2), seed=seed % 7)
    idx = np.random.default_rng(seed).integers(0, 11, size=(B, T))
    maps = model.attention_maps(idx)
    assert maps.shape == (2, B, 2, T, T)
    np.testing.assert_allclose(maps.sum(axis=-1), 1.0, atol=1e-6)
    assert (maps[..., np.triu_indices(T, k=1)[0], np.triu_indices(T, k=1)[1]] == 0).all()
    assert (maps >= 0).all()


# --- state -------------------------------------------------------------------------------------------------

def test_state_dict_round_trip():
    a = GPT(tiny_config(), seed=0)
    b = GPT(tiny_config(), seed=1)
    state = a.state_dict()
    assert set(state) == set(a.params)
    scratch = a.state_dict()
    scratch["wte"][...] = 5.0                      # a copy: the model is untouched
    np.testing.assert_array_equal(a.params["wte"], state["wte"])
    flat_before = b.flat_params
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.flat_params, a.flat_params)
    assert b.flat_params is flat_before             # loaded in place: the views stay valid
    assert all(np.shares_memory(p, b.flat_params) for p in b.params.values())
    # float64 state into a float32 model is cast
    c = GPT(tiny_config(), dtype=np.float64, seed=2)
    b.load_state_dict(c.state_dict())
    np.testing.assert_array_equal(b.flat_params, c.flat_params.astype(np.float32))


def test_load_state_dict_errors():
    model = GPT(tiny_config())
    state = model.state_dict()
    bad = dict(state, wpe=np.zeros((9, 8)))
    with pytest.raises(ValueError, match="wpe.*shape"):
        model.load_state_dict(bad)
    missing = {k: v for k, v in state.items() if k != "ln_f.bias"}
    with pytest.raises(ValueError, match="ln_f.bias"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match="lm_head.weight"):
        model.load_state_dict(dict(state, **{"lm_head.weight": np.zeros((11, 8))}))
    before = model.flat_params.copy()
    missing["wte"] = missing["wte"] + 1.0
    model.load_state_dict(missing, strict=False)   # non-strict: loads what is there
    np.testing.assert_array_equal(model.params["wte"], state["wte"] + 1.0)
    np.testing.assert_array_equal(model.params["ln_f.bias"], before[-8:])


def test_a_refused_state_dict_leaves_the_model_as_it_was_and_strict_false_reports_names():
    model = GPT(tiny_config(), seed=0)
    before = model.flat_params.copy()
    shifted = {k: v + 1 for k, v in model.state_dict().items()}
    # every parameter but the last is fine: none may be copied before the last is refused
    last = list(model.params)[-1]
    for bad, error, message in [
            (np.zeros(9), ValueError, f"parameter {last} must have shape"),
            (np.full(model.params[last].shape, None), TypeError, f"parameter {last} must hold real numbers, got "
                                                                 f"dtype object"),
            (np.ones(model.params[last].shape, complex), TypeError, "got dtype complex128"),
            (np.full(model.params[last].shape, 1e300), ValueError, f"parameter {last} holds values that are not "
                                                                   f"finite in float32"),
            (np.full(model.params[last].shape, np.nan), ValueError, "not finite")]:
        with pytest.raises(error, match=message):
            model.load_state_dict(dict(shifted, **{last: bad}))
        np.testing.assert_array_equal(model.flat_params, before)
    renamed = {"transformer." + k: v for k, v in shifted.items()}
    missing, unexpected = model.load_state_dict(renamed, strict=False)      # loads nothing, and says so
    assert missing == list(model.params) and unexpected == list(renamed)
    np.testing.assert_array_equal(model.flat_params, before)
    assert model.load_state_dict(shifted) == ([], [])


def test_forward_step_refuses_a_cache_of_another_model_or_batch():
    model, bigger = GPT(tiny_config()), GPT(tiny_config(n_layer=3))
    idx = np.zeros((1, 4), dtype=np.int64)
    cache = bigger.new_kv_cache(1)
    bigger.forward_step(idx, cache)
    with pytest.raises(ValueError, match=r"kv_cache\['k'\] has shape \(3, 1, .*expected \(2, 1, .* make it with "
                                         r"this model's new_kv_cache\(1\)"):
        model.forward_step(idx, cache)
    with pytest.raises(ValueError, match=r"expected \(2, 2,"):
        model.forward_step(np.zeros((2, 4), dtype=np.int64), model.new_kv_cache(1))
    cache = model.new_kv_cache(1)
    cache["pos"] = 2.0
    with pytest.raises(ValueError, match=r"kv_cache\['pos'\] must be a non-negative integer, got 2.0"):
        model.forward_step(idx, cache)


def test_init_false_leaves_zeros_for_loading():
    model = GPT(tiny_config(), init=False)
    assert not model.flat_params.any()
    model.load_state_dict(GPT(tiny_config(), seed=4).state_dict())
    np.testing.assert_array_equal(model.flat_params, GPT(tiny_config(), seed=4).flat_params)


# --- the backward's reducer, and what the model leaves to numgpt.parallel ---------------------------------

def test_backward_hands_every_gradient_to_its_reducer_in_reverse_order():
    model = randomised_model(tiny_config(n_layer=2, dropout=0.2))
    idx, targets = batch(model.config)
    _, want = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(1))
    want = {k: g.copy() for k, g in want.items()}
    calls = []
    loss, cache = model.loss_forward(idx, targets, dropout_rng=np.random.default_rng(1))
    model.backward(cache, 1.0, add=lambda name, value, path=0: calls.append((name, path, value.copy())))
    assert not cache                                        # the cache is used up
    order = [(name, path) for name, path, _ in calls]
    # the lm head's half of the tied wte first, its embedding half last; layers in reverse
    assert order[0] == ("wte", 0) and order[-2:] == [("wte", 1), ("wpe", 0)]
    assert order.index(("h.1.ln_1.weight", 0)) < order.index(("h.0.mlp.c_proj.weight", 0))
    assert sorted({name for name, _ in order}) == sorted(model.params)
    summed = {}
    for name, _, value in calls:
        summed[name] = summed.get(name, 0.0) + value
    for name in model.params:
        np.testing.assert_allclose(summed[name], want[name], rtol=1e-12, atol=1e-15)
    # the default reducer adds into model.grads; dloss scales the gradient
    model.flat_grads[...] = 1.0
    _, cache = model.loss_forward(idx, targets, dropout_rng=np.random.default_rng(1))
    model.backward(cache, 0.5)
    np.testing.assert_allclose(model.grads["h.0.mlp.c_fc.weight"], 1.0 + 0.5 * want["h.0.mlp.c_fc.weight"],
                               rtol=1e-12)


def test_use_param_buffer_moves_the_parameters():
    model = GPT(tiny_config(), seed=2)
    values = model.flat_params.copy()
    buffer = np.full(model.num_params, np.nan, dtype=np.float32)
    model.use_param_buffer(buffer)
    assert model.flat_params is buffer
    np.testing.assert_array_equal(buffer, values)
    assert all(np.shares_memory(p, buffer) for p in model.params.values())
    idx, targets = batch(model.config)
    assert model.loss(idx, targets) == GPT(tiny_config(), seed=2).loss(idx, targets)


def test_the_model_imports_only_its_layers():
    # Parallelism (numgpt.parallel) and malloc tuning (the trainer's business) stay out of model.py.
    import ast
    import inspect

    import numgpt.model

    tree = ast.parse(inspect.getsource(numgpt.model))
    imported = {(node.module or "") for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"", "math", "dataclasses", "numpy"}, imported       # "": from . import layers


def test_memory_estimate_names_a_bad_size():
    model = GPT(tiny_config())
    for kwargs, message in (({"batch_size": -4}, r"batch_size must be an integer >= 1, got -4"),
                            ({"batch_size": 2.5}, r"batch_size must be an integer >= 1, got 2.5"),
                            ({"batch_size": 2, "block_size": 10**6}, r"block_size must be an integer from 1 to "
                                                                     r"the model's 8, got 1000000")):
        with pytest.raises(ValueError, match=message):
            model.memory_estimate(**kwargs)
    assert model.memory_estimate(2)["total"] > model.memory_estimate(1)["total"] > 0


def test_gelu_computes_its_derivative_only_when_a_backward_follows(monkeypatch):
    # Training keeps GELU's f'(x) for the backward; evaluation and generation skip it
    # (gelu_forward(derivative=False)), with the same logits.
    import numgpt.layers as L

    model = randomised_model(tiny_config())
    idx = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 5))
    asked = []
    real = L.gelu_forward

    def recording(x, derivative=True):
        asked.append(derivative)
        return real(x, derivative=derivative)

    monkeypatch.setattr(L, "gelu_forward", recording)
    logits = model.forward(idx)
    assert asked == [False] * model.config.n_layer
    asked.clear()
    model.loss_and_grads(idx, idx)
    assert asked == [True] * model.config.n_layer
    asked.clear()
    cache = model.new_kv_cache(2)
    stepped = model.forward_step(idx, cache)
    assert asked == [False] * model.config.n_layer
    np.testing.assert_allclose(stepped, logits, rtol=1e-10, atol=1e-12)


def test_a_config_beyond_any_address_space_is_named_not_a_numpy_error():
    config = GPTConfig(vocab_size=10**30, block_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ValueError, match=r"vocab_size 1000000000000000000000000000000.*more than an address space"):
        GPT(config)
