"""Tests for numgpt.tokenizers: round trips, errors, states and the fast path."""

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    encode_array,
    id_dtype,
    tokenizer_from_state,
)

TRAIN_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


# -- character tokenizer ------------------------------------------------------


def test_char_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.from_text(TRAIN_TEXT)
    assert tok.kind == "char"
    assert tok.chars == "".join(sorted(set(TRAIN_TEXT)))
    assert tok.vocab_size == len(set(TRAIN_TEXT))
    # Sorted vocabulary: "\n" < " " < "," < ... so "\n" is id 0.
    assert tok.encode("\n ") == [0, 1]


def test_char_round_trip():
    tok = CharTokenizer.from_text(TRAIN_TEXT)
    ids = tok.encode(TRAIN_TEXT)
    assert len(ids) == len(TRAIN_TEXT)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == TRAIN_TEXT
    assert tok.decode(np.array(ids, dtype=np.uint16)) == TRAIN_TEXT


@given(st.text(min_size=1))
def test_char_round_trip_any_text(text):
    tok = CharTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert encode_array(tok, text).tolist() == tok.encode(text)


def test_char_unknown_character_error_names_characters_and_positions():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(ValueError) as info:
        tok.encode("abc é xyz é")
    message = str(info.value)
    assert "'é'" in message and "U+00E9" in message
    assert "position 4, 10" in message  # both places é occurs
    assert "'x'" in message and "position 6" in message
    assert "training text" in message
    assert "byte tokenizer" in message


def test_char_unknown_error_lists_only_the_first_few():
    tok = CharTokenizer.from_text("a")
    with pytest.raises(ValueError) as info:
        tok.encode("b" * 50 + "cdefghij")
    message = str(info.value)
    assert "(50 times)" in message
    assert "more distinct characters" in message
    assert len(message) < 1000


def test_char_constructor_validation():
    assert CharTokenizer("cab").encode("abc") == [1, 2, 0]  # given order is kept
    with pytest.raises(ValueError, match="distinct.*'a'"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer("")
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.from_text("")
    with pytest.raises(TypeError, match="text must be a str"):
        CharTokenizer.from_text(b"abc")
    with pytest.raises(TypeError, match="text must be a str"):
        CharTokenizer("abc").encode(None)


def test_decode_rejects_bad_ids():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="token id 3 at position 1.*0..2"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="token id -1"):
        tok.decode(np.array([-1]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        tok.decode(np.array([0.5]))
    with pytest.raises(TypeError, match="integers"):
        tok.decode([0, 1.0])
    with pytest.raises(TypeError):
        tok.decode("abc")
    with pytest.raises(ValueError, match="out of range"):
        ByteTokenizer().decode([256])
    assert tok.decode([]) == ""


# -- byte tokenizer -----------------------------------------------------------


@given(st.text())
def test_byte_round_trip_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    arr = encode_array(tok, text)
    assert arr.dtype == np.uint16 and arr.tolist() == ids


def test_byte_tokenizer_basics():
    tok = ByteTokenizer()
    assert tok.kind == "byte" and tok.vocab_size == 256
    assert tok.encode("é") == [0xC3, 0xA9]
    # A model can emit broken UTF-8; decoding shows it instead of failing.
    assert tok.decode([0xC3]) == "\ufffd"
    assert tok.decode([104, 0xFF, 105]) == "h\ufffdi"
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\ud800")


# -- states -------------------------------------------------------------------


@pytest.mark.parametrize(
    "tok", [CharTokenizer.from_text(TRAIN_TEXT + "é✓"), ByteTokenizer()], ids=["char", "byte"]
)
def test_state_round_trip_through_json(tok):
    state = tok.to_state()
    assert state["kind"] == tok.kind
    restored = tokenizer_from_state(json.loads(json.dumps(state)))
    assert type(restored) is type(tok)
    assert restored == tok and hash(restored) == hash(tok)
    assert restored.vocab_size == tok.vocab_size
    text = TRAIN_TEXT + "é"
    assert restored.encode(text) == tok.encode(text)
    assert type(tok).from_state(state) == tok


def test_tokenizer_from_state_errors():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'wordpiece'.*'char'.*'byte'.*'bpe'"):
        tokenizer_from_state({"kind": "wordpiece"})
    with pytest.raises(ValueError, match="no 'kind'"):
        tokenizer_from_state({"chars": "abc"})
    with pytest.raises(TypeError, match="must be a dict"):
        tokenizer_from_state("char")
    with pytest.raises(ValueError, match="kind='char'.*got kind='byte'"):
        CharTokenizer.from_state({"kind": "byte"})
    with pytest.raises(ValueError, match="'chars'"):
        CharTokenizer.from_state({"kind": "char"})
    with pytest.raises(ValueError, match="kind='byte'"):
        ByteTokenizer.from_state({"kind": "char", "chars": "ab"})


# -- encode_array ---------------------------------------------------------------


def test_encode_array_matches_encode_on_a_large_text():
    rng = np.random.default_rng(0)
    alphabet = list("abcdefghij \n.,;!?ÄéΩ✓") + ["\U0001f600"]  # up to 4-byte UTF-8
    text = "".join(rng.choice(alphabet, size=20_000))
    for tok in (CharTokenizer.from_text(text), ByteTokenizer()):
        arr = encode_array(tok, text)
        assert arr.ndim == 1 and arr.dtype == np.uint16
        assert arr.tolist() == tok.encode(text)
        assert tok.decode(arr) == text


def test_encode_array_unknown_characters_raise_like_encode():
    tok = CharTokenizer.from_text("abc")
    for text in ("abz", "ab\U0001f600", "a\ud800"):  # below/above the table, surrogate
        with pytest.raises(ValueError) as fast:
            encode_array(tok, text)
        with pytest.raises(ValueError) as slow:
            tok.encode(text)
        assert str(fast.value) == str(slow.value)


def test_encode_array_empty_text_and_dtype_rule():
    assert encode_array(ByteTokenizer(), "").shape == (0,)
    assert encode_array(CharTokenizer("ab"), "").shape == (0,)
    assert id_dtype(65535) == np.uint16
    assert id_dtype(65536) == np.int32
    assert id_dtype(50257) == np.uint16


def test_encode_array_falls_back_to_the_tokenizer_encode():
    class Words:
        kind = "words"
        vocab_size = 100_000

        def encode(self, text):
            return [len(w) for w in text.split()]

    arr = encode_array(Words(), "a bb ccc")
    assert arr.dtype == np.int32 and arr.tolist() == [1, 2, 3]


# -- module structure ---------------------------------------------------------


def _imported_modules(path):
    """Every module an ``import`` anywhere in the file at ``path`` names,
    relative imports resolved against the numgpt package."""
    import ast

    tree = ast.parse(open(path, encoding="utf-8").read(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ("numgpt." if node.level else "") + (node.module or "")
            names.add(base.rstrip("."))
            # "from . import bpe" and "from numgpt import bpe" name the module
            # in the alias, not in node.module.
            names.update(f"{base.rstrip('.')}.{alias.name}" for alias in node.names)
    return names


def test_tokenizers_does_not_import_bpe():
    """The dependency runs one way: bpe.py imports tokenizers.py, never the reverse
    (not even inside a function): bpe registers its kind instead."""
    import numgpt.bpe
    import numgpt.tokenizers

    imported = _imported_modules(numgpt.tokenizers.__file__)
    assert not {name for name in imported if name == "numgpt.bpe" or name.endswith(".bpe")}, imported
    assert not any("importlib" in name or name == "bpe" for name in imported), imported
    assert "import_module" not in open(numgpt.tokenizers.__file__, encoding="utf-8").read()
    # The other direction is the intended one.
    assert "numgpt.tokenizers" in _imported_modules(numgpt.bpe.__file__)


def test_bpe_kind_is_known_after_importing_only_tokenizers():
    """Any import of a numgpt module runs numgpt/__init__.py, which imports bpe,
    so a checkpoint's "bpe" tokenizer state rebuilds without importing bpe by hand."""
    import os
    import subprocess
    import sys

    import numgpt
    from numgpt.bpe import train_bpe

    state = json.dumps(train_bpe("low lower lowest", 260).to_state())
    code = (
        "import json, sys\n"
        "from numgpt.tokenizers import tokenizer_from_state\n"
        "print(type(tokenizer_from_state(json.loads(sys.stdin.read()))).__name__)\n"
    )
    # The numgpt under test, wherever the interpreter is started from.
    root = os.path.dirname(os.path.dirname(os.path.abspath(numgpt.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-c", code], input=state, capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "BPETokenizer"


def test_register_tokenizer():
    from numgpt.tokenizers import register_tokenizer

    class Other:
        kind = "char"

        @classmethod
        def from_state(cls, state):
            return cls()

    with pytest.raises(ValueError, match="'char' is already registered"):
        register_tokenizer(Other)
    with pytest.raises(TypeError, match="string 'kind'"):
        register_tokenizer(object)
    assert register_tokenizer(CharTokenizer) is CharTokenizer  # registering again is harmless
    with pytest.raises(ValueError, match="unknown tokenizer kind 3"):
        tokenizer_from_state({"kind": 3})
