"""Tests for numgpt.sample: the sampling rules of sample_next, generation with
and without the key/value cache, and generate_text's prompt and stop handling."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from numgpt.model import GPT, GPTConfig
from numgpt.sample import generate, generate_text, sample_next
from numgpt.tokenizers import CharTokenizer

BLOCK = 12


def model_for(vocab_size, dtype=np.float64, seed=0, block_size=BLOCK):
    """A small random model whose predictions are far from uniform (so sampling rules matter)."""
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=16),
                seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed)
    model.flat_params[...] += rng.normal(0, 0.3, model.num_params).astype(dtype)
    return model


logit_rows = hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)),
                        elements=st.floats(-20, 20, allow_nan=False), unique=False)


# --- sample_next ---------------------------------------------------------------------------------

@given(logit_rows)
def test_greedy_is_argmax(logits):
    np.testing.assert_array_equal(sample_next(logits, np.random.default_rng(0), temperature=0),
                                  logits.argmax(axis=-1))


@settings(max_examples=30)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)),
                  elements=st.floats(-20, 20, allow_nan=False), unique=True),
       st.sampled_from([1e-3, 1e-300, 1e-310, 5e-324, np.float32(1e-30)]), st.integers(0, 2**32 - 1))
def test_a_tiny_temperature_is_greedy(logits, temperature, seed):
    # l / T overflows at these temperatures; the limit T -> 0 puts all the mass on the maximum.
    logits[np.arange(len(logits)), logits.argmax(axis=-1)] += 1.0      # a clear maximum in every row
    with np.errstate(invalid="raise"):          # no inf - inf on the way
        ids = sample_next(logits, np.random.default_rng(seed), temperature=temperature)
    np.testing.assert_array_equal(ids, logits.argmax(axis=-1))


@settings(max_examples=30)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12)),
                  elements=st.floats(-20, 20, allow_nan=False), unique=True),
       st.integers(0, 2**32 - 1))
def test_top_k_one_is_argmax(logits, seed):
    # well separated values: no ties (not even after exp), so the most likely id is well defined
    top2 = np.sort(logits, axis=-1)[:, -2:]
    assume(np.all(top2[:, 1] - top2[:, 0] > 1e-6))
    rng = np.random.default_rng(seed)
    np.testing.assert_array_equal(sample_next(logits, rng, temperature=1.0, top_k=1), logits.argmax(axis=-1))
    np.testing.assert_array_equal(sample_next(logits, rng, temperature=1.0, top_p=1e-9),
                                  logits.argmax(axis=-1))


def _draw(logits, n, seed=0, **kwargs):
    """``n`` independent draws from one row of logits, as one batch of ``n`` identical rows."""
    rows = np.tile(np.asarray(logits, dtype=np.float64), (n, 1))
    return sample_next(rows, np.random.default_rng(seed), **kwargs)


def test_top_k_restricts_the_support():
    logits = np.array([0.5, 3.0, -1.0, 2.5, 2.9, 0.0, 1.0])
    draws = _draw(logits, 2000, top_k=3)
    assert set(draws.tolist()) == {1, 3, 4}
    # top_k >= V changes nothing
    assert set(_draw(logits, 3000, top_k=7, temperature=3.0).tolist()) == set(range(7))
    assert set(_draw(logits, 3000, top_k=50, temperature=3.0).tolist()) == set(range(7))


def test_top_k_is_applied_per_row():
    logits = np.array([[5.0, 4.0, 0.0, 0.0], [0.0, 0.0, 4.0, 5.0]])
    rng = np.random.default_rng(0)
    seen = np.array([sample_next(logits, rng, top_k=2) for _ in range(500)])   # (500, 2)
    assert set(seen[:, 0].tolist()) == {0, 1}
    assert set(seen[:, 1].tolist()) == {2, 3}


def test_top_p_keeps_the_smallest_nucleus():
    probs = np.array([0.05, 0.4, 0.1, 0.3, 0.15])         # sorted: 0.4, 0.3, 0.15, 0.1, 0.05
    logits = np.log(probs)
    # 0.4 + 0.3 = 0.7 < 0.75, so the nucleus needs the third token too
    draws = _draw(logits, 4000, top_p=0.75)
    assert set(draws.tolist()) == {1, 3, 4}
    # and renormalises inside it
    freq = np.bincount(draws, minlength=5)[[1, 3, 4]] / len(draws)
    np.testing.assert_allclose(freq, np.array([0.4, 0.3, 0.15]) / 0.85, atol=0.03)
    assert set(_draw(logits, 2000, top_p=0.65).tolist()) == {1, 3}
    assert set(_draw(logits, 2000, top_p=0.3).tolist()) == {1}
    assert set(_draw(logits, 4000, top_p=1.0).tolist()) == set(range(5))


def test_sampling_frequencies_follow_softmax_and_temperature():
    logits = np.array([1.0, 2.0, 0.0, 1.5])
    n = 20_000
    for temperature in (1.0, 0.5, 2.0):
        expected = np.exp(logits / temperature)
        expected /= expected.sum()
        freq = np.bincount(_draw(logits, n, temperature=temperature, seed=3), minlength=4) / n
        # 4 standard errors of a binomial proportion
        assert np.all(np.abs(freq - expected) < 4 * np.sqrt(expected * (1 - expected) / n) + 1e-3), temperature
    # lower temperature concentrates on the argmax
    cold = np.mean(_draw(logits, 3000, temperature=0.2) == 1)
    hot = np.mean(_draw(logits, 3000, temperature=5.0) == 1)
    assert cold > 0.9
    assert hot < 0.4


def test_never_samples_a_zero_probability_token():
    logits = np.array([[0.0, -np.inf, 0.0, -np.inf, 1.0]])
    rng = np.random.default_rng(0)
    draws = {int(sample_next(logits, rng)[0]) for _ in range(2000)}
    assert draws == {0, 2, 4}


def test_same_seed_same_samples():
    logits = np.random.default_rng(0).standard_normal((3, 20))
    a = [sample_next(logits, np.random.default_rng(9), temperature=0.9, top_k=10, top_p=0.9) for _ in range(5)]
    b = [sample_next(logits, np.random.default_rng(9), temperature=0.9, top_k=10, top_p=0.9) for _ in range(5)]
    np.testing.assert_array_equal(a, b)
    rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
    seq1 = [sample_next(logits, rng1) for _ in range(50)]
    seq2 = [sample_next(logits, rng2) for _ in range(50)]
    np.testing.assert_array_equal(seq1, seq2)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": -2}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"top_k": True}, "top_k"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.1}, "top_p"),
])
def test_bad_sampling_args(kwargs, match):
    logits = np.zeros((1, 5))
    with pytest.raises(ValueError, match=match):
        sample_next(logits, np.random.default_rng(0), **kwargs)
    model = model_for(5)
    with pytest.raises(ValueError, match=match):
        generate(model, np.zeros((1, 2), dtype=np.int64), 3, rng=np.random.default_rng(0), **kwargs)


def test_bad_generate_args():
    model = model_for(5)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator .* got int"):
        generate(model, np.zeros((1, 2), dtype=np.int64), 2, rng=0)
    with pytest.raises(ValueError, match="idx"):
        generate(model, np.zeros(3, dtype=np.int64), 2)
    with pytest.raises(ValueError, match="idx"):
        generate(model, np.zeros((1, 0), dtype=np.int64), 2)
    with pytest.raises(ValueError, match="idx"):
        generate(model, np.zeros((1, 2)), 2)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate(model, np.zeros((1, 2), dtype=np.int64), bad)


# --- generate -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 1.0},
                                      {"temperature": 0.8, "top_k": 4}, {"temperature": 1.2, "top_p": 0.8}])
@pytest.mark.parametrize("prompt_len", [1, 5])
def test_cache_gives_the_same_ids_as_recomputing(sampling, prompt_len):
    model = model_for(9)
    prompt = np.random.default_rng(1).integers(0, 9, size=(3, prompt_len))
    n = BLOCK + 1 - prompt_len      # the context fills the block exactly at the last prediction
    cached = generate(model, prompt, n, rng=np.random.default_rng(5), use_cache=True, **sampling)
    plain = generate(model, prompt, n, rng=np.random.default_rng(5), use_cache=False, **sampling)
    assert cached.shape == (3, BLOCK + 1)
    np.testing.assert_array_equal(cached, plain)
    np.testing.assert_array_equal(cached[:, :prompt_len], prompt)


def test_greedy_generation_is_the_argmax_of_forward():
    model = model_for(9)
    prompt = np.array([[1, 2, 3]])
    out = generate(model, prompt, 6, temperature=0)
    for n in range(3, 9):
        assert out[0, n] == model.forward(out[:, :n])[0, -1].argmax()


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_beyond_block_size(use_cache):
    model = model_for(7, dtype=np.float32)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    n = 3 * BLOCK + 5
    out = generate(model, prompt, n, rng=np.random.default_rng(0), use_cache=use_cache)
    assert out.shape == (2, 3 + n)
    assert out.dtype == np.int64
    assert ((out >= 0) & (out < 7)).all()
    np.testing.assert_array_equal(out[:, :3], prompt)
    # a prompt already longer than the block works too
    long_prompt = np.tile(np.arange(7), 3)[None, :]
    out = generate(model, long_prompt, 5, temperature=0, use_cache=use_cache)
    assert out.shape == (1, 26)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("block", [BLOCK, 3, 1])     # 1: a bigram model, whose refill keeps one token
def test_every_prediction_uses_the_documented_context(monkeypatch, use_cache, block):
    # Record the logits each step samples from and recompute them with forward() over the
    # context the module docstring promises: without the cache, the last block_size tokens;
    # with it, everything since the last refill, a refill keeping the last block_size // 2
    # tokens (at least one) whenever the cache is full.
    import numgpt.sample as sample_module

    model = model_for(7, block_size=block)
    seen = []
    original = sample_module.sample_next

    def recording(logits, *args, **kwargs):
        seen.append(np.array(logits))
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(sample_module, "sample_next", recording)
    prompt = np.array([[1, 2, 3], [4, 4, 0]])[:, -block:]
    n_new = 2 * block + 7
    out = generate(model, prompt, n_new, rng=np.random.default_rng(0), use_cache=use_cache)
    assert len(seen) == n_new
    start = 0                       # first position held by the cache
    for step, logits in enumerate(seen):
        n = prompt.shape[1] + step  # tokens before the one being predicted
        if use_cache:
            if n - start > block:   # the cache is full: refill from the last half block
                start = n - max(1, block // 2)
            lo = start
        else:
            lo = max(0, n - block)
        expected = model.forward(out[:, lo:n])[:, -1]
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-12, err_msg=f"step {step}")


def test_generate_stop_fn_ends_early():
    model = model_for(5)
    calls = []

    def stop(generated):
        calls.append(generated.shape[1])
        return generated.shape[1] >= 4

    out = generate(model, np.array([[0]]), 50, rng=np.random.default_rng(0), stop_fn=stop)
    assert out.shape == (1, 5)
    assert calls == [1, 2, 3, 4]


def test_generate_seeded_is_reproducible():
    model = model_for(9, dtype=np.float32)
    prompt = np.array([[1, 2]])
    a = generate(model, prompt, 30, rng=np.random.default_rng(11))
    b = generate(model, prompt, 30, rng=np.random.default_rng(11))
    c = generate(model, prompt, 30, rng=np.random.default_rng(12))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# --- generate_text ----------------------------------------------------------------------------------

TOKENIZER = CharTokenizer(" abcde\n")         # "\n" is not id 0


def test_generate_text_returns_prompt_plus_continuation():
    model = model_for(TOKENIZER.vocab_size)
    texts = generate_text(model, TOKENIZER, "ab c", num_samples=3, max_new_tokens=10, seed=0)
    assert len(texts) == 3
    for text in texts:
        assert text.startswith("ab c") and len(text) == 14
        assert set(text) <= set(TOKENIZER.chars)
    assert texts == generate_text(model, TOKENIZER, "ab c", num_samples=3, max_new_tokens=10, seed=0)


def test_generate_text_cache_and_recompute_agree_within_the_block():
    model = model_for(TOKENIZER.vocab_size)
    a = generate_text(model, TOKENIZER, "abc", max_new_tokens=BLOCK - 2, seed=4, use_cache=True)
    b = generate_text(model, TOKENIZER, "abc", max_new_tokens=BLOCK - 2, seed=4, use_cache=False)
    assert a == b


@pytest.mark.parametrize("stop", ["a", "cd", ["e", "b"]])
def test_stop_strings_cut_the_output(stop):
    model = model_for(TOKENIZER.vocab_size, seed=2)
    model.flat_params[...] *= 0.2                  # near-uniform predictions: every character shows up
    full = generate_text(model, TOKENIZER, "dd", max_new_tokens=400, temperature=1.0, seed=3)[0]
    cut = generate_text(model, TOKENIZER, "dd", max_new_tokens=400, temperature=1.0, seed=3, stop=stop)[0]
    stops = [stop] if isinstance(stop, str) else stop
    generated_full = full[2:]
    first = min(generated_full.find(s) for s in stops if s in generated_full)
    assert cut == "dd" + generated_full[:first]
    assert not any(s in cut[2:] for s in stops)


def test_stop_string_in_the_prompt_does_not_stop():
    model = model_for(TOKENIZER.vocab_size, seed=2)
    model.flat_params[...] *= 0.2
    text = generate_text(model, TOKENIZER, "aaa", max_new_tokens=5, seed=0, stop="zzz")[0]
    assert len(text) == 8 and text.startswith("aaa")


def test_prompt_with_unknown_character_raises_value_error():
    model = model_for(TOKENIZER.vocab_size)
    with pytest.raises(ValueError, match="'Z'"):
        generate_text(model, TOKENIZER, "abZ", max_new_tokens=3, seed=0)


def test_empty_prompt_starts_from_a_newline():
    model = model_for(TOKENIZER.vocab_size)
    texts = generate_text(model, TOKENIZER, "", num_samples=2, max_new_tokens=8, seed=0)
    for text in texts:
        assert text.startswith("\n") and len(text) == 9
    no_newline = CharTokenizer("xyz")
    model = model_for(no_newline.vocab_size)
    text = generate_text(model, no_newline, "", max_new_tokens=4, seed=0)[0]
    assert len(text) == 5 and set(text) <= set("xyz")


def test_prompt_longer_than_the_block_is_cropped_for_the_model():
    model = model_for(TOKENIZER.vocab_size)
    prompt = "abcde " * 5                      # 30 characters > block 12
    text = generate_text(model, TOKENIZER, prompt, max_new_tokens=4, temperature=0, seed=0)[0]
    assert text.startswith(prompt) and len(text) == len(prompt) + 4
    # the continuation depends only on the last block of the prompt
    tail = generate_text(model, TOKENIZER, prompt[-BLOCK:], max_new_tokens=4, temperature=0)[0]
    assert text[len(prompt):] == tail[BLOCK:]


def test_generate_text_bad_args():
    model = model_for(TOKENIZER.vocab_size)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match=f"num_samples must be a positive integer, got {bad!r}"):
            generate_text(model, TOKENIZER, "a", num_samples=bad)
    for bad in ("", [1], ["a", ""]):
        with pytest.raises(ValueError, match="stop must be a non-empty string or a list of them"):
            generate_text(model, TOKENIZER, "a", stop=bad)
    with pytest.raises(ValueError, match="temperature"):
        generate_text(model, TOKENIZER, "a", temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate_text(model, TOKENIZER, "a", top_p=2.0)
