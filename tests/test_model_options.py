"""Tests for the architecture choices of numgpt.model (issue #11): each option alone and the presets.

``GPTConfig`` offers RMSNorm (``norm``), rotary positions (``position``), squared
ReLU and SwiGLU MLPs (``mlp``), QK-norm (``qk_norm``) and an untied head
(``tie_head``); the ``gpt2`` and ``modern`` presets combine them. For every
option alone and for the presets, with and without biases where they exist:

* the whole-model gradient of every parameter tensor against float64 finite
  differences, and a few tensors of the modern preset element by element;
  deliberately broken backwards must fail the same check;
* the parameter layout, the config's validation, its dict round trip, and
  ``preset()`` / ``is_gpt2()``;
* the backward's hand-over of every gradient to its reducer;
* the KV-cache path against the full forward, in every chunking (RoPE must get
  each chunk's position offset), and what RoPE makes of positions;
* the logits, loss and every gradient against an independent float64
  PyTorch reference (tests/torch_reference.py) built on torch.autograd.
"""

import collections
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numgpt.model as model_module
from numgpt import layers as L
from numgpt.gradcheck import adjoint_check, numerical_gradient, rel_error
from numgpt.model import GPT, PRESETS, GPTConfig, param_layout, qk_backward, qk_forward, swiglu_hidden

from test_model import (RTOL, _check_every_tensor, assert_every_slot_overwritten, batch, dropout_loss_of, loss_of,
                        randomised_model, tiny_config)

# Each option alone (with and without biases), then the presets. ``bias`` is explicit in every case.
_OPTIONS = {
    "rmsnorm": {"norm": "rmsnorm"},
    "rope": {"position": "rope"},
    "relu2": {"mlp": "relu2"},
    "swiglu": {"mlp": "swiglu"},
    "qk_norm": {"qk_norm": True},
    "untied": {"tie_head": False},
    "qk_norm+rope": {"qk_norm": True, "position": "rope"},
}
CASES = {f"{name}-{'bias' if bias else 'nobias'}": {**options, "bias": bias}
         for name, options in _OPTIONS.items() for bias in (True, False)}
CASES.update({
    "gpt2": dict(PRESETS["gpt2"]),
    "modern": dict(PRESETS["modern"]),
    "modern+swiglu": {**PRESETS["modern"], "mlp": "swiglu"},
    "modern+bias": {**PRESETS["modern"], "bias": True},
})
case_ids = pytest.mark.parametrize("case", list(CASES))


def case_config(case, **sizes):
    return tiny_config(**{**CASES[case], **sizes})


def fd_step(config):
    """The finite-difference step and stencil for the whole-model check of ``config``."""
    # Squared ReLU's second derivative jumps from 0 to 2 at 0: the order-4 stencil with its default
    # step 1e-3 assumes a smooth function, and a pre-activation that it carries across 0 leaves
    # relative errors of 3e-5..5e-4 on these models. A step of 1e-6 seldom straddles a kink, and
    # order 2 then errs by h^2 plus round-off only (worst relative error measured 6e-8..2e-7).
    return {"h": 1e-6, "order": 2} if config.mlp == "relu2" else {}


# --- the whole model against finite differences -----------------------------------------------------

@case_ids
def test_whole_model_gradient_every_tensor(case):
    model = randomised_model(case_config(case))
    idx, targets = batch(model.config, ignore_fraction=0.3)
    grads = _check_every_tensor(model, idx, targets, **fd_step(model.config))
    assert set(grads) == set(model.params)


@pytest.mark.parametrize("name", ["lm_head.weight", "h.1.ln_1.weight", "h.0.ln_2.weight", "ln_f.weight",
                                  "h.0.attn.c_attn.weight"])
def test_modern_preset_gradient_elementwise(name):
    model = randomised_model(tiny_config(**PRESETS["modern"]))
    assert model.config.qk_norm and model.config.position == "rope" and model.config.norm == "rmsnorm"
    idx, targets = batch(model.config)
    _, grads = model.loss_and_grads(idx, targets)
    analytic = grads[name].copy()
    # Squared ReLU again (see fd_step). Element by element the differences are smaller than along a
    # random direction, so round-off weighs more: h = 1e-5 (order 2) balances it against h^2.
    numeric = numerical_gradient(loss_of(model, name, idx, targets), model.params[name].copy(), h=1e-5, order=2)
    assert np.abs(analytic).min() > 0 or name == "lm_head.weight"      # rows of absent ids are zero there
    assert rel_error(analytic, numeric) < RTOL, name


@pytest.mark.parametrize("case", ["modern", "modern+swiglu"])
def test_modern_preset_gradient_with_dropout(case):
    model = randomised_model(case_config(case, dropout=0.3))
    idx, targets = batch(model.config)
    seed = 5

    def f_for(name):
        return dropout_loss_of(model, name, idx, targets, seed)

    loss, grads = model.loss_and_grads(idx, targets, dropout_rng=np.random.default_rng(seed))
    assert abs(loss - model.loss(idx, targets)) > 1e-4                 # dropout did run
    grads = {k: g.copy() for k, g in grads.items()}
    rng = np.random.default_rng(3)
    for name in model.params:
        _, _, rel = adjoint_check(f_for(name), model.params[name].copy(), 1.0, grads[name], rng=rng,
                                  **fd_step(model.config))
        assert rel < RTOL, name


def _rel_errors(model, idx, targets, names, **fd):
    """Adjoint-check relative error of each parameter in ``names``."""
    _, grads = model.loss_and_grads(idx, targets)
    grads = {k: g.copy() for k, g in grads.items()}
    rng = np.random.default_rng(7)
    return {name: adjoint_check(loss_of(model, name, idx, targets), model.params[name].copy(), 1.0, grads[name],
                                rng=rng, **fd)[2]
            for name in names}


def _qk_backward_without_rope(dout, cache):
    n_head, caches = cache
    return qk_backward(dout, (n_head, [(norm_cache, None) for norm_cache, _ in caches]))


_relu_squared_backward = L.relu_squared_backward      # the real one, before any monkeypatch


def _relu2_backward_without_the_2(dout, cache):
    return _relu_squared_backward(dout, cache) / 2.0


def _swiglu_backward_swapped(dout, cache):
    dgate, dup = L.swiglu_backward(dout, cache)
    return np.concatenate([dup, dgate], axis=-1)


@pytest.mark.parametrize("case, patch", [
    ("qk_norm+rope-bias", ("qk_backward", _qk_backward_without_rope)),
    ("relu2-bias", ("relu2", _relu2_backward_without_the_2)),
    ("swiglu-bias", ("swiglu", _swiglu_backward_swapped)),
])
def test_a_broken_backward_fails_the_finite_difference_check(case, patch, monkeypatch):
    # The negative control of test_whole_model_gradient_every_tensor: the same check, with one
    # backward broken, fails on the tensors upstream of the break and still passes downstream of it.
    model = randomised_model(case_config(case))
    idx, targets = batch(model.config, ignore_fraction=0.3)
    what, broken = patch
    if what == "qk_backward":
        monkeypatch.setattr(model_module, "qk_backward", broken)
    elif what == "relu2":
        monkeypatch.setattr(L, "relu_squared_backward", broken)
    else:
        monkeypatch.setattr(model_module, "_swiglu_packed_backward", broken)
    upstream = ["h.1.attn.c_attn.weight", "h.0.mlp.c_fc.weight", "wte"]
    if what != "qk_backward":
        upstream.append("h.1.mlp.c_fc.weight")
    downstream = ["ln_f.weight", "h.1.mlp.c_proj.weight"]
    rel = _rel_errors(model, idx, targets, upstream + downstream, **fd_step(model.config))
    assert all(rel[name] > 1e-3 for name in upstream), rel
    assert all(rel[name] < RTOL for name in downstream), rel
    with pytest.raises(AssertionError, match="finite differences"):
        _check_every_tensor(model, idx, targets, **fd_step(model.config))


# --- parameter layout -------------------------------------------------------------------------------------

def _shapes(config):
    return dict(param_layout(config))


def test_swiglu_hidden_keeps_the_mlp_near_gpt2s_parameter_count():
    assert swiglu_hidden(8) == 24 and swiglu_hidden(128) == 344 and swiglu_hidden(768) == 2048
    for C in (8, 64, 128, 768, 1024):
        H = swiglu_hidden(C)
        assert H % 8 == 0 and 8 * C / 3 <= H < 8 * C / 3 + 8
        assert abs(3 * C * H - 8 * C * C) <= 3 * C * 8          # three C x H matrices vs two C x 4C


@pytest.mark.parametrize("bias", [True, False])
def test_layout_of_each_option_against_gpt2s(bias):
    C, V, Tm = 8, 11, 8
    gpt2 = _shapes(tiny_config(bias=bias))
    ln_biases = {n for n in gpt2 if n.endswith(("ln_1.bias", "ln_2.bias")) or n == "ln_f.bias"}
    assert len(ln_biases) == (5 if bias else 0)

    assert _shapes(tiny_config(bias=bias, position="rope")) == {n: s for n, s in gpt2.items() if n != "wpe"}
    assert _shapes(tiny_config(bias=bias, norm="rmsnorm")) == {n: s for n, s in gpt2.items() if n not in ln_biases}
    assert _shapes(tiny_config(bias=bias, qk_norm=True)) == gpt2               # QK-norm has no weight
    assert _shapes(tiny_config(bias=bias, mlp="relu2")) == gpt2
    untied = tiny_config(bias=bias, tie_head=False)
    assert param_layout(untied)[-1] == ("lm_head.weight", (V, C))
    assert _shapes(untied) == {**gpt2, "lm_head.weight": (V, C)}

    H = swiglu_hidden(C)
    swiglu = _shapes(tiny_config(bias=bias, mlp="swiglu"))
    changed = {}
    for i in range(2):
        changed[f"h.{i}.mlp.c_fc.weight"] = (C, 2 * H)
        changed[f"h.{i}.mlp.c_proj.weight"] = (H, C)
        if bias:
            changed[f"h.{i}.mlp.c_fc.bias"] = (2 * H,)
    assert swiglu == {**gpt2, **changed}
    assert gpt2["wpe"] == (Tm, C)


def test_layout_of_the_modern_preset_in_full():
    C, V = 8, 11
    model = GPT(tiny_config(**PRESETS["modern"]))
    H = 4 * C                                                    # squared ReLU keeps GPT-2's 4C
    expected = [("wte", (V, C))]
    for i in range(2):
        h = f"h.{i}."
        expected += [(h + "ln_1.weight", (C,)), (h + "attn.c_attn.weight", (C, 3 * C)),
                     (h + "attn.c_proj.weight", (C, C)), (h + "ln_2.weight", (C,)),
                     (h + "mlp.c_fc.weight", (C, H)), (h + "mlp.c_proj.weight", (H, C))]
    expected += [("ln_f.weight", (C,)), ("lm_head.weight", (V, C))]
    assert model.layout == expected
    assert [(n, p.shape) for n, p in model.params.items()] == expected
    assert model.num_params == 2 * V * C + 2 * (2 * C + 3 * C * C + C * C + 2 * C * H) + C
    assert model.num_params_report() == model.num_params            # no wpe to leave out


@case_ids
def test_num_params_is_the_sum_of_the_layout_and_the_views_tile_the_buffer(case):
    model = GPT(case_config(case))
    assert model.num_params == sum(int(np.prod(s)) for _, s in param_layout(model.config))
    assert model.flat_params.size == model.flat_grads.size == model.num_params
    assert sum(p.size for p in model.params.values()) == model.num_params
    assert all(np.shares_memory(p, model.flat_params) for p in model.params.values())
    assert [n for n, _ in model.layout] == list(model.params) == list(model.grads)


def test_rmsnorm_and_lm_head_initialisation():
    model = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32, **PRESETS["modern"]), seed=3)
    for name in ("h.0.ln_1.weight", "h.1.ln_2.weight", "ln_f.weight"):
        assert (model.params[name] == 1.0).all(), name
    head = model.params["lm_head.weight"]
    assert float(head.std()) == pytest.approx(0.02, rel=0.1)
    assert not np.array_equal(head, model.params["wte"])             # untied: its own values


# --- configuration -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, bad", [
    ("norm", "LayerNorm"), ("norm", "batchnorm"), ("norm", None),
    ("position", "absolute"), ("position", "RoPE"),
    ("mlp", "geglu"), ("mlp", "GELU"), ("mlp", ""),
    ("qk_norm", 1), ("qk_norm", "yes"), ("qk_norm", None),
    ("tie_head", 0), ("tie_head", "false"),
])
def test_config_rejects_bad_choices_naming_the_field(field, bad):
    with pytest.raises(ValueError, match=rf"GPTConfig\.{field}\b"):
        tiny_config(**{field: bad})


@pytest.mark.parametrize("n_embd, n_head", [(6, 2), (12, 4), (10, 10)])
def test_rope_needs_an_even_head_size(n_embd, n_head):
    with pytest.raises(ValueError, match=r"position.*even"):
        tiny_config(n_embd=n_embd, n_head=n_head, position="rope")
    tiny_config(n_embd=n_embd, n_head=n_head)                         # learned positions do not care


@case_ids
def test_config_dict_round_trip(case):
    config = case_config(case, dropout=0.1)
    d = config.to_dict()
    assert GPTConfig.from_dict(d) == config
    assert GPTConfig.from_dict(json.loads(json.dumps(d))) == config      # what a checkpoint stores
    assert {k: type(v) for k, v in d.items() if k in ("norm", "position", "mlp", "qk_norm", "tie_head")} == \
        {"norm": str, "position": str, "mlp": str, "qk_norm": bool, "tie_head": bool}


def test_config_numpy_bools_become_python_bools_in_the_dict():
    d = tiny_config(qk_norm=np.bool_(True), tie_head=np.bool_(False)).to_dict()
    assert d["qk_norm"] is True and d["tie_head"] is False


def test_an_older_dict_without_the_choices_loads_as_gpt2():
    old = {"vocab_size": 11, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 8, "dropout": 0.0, "bias": True}
    config = GPTConfig.from_dict(old)
    assert config == tiny_config()
    assert (config.norm, config.position, config.mlp, config.qk_norm, config.tie_head) == \
        ("layernorm", "learned", "gelu", False, True)
    assert config.preset() == "gpt2" and config.is_gpt2()
    assert [n for n, _ in param_layout(config)] == [n for n, _ in param_layout(tiny_config(**PRESETS["gpt2"]))]


@pytest.mark.parametrize("case, preset, is_gpt2", [
    ("gpt2", "gpt2", True),
    ("modern", "modern", False),
    ("modern+swiglu", None, False),
    ("modern+bias", None, False),
    ("rmsnorm-bias", None, False),
    ("rope-bias", None, False),
    ("relu2-bias", None, False),
    ("swiglu-bias", None, False),
    ("qk_norm-bias", None, False),
    ("untied-bias", None, False),
])
def test_preset_and_is_gpt2(case, preset, is_gpt2):
    config = case_config(case)
    assert config.preset() == preset
    assert config.is_gpt2() is is_gpt2


def test_gpt2_without_biases_is_gpt2_but_not_the_preset():
    config = tiny_config(bias=False)
    assert config.is_gpt2() and config.preset() is None
    assert tiny_config().preset() == "gpt2"
    assert tiny_config(**PRESETS["modern"]).preset() == "modern"


# --- the backward's reducer ----------------------------------------------------------------------------------

@case_ids
def test_backward_hands_every_gradient_to_its_reducer(case):
    model = randomised_model(case_config(case))
    c = model.config
    idx, targets = batch(c)
    _, want = model.loss_and_grads(idx, targets)
    want = {k: g.copy() for k, g in want.items()}
    calls = []
    _, cache = model.loss_forward(idx, targets)
    model.backward(cache, 1.0, add=lambda name, value, path=0: calls.append((name, path, value.copy())))
    assert not cache
    order = [(name, path) for name, path, _ in calls]
    counts = collections.Counter(name for name, _ in order)
    # every parameter once, the tied wte twice (its lm-head path 0 first, its embedding path 1 last)
    assert counts == {name: 2 if (name == "wte" and c.tie_head) else 1 for name in model.params}
    wte_paths = [path for name, path in order if name == "wte"]
    assert wte_paths == ([0, 1] if c.tie_head else [0])
    assert order[0] == ("wte", 0) if c.tie_head else order[0] == ("lm_head.weight", 0)
    embedding_calls = [("wte", 1 if c.tie_head else 0)] + ([("wpe", 0)] if c.position == "learned" else [])
    assert order[-len(embedding_calls):] == embedding_calls
    assert order.index(("h.1.ln_1.weight", 0)) < order.index(("h.0.mlp.c_proj.weight", 0))
    summed = {}
    for name, _, value in calls:
        summed[name] = summed.get(name, 0.0) + value
    for name in model.params:
        np.testing.assert_allclose(summed[name], want[name], rtol=1e-12, atol=1e-15, err_msg=name)


@case_ids
def test_every_gradient_slot_is_overwritten_without_accumulate(case):
    model = randomised_model(case_config(case))
    idx, targets = batch(model.config)
    assert_every_slot_overwritten(model, idx, targets)


# --- dtypes ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["modern", "modern+swiglu"])
def test_modern_preset_preserves_dtype(case, dtype):
    model = GPT(case_config(case), dtype=dtype)
    idx, targets = batch(model.config)
    logits = model.forward(idx)
    assert logits.dtype == dtype and logits.shape == (2, 6, 11)
    assert model.forward(idx, last_only=True).dtype == dtype
    loss, grads = model.loss_and_grads(idx, targets)
    assert isinstance(loss, float) and np.isfinite(loss)
    assert model.flat_grads.dtype == dtype
    assert all(g.dtype == dtype for g in grads.values())
    assert np.isfinite(model.flat_grads).all() and np.abs(model.flat_grads).max() > 0
    assert model.forward_step(idx, model.new_kv_cache(2)).dtype == dtype
    assert model.attention_maps(idx).dtype == dtype


def test_float32_and_float64_agree_on_the_modern_preset():
    wide = randomised_model(tiny_config(**PRESETS["modern"]))
    narrow = GPT(wide.config, dtype=np.float32)
    narrow.flat_params[...] = wide.flat_params
    idx, targets = batch(wide.config)
    np.testing.assert_allclose(narrow.forward(idx), wide.forward(idx), rtol=1e-4, atol=1e-4)
    loss64, _ = wide.loss_and_grads(idx, targets)
    loss32, _ = narrow.loss_and_grads(idx, targets)
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    scale = np.abs(wide.flat_grads).max()
    np.testing.assert_allclose(narrow.flat_grads, wide.flat_grads, rtol=0, atol=1e-4 * scale)


# --- the KV cache ---------------------------------------------------------------------------------------------------

def _stepped_logits(model, idx, chunks):
    cache = model.new_kv_cache(idx.shape[0])
    pieces, pos = [], 0
    for t in chunks:
        pieces.append(model.forward_step(idx[:, pos:pos + t], cache))
        pos += t
        assert cache["pos"] == pos
    return np.concatenate(pieces, axis=1)


def _kv_model(config, dtype):
    model = GPT(config, seed=1, dtype=dtype)
    model.flat_params[...] = randomised_model(config, seed=1).flat_params
    return model


@case_ids
@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("chunks", [[8], [1] * 8, [3, 1, 4], [2, 5, 1]])
def test_forward_step_matches_forward(case, dtype, atol, chunks):
    model = _kv_model(case_config(case), dtype)
    idx = np.random.default_rng(0).integers(0, 11, size=(3, sum(chunks)))
    full = model.forward(idx)
    stepped = _stepped_logits(model, idx, chunks)
    assert stepped.dtype == dtype
    # the randomised parameters make logits of order 1..10: atol is a test, not a formality
    assert np.abs(full).max() > 1.0
    np.testing.assert_allclose(stepped, full, rtol=0, atol=atol)


_MODERN_KV = _kv_model(tiny_config(**PRESETS["modern"]), np.float64)


@st.composite
def chunkings(draw):
    T = draw(st.integers(1, 8))
    cuts = sorted(draw(st.sets(st.integers(1, T - 1), max_size=T - 1))) if T > 1 else []
    return [b - a for a, b in zip([0] + cuts, cuts + [T])]


@settings(max_examples=20)
@given(chunks=chunkings(), B=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_forward_step_matches_forward_in_any_chunking_modern(chunks, B, seed):
    idx = np.random.default_rng(seed).integers(0, 11, size=(B, sum(chunks)))
    np.testing.assert_allclose(_stepped_logits(_MODERN_KV, idx, chunks), _MODERN_KV.forward(idx),
                               rtol=0, atol=1e-12)


# --- what RoPE makes of positions ------------------------------------------------------------------------------

def _scores(qkv, n_head):
    """q . k of every head and pair of positions, (B, H, T, T), from a (B, T, 3C) array."""
    B, T, C3 = qkv.shape
    parts = qkv.reshape(B, T, 3, n_head, C3 // 3 // n_head)
    return np.einsum("bthd,bshd->bhts", parts[:, :, 0], parts[:, :, 1])


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("offset", [1, 5, 1000])
def test_rope_scores_depend_on_relative_positions_only(qk_norm, offset):
    rng = np.random.default_rng(offset)
    n_head, T, C = 2, 6, 8
    qkv = rng.standard_normal((2, T, 3 * C))
    at0, _ = qk_forward(qkv, n_head, qk_norm, True, pos=0)
    shifted, _ = qk_forward(qkv, n_head, qk_norm, True, pos=offset)
    unrotated, _ = qk_forward(qkv, n_head, qk_norm, False, pos=0)
    np.testing.assert_array_equal(shifted[..., 2 * C:], qkv[..., 2 * C:])     # values pass unchanged
    assert np.abs(shifted[..., :2 * C] - at0[..., :2 * C]).max() > 0.1        # q and k themselves turn ...
    np.testing.assert_allclose(_scores(shifted, n_head), _scores(at0, n_head), rtol=0, atol=1e-12)  # ... scores don't
    assert np.abs(_scores(at0, n_head) - _scores(unrotated, n_head)).max() > 0.1   # yet RoPE changes them


def _qk_forward_shifted(q_offset, k_offset):
    """``qk_forward`` with queries at ``pos + q_offset`` and keys at ``pos + k_offset``."""
    def shifted(qkv, n_head, qk_norm, rope, pos=0):
        C = qkv.shape[-1] // 3
        out, cache = qk_forward(qkv, n_head, qk_norm, rope, pos + q_offset)
        out_k, _ = qk_forward(qkv, n_head, qk_norm, rope, pos + k_offset)
        out[..., C:2 * C] = out_k[..., C:2 * C]
        return out, cache
    return shifted


@pytest.mark.parametrize("case", ["rope-bias", "modern"])
def test_the_rope_model_is_invariant_to_shifting_every_position(case, monkeypatch):
    # With RoPE and no wpe the model sees positions only through q . k, which depends on the
    # difference of the positions: shifting all of them (queries and keys alike, in the full
    # forward and in the KV-cache step) leaves the logits as they were; shifting the keys alone,
    # which changes every distance, does not.
    model = randomised_model(case_config(case))
    idx, _ = batch(model.config, T=8)
    want = model.forward(idx)
    monkeypatch.setattr(model_module, "qk_forward", _qk_forward_shifted(100, 100))
    np.testing.assert_allclose(model.forward(idx), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_stepped_logits(model, idx, [3, 1, 4]), want, rtol=0, atol=1e-12)
    monkeypatch.setattr(model_module, "qk_forward", _qk_forward_shifted(0, 3))
    assert np.abs(model.forward(idx) - want).max() > 1e-3


def test_rope_alone_makes_a_model_without_wpe_see_token_order(monkeypatch):
    # One layer, no wpe: the last position attends to the set of earlier tokens, so without
    # rotations swapping two earlier tokens cannot change its logits; with RoPE it does.
    model = randomised_model(tiny_config(position="rope", n_layer=1))
    assert "wpe" not in model.params
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    swapped = idx[:, [2, 1, 0, 3, 4, 5]]
    with_rope = model.forward(idx, last_only=True), model.forward(swapped, last_only=True)
    assert np.abs(with_rope[0] - with_rope[1]).max() > 1e-3
    monkeypatch.setattr(model_module, "qk_forward",
                        lambda qkv, n_head, qk_norm, rope, pos=0: qk_forward(qkv, n_head, qk_norm, False, pos))
    np.testing.assert_allclose(model.forward(idx, last_only=True), model.forward(swapped, last_only=True),
                               rtol=0, atol=1e-12)


# --- against an independent PyTorch reference -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("torch")
    import torch_reference
    return torch_reference


def _assert_parity(reference, model, idx, targets):
    logits, loss, grads = model.forward(idx), *model.loss_and_grads(idx, targets)
    ref_logits, ref_loss, ref_grads = reference.logits_loss_and_grads(model, idx, targets)
    np.testing.assert_allclose(logits, ref_logits, rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    assert set(ref_grads) == set(grads)
    for name, g in grads.items():
        scale = np.abs(ref_grads[name]).max()
        assert scale > 0, name
        np.testing.assert_allclose(g, ref_grads[name], rtol=1e-9, atol=1e-12 * scale, err_msg=name)


@case_ids
def test_parity_with_the_pytorch_reference(case, reference):
    model = randomised_model(case_config(case))
    idx, targets = batch(model.config, ignore_fraction=0.3)
    _assert_parity(reference, model, idx, targets)


@pytest.mark.parametrize("case", ["qk_norm+rope-nobias", "modern", "modern+swiglu"])
def test_parity_with_the_pytorch_reference_at_longer_positions(case, reference):
    # Positions up to 63 with head size 8: RoPE's slow pairs turn through visible angles too.
    model = randomised_model(case_config(case, block_size=64, n_embd=16, n_head=2, n_layer=1))
    idx, targets = batch(model.config, B=2, T=64, seed=4)
    _assert_parity(reference, model, idx, targets)
