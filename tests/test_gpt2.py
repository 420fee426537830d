"""Loading and saving GPT-2 weights in the Hugging Face layout (numgpt.gpt2).

Every test makes its own small checkpoint; nothing is downloaded.  The two
tests at the end compare with transformers itself and run only where
transformers and torch are installed.
"""

import json
import os
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt.gpt2 import gpt2_mismatch, is_gpt2_path, load_gpt2, load_gpt2_tokenizer, save_gpt2
from numgpt.model import GPT, GPTConfig, param_layout
from numgpt.safetensors import (bf16_bits_to_float32, float32_to_bf16_bits, read_safetensors,
                                write_safetensors)

TINY = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=8)


def random_model(config=TINY, dtype=np.float32, seed=0):
    """A GPT whose every parameter (biases and layer norms too) is random, so a
    swapped or skipped tensor cannot go unnoticed."""
    model = GPT(config, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    model.flat_params[...] = rng.standard_normal(model.num_params) * 0.3
    return model


def random_ids(config=TINY, T=None, seed=0):
    T = config.block_size if T is None else T
    return np.random.default_rng(seed).integers(0, config.vocab_size, (2, T))


def file_name(name):
    return {"wte": "wte.weight", "wpe": "wpe.weight"}.get(name, name)


def write_config(directory, **overrides):
    config = {"model_type": "gpt2", "vocab_size": TINY.vocab_size, "n_positions": TINY.block_size,
              "n_ctx": TINY.block_size, "n_layer": TINY.n_layer, "n_head": TINY.n_head,
              "n_embd": TINY.n_embd, "activation_function": "gelu_new",
              "layer_norm_epsilon": 1e-5, "attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1}
    config.update(overrides)
    config = {k: v for k, v in config.items() if v is not None}
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def hf_style_dir(directory, model, stored="F32", prefix="transformer.", extra=None):
    """Write ``model`` as transformers would (prefixed names, mask buffers, a tied
    lm_head) with the weights stored as F16, BF16 or F32."""
    tensors = {}
    for name, value in model.params.items():
        tensors[prefix + file_name(name)] = value.astype(np.float16 if stored == "F16" else np.float32)
    T = model.config.block_size
    for i in range(model.config.n_layer):
        tensors[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((T, T), dtype=bool))[None, None]
        tensors[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, dtype=np.float32)
    tensors["lm_head.weight"] = tensors[prefix + "wte.weight"].copy()
    tensors.update(extra or {})
    bf16 = {k for k, v in tensors.items() if v.dtype == np.float32 and v.ndim} if stored == "BF16" else set()
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors, {"format": "pt"}, bf16=bf16)
    write_config(directory, vocab_size=model.config.vocab_size, n_positions=T, n_ctx=T,
                 n_layer=model.config.n_layer, n_head=model.config.n_head, n_embd=model.config.n_embd)
    return tensors


def bits(array):
    """The exact bit patterns, so -0.0 != 0.0 and NaN payloads count."""
    return array.view(np.uint64 if array.dtype == np.float64 else np.uint32)


# ---------------------------------------------------------------------------
# save_gpt2 -> load_gpt2
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    model = random_model(dtype=dtype)
    save_gpt2(model, tmp_path / "gpt")
    loaded = load_gpt2(tmp_path / "gpt", dtype=dtype)
    assert loaded.config == model.config
    assert loaded.dtype == np.dtype(dtype)
    assert [n for n, _ in loaded.layout] == [n for n, _ in model.layout]
    np.testing.assert_array_equal(bits(loaded.flat_params), bits(model.flat_params))
    ids = random_ids()
    np.testing.assert_array_equal(loaded.forward(ids), model.forward(ids))


@given(n_layer=st.integers(1, 2), n_head=st.integers(1, 3), head_dim=st.integers(1, 4),
       vocab=st.integers(1, 20), block=st.integers(1, 8), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_round_trip_property(tmp_path_factory, n_layer, n_head, head_dim, vocab, block, seed, dtype):
    config = GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=n_head,
                       n_embd=n_head * head_dim)
    model = random_model(config, dtype, seed)
    directory = tmp_path_factory.mktemp("round_trip")   # a fresh one per example
    save_gpt2(model, directory)
    loaded = load_gpt2(directory, dtype=dtype)
    assert loaded.config == config
    np.testing.assert_array_equal(bits(loaded.flat_params), bits(model.flat_params))


def test_saved_safetensors_has_published_names_shapes_and_pt_metadata(tmp_path):
    model = random_model()
    save_gpt2(model, tmp_path)
    tensors, metadata = read_safetensors(tmp_path / "model.safetensors")
    assert metadata == {"format": "pt"}
    expected = {file_name(name): shape for name, shape in param_layout(TINY)}
    assert {name: tuple(t.shape) for name, t in tensors.items()} == expected
    # GPT-2's own spelling, no prefix, no separate output layer
    assert {"wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.1.mlp.c_proj.bias",
            "ln_f.bias"} <= set(tensors)
    assert tensors["h.0.attn.c_attn.weight"].shape == (8, 24)       # Conv1D: (in, out)
    assert tensors["h.0.mlp.c_fc.weight"].shape == (8, 32)
    assert all(t.dtype == np.float32 for t in tensors.values())
    np.testing.assert_array_equal(tensors["wte.weight"], model.params["wte"])


def test_saved_config_json_has_gpt2_fields(tmp_path):
    model = random_model(GPTConfig(vocab_size=50257, block_size=16, n_layer=2, n_head=2,
                                   n_embd=8, dropout=0.1))
    save_gpt2(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["vocab_size"], config["n_positions"], config["n_ctx"]) == (50257, 16, 16)
    assert (config["n_layer"], config["n_head"], config["n_embd"]) == (2, 2, 8)
    assert config["n_inner"] is None
    assert config["activation_function"] == "gelu_new"
    assert config["layer_norm_epsilon"] == 1e-5
    assert config["attn_pdrop"] == config["resid_pdrop"] == config["embd_pdrop"] == 0.1
    assert config["bos_token_id"] == config["eos_token_id"] == 50256     # <|endoftext|>
    assert config["tie_word_embeddings"] is True
    assert config["scale_attn_weights"] is True
    assert config["use_cache"] is True
    assert config["initializer_range"] == 0.02
    assert config["torch_dtype"] == "float32"


def test_loaded_model_has_requested_dropout_not_the_checkpoints(tmp_path):
    save_gpt2(random_model(GPTConfig(50, 16, 2, 2, 8, dropout=0.1)), tmp_path)
    assert load_gpt2(tmp_path).config.dropout == 0.0
    assert load_gpt2(tmp_path, dropout=0.2).config.dropout == 0.2


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
def test_save_in_half_precision(tmp_path, stored):
    model = random_model()
    save_gpt2(model, tmp_path, dtype=stored)
    _, metadata = read_safetensors(tmp_path / "model.safetensors")
    assert metadata == {"format": "pt"}
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == stored
    loaded = load_gpt2(tmp_path)
    for name, value in model.params.items():
        if stored == "float16":
            rounded = value.astype(np.float16).astype(np.float32)
        else:
            rounded = bf16_bits_to_float32(float32_to_bf16_bits(value))
        np.testing.assert_array_equal(loaded.params[name], rounded, err_msg=name)


def test_save_replaces_an_earlier_model_only_when_asked(tmp_path):
    first = random_model(seed=1)
    save_gpt2(first, tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 49}')     # as transformers writes
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    model = random_model(GPTConfig(30, 8, 1, 1, 4), seed=2)
    with pytest.raises(ValueError, match=r"already holds a model \(config.json, model.safetensors\); save into "
                                         r"another directory, or pass overwrite=True"):
        save_gpt2(model, tmp_path)          # e.g. a GPT-2 download: its weights are not lost to a slip
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
    save_gpt2(model, tmp_path, overwrite=True)
    np.testing.assert_array_equal(load_gpt2(tmp_path).flat_params, model.flat_params)
    # no temp files, and the old model's generation settings (its eos id) are gone with it
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_saved_end_of_text_id_is_the_tokenizers_or_none(tmp_path):
    from numgpt.bpe import train_bpe

    def eos(directory):
        config = json.loads((directory / "config.json").read_text())
        assert config["bos_token_id"] == config["eos_token_id"]
        return config["eos_token_id"]

    save_gpt2(random_model(), tmp_path / "plain")                   # 50 tokens, no tokenizer: no guess
    assert eos(tmp_path / "plain") is None
    tokenizer = train_bpe("the cat sat on the mat " * 40, 300)       # stops early: fewer merges to learn
    V = tokenizer.vocab_size
    model = random_model(GPTConfig(vocab_size=V, block_size=16, n_layer=1, n_head=2, n_embd=8))
    save_gpt2(model, tmp_path / "bpe", tokenizer=tokenizer)
    assert eos(tmp_path / "bpe") == tokenizer.eot_token is not None
    assert load_gpt2_tokenizer(tmp_path / "bpe") == tokenizer      # written beside the weights
    with pytest.raises(ValueError, match=f"the tokenizer has {V} tokens but the model's vocabulary is 50"):
        save_gpt2(random_model(), tmp_path / "wrong", tokenizer=tokenizer)
    with pytest.raises(TypeError, match="tokenizer must be a byte-level BPE tokenizer"):
        save_gpt2(random_model(), tmp_path / "wrong", tokenizer="gpt2")


@pytest.mark.parametrize("choice, shown", [({"norm": "rmsnorm"}, "norm='rmsnorm'"),
                                           ({"position": "rope"}, "position='rope'"),
                                           ({"mlp": "relu2"}, "mlp='relu2'"), ({"mlp": "swiglu"}, "mlp='swiglu'"),
                                           ({"qk_norm": True}, "qk_norm=True"),
                                           ({"tie_head": False}, "tie_head=False")])
def test_save_refuses_every_architecture_but_gpt2s(tmp_path, choice, shown):
    config = GPTConfig(50, 16, 2, 2, 8, **choice)
    assert gpt2_mismatch(config) == [shown]
    with pytest.raises(ValueError, match=rf"save_gpt2: the Hugging Face GPT-2 layout holds only GPT-2's "
                                         rf"architecture; this model has {re.escape(shown)} \(the gpt2 preset"):
        save_gpt2(GPT(config), tmp_path / "a")
    assert not (tmp_path / "a" / "model.safetensors").exists()


def test_gpt2_mismatch_lists_every_choice_that_differs():
    from numgpt.model import PRESETS

    assert gpt2_mismatch(TINY) == [] and gpt2_mismatch(PRESETS["gpt2"]) == []
    assert gpt2_mismatch(PRESETS["modern"]) == ["norm='rmsnorm'", "position='rope'", "mlp='relu2'",
                                                 "qk_norm=True", "tie_head=False"]
    assert gpt2_mismatch({**PRESETS["gpt2"], "bias": False}) == []      # biases: save_gpt2's own message


def test_save_refuses_bias_free_models_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="bias=False"):
        save_gpt2(GPT(GPTConfig(50, 16, 2, 2, 8, bias=False)), tmp_path / "a")
    assert not (tmp_path / "a" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="dtype"):
        save_gpt2(random_model(), tmp_path / "b", dtype="int8")
    with pytest.raises(TypeError, match="numgpt GPT"):
        save_gpt2({"wte": np.zeros((2, 2))}, tmp_path / "c")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        save_gpt2(random_model(), tmp_path / "file")


# ---------------------------------------------------------------------------
# Directories written by others
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("stored", ["F16", "BF16", "F32"])
def test_loads_transformers_style_directory(tmp_path, stored):
    source = random_model()
    hf_style_dir(tmp_path, source, stored=stored)
    loaded = load_gpt2(tmp_path)

    # the expected model holds the same weights after the same rounding
    expected = GPT(TINY)
    tensors, _ = read_safetensors(tmp_path / "model.safetensors")
    expected.load_state_dict({name: tensors["transformer." + file_name(name)].astype(np.float32)
                              for name in expected.params})
    np.testing.assert_array_equal(loaded.flat_params, expected.flat_params)
    if stored == "F32":
        np.testing.assert_array_equal(loaded.flat_params, source.flat_params)
    else:
        tolerance = 1e-2 if stored == "BF16" else 1e-3     # relative precision of the format
        np.testing.assert_allclose(loaded.flat_params, source.flat_params, rtol=tolerance, atol=1e-7)
    ids = random_ids()
    logits = loaded.forward(ids)
    assert logits.shape == (2, 16, 50) and np.isfinite(logits).all()
    np.testing.assert_array_equal(logits, expected.forward(ids))


def test_loads_a_file_that_names_the_tied_matrix_only_lm_head(tmp_path):
    # safetensors.torch.save_model keeps one name for tied tensors, here the head's
    source = random_model()
    tensors = hf_style_dir(tmp_path, source)
    del tensors["transformer.wte.weight"]
    write_safetensors(os.path.join(tmp_path, "model.safetensors"), tensors, {"format": "pt"})
    np.testing.assert_array_equal(load_gpt2(tmp_path).flat_params, source.flat_params)


def test_config_mistakes_name_the_file(tmp_path):
    source = random_model()
    save_gpt2(source, tmp_path)
    where = str(tmp_path / "config.json")
    write_config(tmp_path, n_head=3)
    with pytest.raises(ValueError, match=rf"{where}: .*n_embd=8 must be divisible by n_head=3"):
        load_gpt2(tmp_path)
    # transformers would take one of the two; numgpt refuses to guess which
    write_config(tmp_path, num_attention_heads=4)
    with pytest.raises(ValueError, match=rf"{where}: n_head=2, num_attention_heads=4 name one size with "
                                         rf"different values"):
        load_gpt2(tmp_path)
    write_config(tmp_path, n_ctx=1024)                   # a legacy field transformers ignores: fine
    assert load_gpt2(tmp_path).config == TINY
    # absurd sizes are refused by the tensors before any memory is asked for
    write_config(tmp_path, vocab_size=10**11, n_positions=10**12)
    with pytest.raises(ValueError, match=r"tensor 'wte.weight' has shape \(50, 8\), expected \(100000000000, 8\)"):
        load_gpt2(tmp_path, block_size=16)


def test_a_bad_shard_index_names_the_file(tmp_path):
    source = random_model()
    save_gpt2(source, tmp_path)
    os.rename(tmp_path / "model.safetensors", tmp_path / "model-00001-of-00001.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text("not json")
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: not valid JSON"):
        load_gpt2(tmp_path)


def test_loads_bare_names_as_published(tmp_path):
    source = random_model()
    hf_style_dir(tmp_path, source, prefix="")
    np.testing.assert_array_equal(load_gpt2(tmp_path).flat_params, source.flat_params)


def test_path_may_be_the_safetensors_file(tmp_path):
    source = random_model()
    save_gpt2(source, tmp_path)
    loaded = load_gpt2(tmp_path / "model.safetensors", dtype=np.float64)
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded.flat_params, source.flat_params.astype(np.float64))
    assert is_gpt2_path(tmp_path) and is_gpt2_path(tmp_path / "model.safetensors")
    assert not is_gpt2_path(tmp_path / "config.json")
    assert not is_gpt2_path(tmp_path / "nothing")


def test_loads_sharded_weights(tmp_path):
    source = random_model()
    tensors = {file_name(n): v for n, v in source.params.items()}
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, members in shards.items():
        write_safetensors(tmp_path / shard, {n: tensors[n] for n in members}, {"format": "pt"})
        weight_map.update({n: shard for n in members})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    write_config(tmp_path)
    np.testing.assert_array_equal(load_gpt2(tmp_path).flat_params, source.flat_params)


def test_aliases_and_defaults_in_config(tmp_path):
    source = random_model()
    save_gpt2(source, tmp_path)
    # only the generic names, and no activation or epsilon: GPT2Config's defaults apply
    write_config(tmp_path, n_positions=None, n_layer=None, n_head=None, n_embd=None,
                 activation_function=None, layer_norm_epsilon=None, n_ctx=None,
                 max_position_embeddings=16, num_hidden_layers=2, num_attention_heads=2,
                 hidden_size=8)
    assert load_gpt2(tmp_path).config == TINY
    write_config(tmp_path, n_positions=None)          # n_ctx is the fallback
    assert load_gpt2(tmp_path).config == TINY


# ---------------------------------------------------------------------------
# block_size
# ---------------------------------------------------------------------------


def test_block_size_crops_position_embeddings(tmp_path):
    source = random_model()
    save_gpt2(source, tmp_path)
    short = load_gpt2(tmp_path, block_size=8)
    assert short.config.block_size == 8
    assert short.params["wpe"].shape == (8, 8)
    np.testing.assert_array_equal(short.params["wpe"], source.params["wpe"][:8])
    np.testing.assert_array_equal(short.params["wte"], source.params["wte"])
    ids = random_ids(T=8)
    np.testing.assert_allclose(short.forward(ids), source.forward(ids), rtol=1e-6, atol=1e-6)
    assert load_gpt2(tmp_path, block_size=16).config.block_size == 16


@pytest.mark.parametrize("block_size", [17, 0, -1, 2.5, True])
def test_block_size_beyond_checkpoint_is_refused(tmp_path, block_size):
    save_gpt2(random_model(), tmp_path)
    with pytest.raises(ValueError, match=r"block_size must be an integer in \[1, n_positions=16\]"):
        load_gpt2(tmp_path, block_size=block_size)


# ---------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------


def test_missing_tensor_is_named(tmp_path):
    tensors = {file_name(n): v for n, v in random_model().params.items()}
    del tensors["h.1.mlp.c_fc.bias"]
    write_safetensors(tmp_path / "model.safetensors", tensors, {"format": "pt"})
    write_config(tmp_path)
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): \['h.1.mlp.c_fc.bias'\]"):
        load_gpt2(tmp_path)


def test_unexpected_tensor_is_named(tmp_path):
    # a third layer's tensors in a file whose config says two layers
    hf_style_dir(tmp_path, random_model(), extra={"h.2.ln_1.weight": np.ones(8, np.float32)})
    with pytest.raises(ValueError, match=r"unexpected 1 tensor\(s\): \['h.2.ln_1.weight'\]"):
        load_gpt2(tmp_path)


def test_wrong_shape_names_tensor_expected_and_actual(tmp_path):
    tensors = {file_name(n): v for n, v in random_model().params.items()}
    tensors["h.0.attn.c_attn.weight"] = np.ascontiguousarray(tensors["h.0.attn.c_attn.weight"].T)
    write_safetensors(tmp_path / "model.safetensors", tensors, {"format": "pt"})
    write_config(tmp_path)
    with pytest.raises(ValueError, match=r"'h.0.attn.c_attn.weight' has shape \(24, 8\), expected \(8, 24\)"):
        load_gpt2(tmp_path)


def test_config_disagreeing_with_weights_is_refused(tmp_path):
    save_gpt2(random_model(), tmp_path)
    write_config(tmp_path, vocab_size=51)
    with pytest.raises(ValueError, match=r"'wte.weight' has shape \(50, 8\), expected \(51, 8\)"):
        load_gpt2(tmp_path)


def test_integer_tensor_is_refused(tmp_path):
    tensors = {file_name(n): v for n, v in random_model().params.items()}
    tensors["ln_f.bias"] = np.zeros(8, dtype=np.int32)
    write_safetensors(tmp_path / "model.safetensors", tensors, {"format": "pt"})
    write_config(tmp_path)
    with pytest.raises(ValueError, match="'ln_f.bias' has dtype int32"):
        load_gpt2(tmp_path)


def test_untied_lm_head_is_refused(tmp_path):
    source = random_model()
    hf_style_dir(tmp_path, source, extra={"lm_head.weight": source.params["wte"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        load_gpt2(tmp_path)


def test_prefixed_and_bare_duplicate_is_refused(tmp_path):
    source = random_model()
    hf_style_dir(tmp_path, source, extra={"ln_f.bias": source.params["ln_f.bias"].copy()})
    with pytest.raises(ValueError, match="'ln_f.bias' appears twice"):
        load_gpt2(tmp_path)


@pytest.mark.parametrize("field, value, message", [
    ("activation_function", "relu", "activation_function must be 'gelu_new'"),
    ("activation_function", "gelu", "activation_function must be 'gelu_new'"),
    ("layer_norm_epsilon", 1e-6, "layer_norm_epsilon must be 1e-05"),
    ("n_inner", 24, "n_inner must be null or 4 \\* n_embd = 32"),
    ("scale_attn_weights", False, "scale_attn_weights must be true"),
    ("scale_attn_by_inverse_layer_idx", True, "scale_attn_by_inverse_layer_idx must be false"),
    ("model_type", "gpt_neo", "model_type must be 'gpt2'"),
    ("n_head", 3, "divisible by n_head=3"),
    ("n_layer", "2", "n_layer must be a positive integer"),
])
def test_unsupported_config_is_refused(tmp_path, field, value, message):
    save_gpt2(random_model(), tmp_path)
    write_config(tmp_path, **{field: value})
    with pytest.raises(ValueError, match=message):
        load_gpt2(tmp_path)


def test_gelu_pytorch_tanh_is_the_same_function(tmp_path):
    save_gpt2(random_model(), tmp_path)
    write_config(tmp_path, activation_function="gelu_pytorch_tanh")
    assert load_gpt2(tmp_path).config == TINY


def test_missing_files_say_what_a_gpt2_directory_needs(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_gpt2(tmp_path)
    message = str(info.value)
    assert "config.json" in message and "model.safetensors" in message
    assert "hf download gpt2" in message and "huggingface-cli download gpt2" in message

    save_gpt2(random_model(), tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_gpt2(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_gpt2(tmp_path / "absent")


def test_pickle_weights_only_get_a_hint(tmp_path):
    write_config(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(FileNotFoundError, match="never unpickles"):
        load_gpt2(tmp_path)


def test_other_files_and_bad_json_are_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        load_gpt2(tmp_path / "weights.bin")
    save_gpt2(random_model(), tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        load_gpt2(tmp_path)
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match="config.json: not UTF-8 text, so not a JSON file"):
        load_gpt2(tmp_path)
    save_gpt2(random_model(), tmp_path, overwrite=True)
    with pytest.raises(TypeError, match="float32 or float64"):
        load_gpt2(tmp_path, dtype=np.float16)


# ---------------------------------------------------------------------------
# Tokenizer files beside the weights
# ---------------------------------------------------------------------------


def test_tokenizer_is_none_without_tokenizer_files(tmp_path):
    save_gpt2(random_model(), tmp_path)
    assert load_gpt2_tokenizer(tmp_path) is None


@pytest.mark.parametrize("layout", [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")])
def test_tokenizer_is_read_from_the_directory(tmp_path, layout):
    from numgpt.bpe import BPETokenizer, bytes_to_unicode

    symbols = bytes_to_unicode()
    encoder = {symbols[b]: b for b in range(256)}
    encoder["hi"] = 256
    (tmp_path / layout[0]).write_text(json.dumps(encoder))
    (tmp_path / layout[1]).write_text("#version: 0.2\nh i\n")
    save_gpt2(random_model(), tmp_path)
    for path in (tmp_path, tmp_path / "model.safetensors"):
        tokenizer = load_gpt2_tokenizer(path)
        assert isinstance(tokenizer, BPETokenizer)
        assert tokenizer.vocab_size == 257
        assert tokenizer.encode("hi") == [256]


# ---------------------------------------------------------------------------
# Against transformers itself (optional: only where transformers and torch are installed)
# ---------------------------------------------------------------------------


def _transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    return torch, transformers


def test_transformers_loads_our_directory(tmp_path):
    torch, transformers = _transformers()
    model = random_model()
    save_gpt2(model, tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)
    theirs.eval()
    ids = random_ids()
    with torch.no_grad():
        logits = theirs(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(logits, model.forward(ids), atol=1e-5, rtol=1e-5)


def test_we_load_a_directory_transformers_saved(tmp_path):
    torch, transformers = _transformers()
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=8, n_layer=2, n_head=2,
                                     bos_token_id=49, eos_token_id=49)
    theirs = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():                          # make biases and layer norms non-trivial too
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.eval()
    theirs.save_pretrained(tmp_path)
    ours = load_gpt2(tmp_path)
    assert ours.config == TINY
    ids = random_ids()
    with torch.no_grad():
        logits = theirs(torch.from_numpy(ids)).logits.numpy()
    np.testing.assert_allclose(ours.forward(ids), logits, atol=1e-5, rtol=1e-5)
