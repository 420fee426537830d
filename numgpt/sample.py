"""Text generation: temperature, top-k and nucleus (top-p) sampling, with a key/value cache.

With the cache (the default) each new token costs one forward over one
position: the keys and values of earlier positions are kept per layer
(``GPT.forward_step``), and the logits are exactly those of recomputing the
whole context (tests/test_sample.py compares them). When the context reaches
``block_size``, the cache is rebuilt from the last ``block_size // 2`` tokens
(one at block size 1, a bigram model) and generation goes on from there; the recompute path (``use_cache=False``)
instead crops the context to the last ``block_size`` tokens at every step, as
nanoGPT does. The two agree exactly until the context first fills.
"""

import numbers

import numpy as np


def _is_number(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_sampling_args(temperature, top_k, top_p):
    if not (_is_number(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a number >= 0 (0 means greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not (_is_number(top_p) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def sample_next(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """Draw one id per row of ``logits`` (B, V). ``temperature == 0`` takes the argmax."""
    _check_sampling_args(temperature, top_k, top_p)
    logits = np.asarray(logits, dtype=np.float64)        # (B, V); float64 for the cumulative sums
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (B, V) with V >= 1, got {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any() or not np.isfinite(logits.max(axis=-1)).all():
        raise ValueError("logits hold NaN or +inf values, or a row that is all -inf: nothing can be sampled")
    if temperature == 0:
        return logits.argmax(axis=-1)
    # Shifted before the division: at a tiny temperature l / T overflows to inf and inf - inf is NaN,
    # while (l - max) / T only runs to -inf, so the row's maximum keeps all the mass, as T -> 0 should.
    with np.errstate(over="ignore"):
        logits = (logits - logits.max(axis=-1, keepdims=True)) / temperature
    V = logits.shape[-1]
    if top_k is not None and top_k < V:
        kth = np.partition(logits, V - top_k, axis=-1)[:, V - top_k:V - top_k + 1]   # (B, 1)
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits)                  # each row's maximum is already 0 (shifted above; top-k keeps it)
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1)                               # (B, V) most likely first
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p                  # mass strictly before each
        sorted_p[before >= top_p] = 0.0                                   # keep the smallest nucleus
        probs = np.zeros_like(probs)
        np.put_along_axis(probs, order, sorted_p, axis=-1)
        probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)                                        # (B, V)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), V - 1)


def generate(model, idx, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, rng=None,
             use_cache=True, stop_fn=None):
    """Extend ``idx`` (B, T0) int by ``max_new_tokens`` sampled ids; returns (B, T0 + n).

    ``stop_fn(generated_ids (B, n)) -> bool`` may end generation early.
    """
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.shape[1] == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must be a non-empty integer array of shape (B, T), got {idx.shape} {idx.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    _check_sampling_args(temperature, top_k, top_p)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)) or None, "
                        f"got {type(rng).__name__}")
    rng = np.random.default_rng() if rng is None else rng
    block = model.config.block_size
    out = np.empty((idx.shape[0], idx.shape[1] + max_new_tokens), dtype=np.int64)
    out[:, :idx.shape[1]] = idx
    n = idx.shape[1]
    cache = None
    for _ in range(max_new_tokens):
        if not use_cache:
            logits = model.forward(out[:, max(0, n - block):n], last_only=True)[:, -1]
        elif cache is None or cache["pos"] >= block:
            keep = min(n, block if cache is None else max(1, block // 2))   # refill: the prompt, or half a block
            cache = model.new_kv_cache(out.shape[0])
            logits = model.forward_step(out[:, n - keep:n], cache, last_only=True)[:, -1]
        else:
            logits = model.forward_step(out[:, n - 1:n], cache)[:, -1]
        out[:, n] = sample_next(logits, rng, temperature, top_k, top_p)
        n += 1
        if stop_fn is not None and stop_fn(out[:, idx.shape[1]:n]):
            break
    return out[:, :n]


def prompt_ids(tokenizer, prompt):
    """Encode ``prompt``; an empty prompt starts from a newline (or id 0 if the vocabulary has none)."""
    if prompt:
        return tokenizer.encode(prompt)
    try:
        return tokenizer.encode("\n")
    except ValueError:
        return [0]


def generate_text(model, tokenizer, prompt="", *, num_samples=1, max_new_tokens=200, temperature=0.8,
                  top_k=None, top_p=None, seed=None, stop=None, use_cache=True):
    """Sample ``num_samples`` continuations of ``prompt``; returns the decoded texts (prompt included).

    ``stop``: a string or list of strings; a sample is cut just before the first
    one that appears in its generated part, and generation ends once every
    sample has stopped.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) and s for s in stops):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    ids = prompt_ids(tokenizer, prompt)
    if len(ids) > model.config.block_size:
        ids = ids[-model.config.block_size:]
    rng = np.random.default_rng(seed)
    idx = np.tile(np.asarray(ids, dtype=np.int64), (num_samples, 1))

    def stop_fn(generated):
        return all(any(s in tokenizer.decode(row) for s in stops) for row in generated)

    out = generate(model, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                   rng=rng, use_cache=use_cache, stop_fn=stop_fn if stops else None)
    texts = []
    head = prompt if prompt else tokenizer.decode(ids)
    for row in out:
        text = tokenizer.decode(row[len(ids):])
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        texts.append(head + (text[:cut] if cut >= 0 else text))
    return texts


def answer_problem(model, task, text):
    """A synthetic task's problem typed as ``text``: ``(prompt ids, the model's greedy answer, the right answer)``.

    ``task`` is a :class:`numgpt.tasks.Task`; it parses ``text`` (raising
    ValueError that names the accepted forms) and knows the right answer.
    """
    prompt = task.parse_prompt(text)                                      # (P,)
    out = generate(model, prompt[None, :], task.answer_length, temperature=0)
    return prompt, out[0, task.prompt_length:], task.solve(prompt[None, :])[0]
