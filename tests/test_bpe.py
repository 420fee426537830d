"""Tests for numgpt.bpe: GPT-2's pre-tokenizer, byte symbols, BPE encoding,
vocabulary files, and the trainer.

The expected pre-tokenizations below were checked against GPT-2's own
regular expression run by the third-party ``regex`` module; here they are
also compared, on random text, with an independent oracle: the same pattern
for the standard library's ``re``, with \\p{L}, \\p{N} and \\s spelled out as
explicit character classes built from ``unicodedata``.
"""

import functools
import itertools
import json
import re
import sys
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numgpt.bpe import (
    EOT,
    BPETokenizer,
    bytes_to_unicode,
    pretokenize,
    tokens_per_char,
    train_bpe,
)

# ---------------------------------------------------------------------------
# Pre-tokenization

# (text, GPT-2's pre-tokens)
KNOWN_PRETOKENS = [
    ("I'm", ["I", "'m"]),
    ("don't", ["don", "'t"]),
    ("they'll", ["they", "'ll"]),
    ("We've we're he'd it's", ["We", "'ve", " we", "'re", " he", "'d", " it", "'s"]),
    # Contractions are lower-case only: "'S" is a symbol run then letters.
    ("IT'S I'M", ["IT", "'", "S", " I", "'", "M"]),
    ("''s", ["''", "s"]),
    (" 's", [" '", "s"]),
    ("rock'n'roll", ["rock", "'", "n", "'", "roll"]),
    ("it\u2019s", ["it", "\u2019", "s"]),  # only the ASCII apostrophe counts
    ("123abc", ["123", "abc"]),
    ("abc123", ["abc", "123"]),
    ("1,000.50", ["1", ",", "000", ".", "50"]),
    (" $5", [" $", "5"]),
    # A white-space run gives its last character to the word after it.
    ("a   b", ["a", "  ", " b"]),
    ("  leading", [" ", " leading"]),
    ("hello   ", ["hello", "   "]),
    (" ", [" "]),
    ("", []),
    ("\n\nHello", ["\n", "\n", "Hello"]),
    ("Hello\n\n", ["Hello", "\n\n"]),
    ("Hello\n\nworld", ["Hello", "\n", "\n", "world"]),
    ("line\r\n", ["line", "\r\n"]),
    ("a\tb", ["a", "\t", "b"]),
    ("a \tb", ["a", " ", "\t", "b"]),
    ("a\t b", ["a", "\t", " b"]),
    ("a\t\t", ["a", "\t\t"]),
    ("Hello!!! ...?", ["Hello", "!!!", " ...?"]),
    ("(x)", ["(", "x", ")"]),
    ("中文 文本。", ["中文", " 文本", "。"]),
    ("مرحبا بالعالم", ["مرحبا", " بالعالم"]),
    # Devanagari: the virama and vowel sign are combining marks (Mn), which
    # are neither letters nor numbers, so they split the word.  Devanagari
    # digits are numbers (Nd).
    ("नमस्ते १२३ ४५", ["नमस", "\u094d", "त", "\u0947", " १२३", " ४५"]),
    ("٣٤ x² ½", ["٣٤", " x", "²", " ½"]),
    ("hi 😀👍🏽!", ["hi", " 😀👍🏽!"]),
    ("e\u0301te", ["e", "\u0301", "te"]),  # decomposed é: the accent is Mn
    ("\u00e9t\u00e9", ["\u00e9t\u00e9"]),  # precomposed é is a letter
    # U+001C is str.isspace() but not \s in GPT-2's regex: a symbol.
    ("!\x1c!", ["!\x1c!"]),
    # U+00A0 (no-break space) and U+3000 are \s.
    ("!\xa0!", ["!", "\xa0", "!"]),
    ("a\xa0 b", ["a", "\xa0", " b"]),
    (" \xa0b", [" ", "\xa0", "b"]),
    ("中\u3000文", ["中", "\u3000", "文"]),
]


@pytest.mark.parametrize("text, expected", KNOWN_PRETOKENS)
def test_pretokenize_known_gpt2_outputs(text, expected):
    assert pretokenize(text) == expected


# The Unicode White_Space property, from the Unicode Character Database's
# PropList.txt: what \s means in GPT-2's regex.
WHITE_SPACE = {
    *range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
    0x2028, 0x2029, 0x202F, 0x205F, 0x3000,
}  # fmt: skip


def test_white_space_differs_from_isspace_only_at_information_separators():
    isspace = {c for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert isspace - WHITE_SPACE == {0x1C, 0x1D, 0x1E, 0x1F}
    assert WHITE_SPACE <= isspace
    for code in (0x1C, 0x1D, 0x1E, 0x1F):
        # A separator glues to neighbouring symbols, as a symbol would.
        assert pretokenize(f"a.{chr(code)}.b") == ["a", f".{chr(code)}.", "b"]


def _char_class(codes) -> str:
    """Explicit regular-expression class body for a sorted list of code points."""
    ranges = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(f"\\U{lo:08X}-\\U{hi:08X}" for lo, hi in ranges)


@functools.cache
def gpt2_pattern_for_stdlib_re() -> re.Pattern:
    """GPT-2's pattern with \\p{L}, \\p{N}, \\s replaced by explicit classes."""
    letters, numbers = [], []
    for code in range(sys.maxunicode + 1):
        major = unicodedata.category(chr(code))[0]
        if major == "L":
            letters.append(code)
        elif major == "N":
            numbers.append(code)
    L, N, S = _char_class(letters), _char_class(numbers), _char_class(sorted(WHITE_SPACE))
    return re.compile(
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
    )


def test_oracle_agrees_with_known_cases():
    oracle = gpt2_pattern_for_stdlib_re()
    for text, expected in KNOWN_PRETOKENS:
        assert oracle.findall(text) == expected, text


# Characters where the pattern's alternatives interact: spaces of several
# kinds, apostrophes and contraction letters, digits of several scripts,
# combining marks, emoji pieces, separators.
TRICKY = (
    " \t\n\r\x0b\x0c\x1c\x1f\x85\xa0\u1680\u2000\u2028\u3000\u200b\ufeff"
    "'sStrRevVmMlLdD0١९²ⅷ½aéZ中ا!?.,-_\u0301\u0903\u20dd😀\U0001f3fb\u200d"
)
tricky_text = st.text(
    alphabet=st.one_of(st.sampled_from(TRICKY), st.characters(exclude_categories=("Cs",))),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), tricky_text))
def test_pretokenize_matches_the_regex_oracle(text):
    assert pretokenize(text) == gpt2_pattern_for_stdlib_re().findall(text)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), tricky_text))
def test_pretokens_concatenate_to_the_text(text):
    pieces = pretokenize(text)
    assert "".join(pieces) == text
    assert all(pieces)


def test_pretokenize_rejects_non_str():
    with pytest.raises(TypeError, match="str"):
        pretokenize(b"bytes")


# ---------------------------------------------------------------------------
# Byte symbols


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(len(s) == 1 and s.isprintable() and not s.isspace() for s in table.values())
    assert table[ord(" ")] == "Ġ"
    assert table[ord("\n")] == "Ċ"
    assert table[0] == "Ā"
    assert table[ord("A")] == "A"
    assert table[0xFF] == "ÿ"


# ---------------------------------------------------------------------------
# A tokenizer trained on a small multilingual text

MULTILINGUAL = (
    "The quick brown fox jumps over the lazy dog. I'm sure they'll see it; don't worry!\n"
    "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.\n"
    "中文文本，没有空格的句子。日本語のテキストも少し。\n"
    "مرحبا بالعالم، هذا نص عربي قصير.\n"
    "नमस्ते दुनिया, यह हिंदी है। १२३४ ५६७\n"
    "Numbers 12345 and ٣٤٥ and ²½; emoji 😀👍🏽 and spaces   here\t\ttabs\n\n"
)
TRAINING_TEXT = "".join(MULTILINGUAL.replace("fox", f"fox{i % 7}") for i in range(20))
VOCAB_SIZE = 420

ROUND_TRIP_SAMPLES = [
    "Hello, world! It's a fine day.",
    "Съешь же ещё этих мягких французских булок",
    "中文文本，没有空格的句子。漢字かなカナ",
    "مرحبا بالعالم",
    "Digits: ٠١٢٣٤٥٦٧٨٩ ०१२३४५६७८९ ０１２ 𝟘𝟙",
    "emoji 😀👍🏽👨‍👩‍👧 flags 🇫🇷",
    "runs of spaces     and\n\n\nnewlines\r\n\t\ttabs   ",
    "e\u0301 n\u0303 combining",
    "\x00\x1c\x7f control bytes",
    "",
]


@pytest.fixture(scope="module")
def trained():
    return train_bpe(TRAINING_TEXT, VOCAB_SIZE)


@pytest.fixture(scope="module")
def saved_dir(trained, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_tokenizer")
    trained.save(directory)
    return directory


@pytest.fixture(scope="module")
def loaded(saved_dir):
    return BPETokenizer.from_dir(saved_dir)


def test_trained_vocabulary_layout(trained):
    assert trained.kind == "bpe"
    assert trained.vocab_size == VOCAB_SIZE
    assert trained.special_tokens == (EOT,)
    assert trained.eot_token == VOCAB_SIZE - 1
    # The base symbols have GPT-2's ids.
    assert trained.encoder["!"] == 0
    assert trained.encoder["Ā"] == 188
    assert trained.encoder["Ċ"] == 198
    assert trained.encoder["Ġ"] == 220
    assert len(trained.merges) == VOCAB_SIZE - 256 - 1


def test_saved_files_are_hugging_face_format(trained, saved_dir):
    merges = (saved_dir / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert merges[0] == "#version: 0.2"
    assert [tuple(line.split(" ")) for line in merges[1:-1]] == list(trained.merges)
    vocab = json.loads((saved_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == dict(trained.encoder)


def test_save_and_load_give_the_same_tokenizer(trained, loaded):
    assert loaded == trained
    assert loaded.eot_token == trained.eot_token
    for text in ROUND_TRIP_SAMPLES:
        assert loaded.encode(text) == trained.encode(text)


@pytest.mark.parametrize("text", ROUND_TRIP_SAMPLES)
def test_round_trip_samples(loaded, text):
    ids = loaded.encode(text)
    assert all(0 <= i < loaded.vocab_size for i in ids)
    assert loaded.decode(ids) == text


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(), tricky_text))
def test_round_trip_any_text(loaded, text):
    assert loaded.decode(loaded.encode(text)) == text


def test_long_word_without_spaces_is_fast_and_exact(loaded):
    # One pre-token of 60,000 bytes: quadratic merging would take minutes.
    text = "没有空格的句子很长" * 2000
    assert loaded.decode(loaded.encode(text)) == text


@pytest.fixture(scope="module")
def openai(trained, tmp_path_factory):
    """The trained tokenizer written in OpenAI's layout and loaded back."""
    directory = tmp_path_factory.mktemp("openai_tokenizer")
    (directory / "encoder.json").write_text(json.dumps(dict(trained.encoder)), encoding="utf-8")
    merges = "".join(f"{a} {b}\n" for a, b in trained.merges)
    (directory / "vocab.bpe").write_text("#version: 0.2\n" + merges, encoding="utf-8")
    return BPETokenizer.from_dir(directory)


def test_openai_file_format(trained, openai):
    assert openai == trained
    assert openai.eot_token == trained.eot_token
    for text in ROUND_TRIP_SAMPLES:
        assert openai.encode(text) == trained.encode(text)
        assert openai.decode(openai.encode(text)) == text


def _tokenizer_json(trained, merges_as_pairs, pre_tokenizer=None):
    """The trained tokenizer as Hugging Face's tokenizer.json (the added token apart, as tokenizers writes it)."""
    vocab = {t: i for t, i in trained.encoder.items() if t != EOT}
    merges = [[a, b] if merges_as_pairs else f"{a} {b}" for a, b in trained.merges]
    return {"version": "1.0",
            "added_tokens": [{"id": trained.eot_token, "content": EOT, "special": True}],
            "pre_tokenizer": pre_tokenizer or {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
            "model": {"type": "BPE", "vocab": vocab, "merges": merges}}


@pytest.mark.parametrize("merges_as_pairs", [False, True])     # tokenizers before 0.20 wrote "a b", later ["a", "b"]
def test_tokenizer_json_alone_loads_the_same_tokenizer(trained, tmp_path, merges_as_pairs):
    (tmp_path / "tokenizer.json").write_text(json.dumps(_tokenizer_json(trained, merges_as_pairs)), encoding="utf-8")
    loaded = BPETokenizer.from_dir(tmp_path)
    assert loaded == trained and loaded.eot_token == trained.eot_token
    for text in ROUND_TRIP_SAMPLES:
        assert loaded.encode(text) == trained.encode(text)


@pytest.mark.parametrize("change, message", [
    (lambda s: s["model"].update(type="WordPiece"), "numgpt reads byte-level BPE models, this one is 'WordPiece'"),
    (lambda s: s.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True}), "not GPT-2's ByteLevel"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "not GPT-2's ByteLevel"),
    (lambda s: s["model"]["merges"].append("a"), "must be two tokens, got 'a'"),
    (lambda s: s["added_tokens"][0].update(id=3), "added token '<|endoftext|>' has id 3 but the vocabulary gives"),
])
def test_a_tokenizer_json_numgpt_cannot_read_is_refused_by_name(trained, tmp_path, change, message):
    spec = _tokenizer_json(trained, True)
    if "vocabulary gives" in message:
        spec["model"]["vocab"][EOT] = trained.eot_token
    change(spec)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(message)):
        BPETokenizer.from_dir(tmp_path)


@settings(max_examples=100, deadline=None)
@given(text=st.one_of(st.text(), tricky_text))
def test_openai_format_round_trip_any_text(openai, text):
    assert openai.decode(openai.encode(text)) == text


# ---------------------------------------------------------------------------
# Special tokens


def test_endoftext_is_one_token_and_round_trips(loaded):
    eot = loaded.eot_token
    assert loaded.encode(EOT) == [eot]
    ids = loaded.encode(f"first doc.{EOT}second doc")
    assert ids.count(eot) == 1
    assert ids == loaded.encode("first doc.") + [eot] + loaded.encode("second doc")
    assert loaded.decode(ids) == f"first doc.{EOT}second doc"
    assert loaded.encode(EOT + EOT) == [eot, eot]


def test_disallowed_special_is_plain_text(loaded):
    text = f"a{EOT}b"
    plain = loaded.encode(text, allowed_special=set())
    assert loaded.eot_token not in plain
    assert len(plain) > 3
    assert loaded.decode(plain) == text
    assert loaded.encode(text, allowed_special={EOT}) == loaded.encode(text)


def test_bad_allowed_special_is_refused(loaded):
    with pytest.raises(ValueError, match="allowed_special"):
        loaded.encode("x", allowed_special="none")
    with pytest.raises(ValueError, match="<|pad|>"):
        loaded.encode("x", allowed_special={"<|pad|>"})


def test_custom_special_tokens_survive_save(tmp_path):
    tok = train_bpe(TRAINING_TEXT[:2000], 300, special_tokens=(EOT, "<|pad|>"))
    assert tok.special_tokens == (EOT, "<|pad|>")
    assert tok.encode("<|pad|>") == [299]
    tok.save(tmp_path)
    back = BPETokenizer.from_dir(tmp_path)
    assert back == tok
    assert back.encode("x<|pad|>y") == tok.encode("x<|pad|>y")


def test_special_tokens_in_training_text_are_not_learned():
    text = f"one two three{EOT}" * 50
    tok = train_bpe(text, 300)
    learned = [a + b for a, b in tok.merges]
    assert not any("<|" in t and "|>" in t for t in learned)
    assert tok.encode(text).count(tok.eot_token) == 50


# ---------------------------------------------------------------------------
# Checkpoint state


def test_state_round_trip(trained):
    state = json.loads(json.dumps(trained.to_state()))
    assert state["kind"] == "bpe"
    back = BPETokenizer.from_state(state)
    assert back == trained
    for text in ROUND_TRIP_SAMPLES + [TRAINING_TEXT]:
        assert back.encode(text) == trained.encode(text)


def test_state_through_the_shared_tokenizer_factory(trained):
    from numgpt.tokenizers import tokenizer_from_state

    assert tokenizer_from_state(trained.to_state()) == trained


def test_bad_state_is_refused(trained):
    with pytest.raises(ValueError, match="kind"):
        BPETokenizer.from_state({"kind": "char", "chars": "ab"})
    state = trained.to_state()
    state["merges"] = state["merges"] + ["no such-merge"]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        BPETokenizer.from_state(state)


# ---------------------------------------------------------------------------
# Decoding


def test_decode_accepts_arrays_and_never_fails_on_valid_ids(loaded):
    ids = loaded.encode("Привет")
    assert loaded.decode(np.array(ids, dtype=np.uint16)) == "Привет"
    # A lone UTF-8 continuation byte is not text: it decodes to U+FFFD.
    continuation = loaded.encoder[bytes_to_unicode()[0x80]]
    assert loaded.decode([continuation]) == "\ufffd"
    assert loaded.decode(list(range(loaded.vocab_size)))  # every id decodes


def test_decode_refuses_bad_ids(loaded):
    with pytest.raises(ValueError, match="out of range"):
        loaded.decode([0, loaded.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        loaded.decode([-1])
    with pytest.raises(TypeError):
        loaded.decode([1.5])


def test_unencodable_text_is_refused(loaded):
    with pytest.raises(ValueError, match="surrogate"):
        loaded.encode("ok \ud800 not ok")
    with pytest.raises(TypeError, match="str"):
        loaded.encode(b"bytes")


# ---------------------------------------------------------------------------
# BPE merging is exactly GPT-2's algorithm


def gpt2_merge(word: str, ranks: dict) -> list[str]:
    """The reference algorithm of GPT-2's encoder.py: merge every occurrence
    of the lowest-ranked adjacent pair until none has a rank."""
    symbols = list(word)
    while len(symbols) > 1:
        ranked = [(ranks[p], p) for p in itertools.pairwise(symbols) if p in ranks]
        if not ranked:
            break
        first, second = min(ranked)[1]
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


BASE_SYMBOLS = sorted(bytes_to_unicode().values())


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_merging_matches_gpt2_reference_even_with_arbitrary_ranks(data):
    # Symbols "!", '"', "#", "$" are all punctuation, so a word of them is a
    # single pre-token and encode() is one call of the merge algorithm.
    alphabet = '!"#$'
    tokens = list(alphabet)
    merges = []
    for _ in range(data.draw(st.integers(1, 25))):
        pair = (data.draw(st.sampled_from(tokens)), data.draw(st.sampled_from(tokens)))
        if pair not in merges:
            merges.append(pair)
            if pair[0] + pair[1] not in tokens:
                tokens.append(pair[0] + pair[1])
    merges = data.draw(st.permutations(merges))  # ranks need not be consistent
    vocab = BASE_SYMBOLS + [t for t in tokens if t not in BASE_SYMBOLS]
    tok = BPETokenizer({t: i for i, t in enumerate(vocab)}, merges)
    word = data.draw(st.text(alphabet=alphabet, min_size=1, max_size=40))
    expected = gpt2_merge(word, {p: r for r, p in enumerate(merges)})
    assert [vocab[i] for i in tok.encode(word)] == expected


# ---------------------------------------------------------------------------
# Training


def naive_train(text: str, n_tokens: int) -> list[tuple[bytes, bytes]]:
    """Recount every pair before every merge; same tie-break as train_bpe
    (most frequent, then smallest (left bytes, right bytes))."""
    words = {}
    for piece in pretokenize(text):
        key = tuple(bytes([b]) for b in piece.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    vocab = {bytes([b]) for b in range(256)}
    merges = []
    while len(vocab) < n_tokens:
        counts = {}
        for word, freq in words.items():
            for pair in itertools.pairwise(word):
                counts[pair] = counts.get(pair, 0) + freq
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        if best not in merges:
            merges.append(best)
        vocab.add(best[0] + best[1])
        new_words = {}
        for word, freq in words.items():
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            new_words[tuple(merged)] = new_words.get(tuple(merged), 0) + freq
        words = new_words
    return merges


def test_incremental_training_matches_naive_recounting():
    text = TRAINING_TEXT[:3000]
    tok = train_bpe(text, 330, special_tokens=())
    symbol_bytes = {s: bytes([b]) for b, s in bytes_to_unicode().items()}
    ours = [
        (b"".join(symbol_bytes[c] for c in a), b"".join(symbol_bytes[c] for c in b))
        for a, b in tok.merges
    ]
    assert ours == naive_train(text, 330)


def test_frequent_words_become_single_tokens():
    text = "hello world, the numpy network learns. " * 200 + "rare words appear once. "
    # 28 merges: enough for the frequent words, too few for words seen once.
    tok = train_bpe(text, 285)
    for word in (" hello", " world", " numpy", " network", " learns", ","):
        assert len(tok.encode(word)) == 1, word
    for word in (" rare", " appear", " once"):
        assert len(tok.encode(word)) > 1, word
    assert tokens_per_char(tok, text) < 0.25


def test_training_is_deterministic(trained):
    again = train_bpe(TRAINING_TEXT, VOCAB_SIZE)
    assert again.to_state() == trained.to_state()


def test_training_compresses(trained):
    assert tokens_per_char(trained, TRAINING_TEXT) < 0.8
    with pytest.raises(ValueError, match="non-empty"):
        tokens_per_char(trained, "")


def test_small_text_gives_a_smaller_vocabulary():
    tok = train_bpe("abab", 1000, special_tokens=())
    assert tok.vocab_size == 258  # "ab", then "abab"; no pairs left
    assert tok.encode("abab") == [tok.encoder["abab"]]


def test_too_small_vocab_size_is_refused():
    with pytest.raises(ValueError, match="at least 257"):
        train_bpe("some text", 256)
    with pytest.raises(ValueError, match="at least 258"):
        train_bpe("some text", 257, special_tokens=(EOT, "<|pad|>"))
    assert train_bpe("some text", 256, special_tokens=()).vocab_size == 256
    with pytest.raises(TypeError, match="vocab_size"):
        train_bpe("some text", 300.0)
    with pytest.raises(ValueError, match="surrogate"):
        train_bpe("bad \udcff text", 300)


# ---------------------------------------------------------------------------
# Bad files


def test_malformed_merges_file_is_refused(saved_dir, tmp_path):
    vocab = saved_dir / "vocab.json"
    bad = tmp_path / "merges.txt"
    bad.write_text("#version: 0.2\nĠ t\nthree parts here\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt.*line 3"):
        BPETokenizer.from_files(vocab, bad)
    bad.write_text("#version: 0.2\nĠ t\nĠ t\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 3: merge 'Ġ t' repeats line 2"):
        BPETokenizer.from_files(vocab, bad)
    bad.write_text("#version: 0.2\nĠ t\nq zzzz\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges.txt.*line 3.*'zzzz' is not in the vocabulary"):
        BPETokenizer.from_files(vocab, bad)


def test_malformed_vocab_file_is_refused(saved_dir, tmp_path):
    merges = saved_dir / "merges.txt"
    bad = tmp_path / "vocab.json"
    bad.write_text('{\n"a": 0,\n"b": }', encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.json.*line 3"):
        BPETokenizer.from_files(bad, merges)
    bad.write_text('["a", "b"]', encoding="utf-8")
    with pytest.raises(ValueError, match="JSON object"):
        BPETokenizer.from_files(bad, merges)
    bad.write_text('{"a": "zero"}', encoding="utf-8")
    with pytest.raises(ValueError, match="must be an integer"):
        BPETokenizer.from_files(bad, merges)
    bad.write_text('{"a": 0, "b": 5}', encoding="utf-8")
    with pytest.raises(ValueError, match="ids must be exactly 0..1"):
        BPETokenizer.from_files(bad, merges)


def test_missing_files_are_refused(saved_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab"):
        BPETokenizer.from_files(tmp_path / "vocab.json", saved_dir / "merges.txt")
    with pytest.raises(ValueError, match="no tokenizer files"):
        BPETokenizer.from_dir(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        BPETokenizer.from_dir(tmp_path / "nowhere")


def test_incomplete_vocabulary_is_refused():
    with pytest.raises(ValueError, match="lacks 255 of the 256 byte symbols"):
        BPETokenizer({"a": 0}, [])


# ---------------------------------------------------------------------------
# Optional: agreement with Hugging Face transformers, where it is installed


def test_agrees_with_transformers_gpt2_tokenizer(trained, saved_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2Tokenizer(str(saved_dir / "vocab.json"), str(saved_dir / "merges.txt"))
    texts = ROUND_TRIP_SAMPLES + [TRAINING_TEXT, MULTILINGUAL + EOT + " after the end"]
    for text in texts:
        assert trained.encode(text) == hf.encode(text), text
    # What transformers' fast tokenizer saves (transformers 5 writes tokenizer.json alone) loads back.
    fast = transformers.GPT2TokenizerFast(str(saved_dir / "vocab.json"), str(saved_dir / "merges.txt"))
    fast.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):           # as if only tokenizer.json had been written
        (tmp_path / name).unlink(missing_ok=True)
    assert BPETokenizer.from_dir(tmp_path) == trained
