"""Tokenizers: turning text into integer ids and back.

A language model never sees characters; it sees a sequence of integers in
``range(vocab_size)``.  A *tokenizer* fixes that mapping.  This module holds
the two simplest ones, and the interface every tokenizer in numgpt shares:

``kind``
    A short string naming the tokenizer family ("char", "byte", "bpe").
``vocab_size``
    The number of distinct ids; every id is in ``range(vocab_size)``.
``encode(text) -> list[int]``
    Text to ids.
``decode(ids) -> str``
    Ids (a list or a 1-D integer array) back to text.
``to_state() -> dict``
    Everything needed to rebuild the tokenizer, as a JSON-able dict whose
    ``"kind"`` entry says which class to rebuild.  Checkpoints store it so
    that a trained model is always paired with the exact tokenizer it
    learned.
``from_state(state)``
    Class method, the inverse of ``to_state``.

The two tokenizers here:

*Character level* (:class:`CharTokenizer`).  The vocabulary is the sorted
set of distinct characters (Unicode code points) of the training text; id
``i`` is the ``i``-th of them.  Tiny Shakespeare has 65 such characters, so
the model's embedding table is tiny.  The price is that the tokenizer can
only encode characters it saw in training: anything else is an error, not
a silent substitution.

*Byte level* (:class:`ByteTokenizer`).  Text is encoded as UTF-8 and every
byte is a token, so the vocabulary is always the 256 byte values and every
text can be encoded.  A character outside ASCII costs 2-4 tokens.  A model
may generate byte sequences that are not valid UTF-8, so decoding replaces
broken sequences with U+FFFD instead of failing.

For corpora of a megabyte or more, :func:`encode_array` encodes straight
into a NumPy array without building a Python list of a million ints.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = [
    "CharTokenizer",
    "ByteTokenizer",
    "tokenizer_from_state",
    "register_tokenizer",
    "encode_array",
    "id_dtype",
    "TOKENIZER_KINDS",
]

# What a training run can build from its text: characters, bytes, or a BPE vocabulary trained on it.
TOKENIZER_KINDS = ("char", "byte", "bpe")

# How many offending characters an "unknown character" error lists before
# it gives up and just says how many more there were.
_MAX_REPORTED = 5


def as_id_list(ids, vocab_size: int) -> list[int]:
    """Validate token ids (a list/tuple of ints or a 1-D integer array) and
    return them as a list of Python ints, each in ``range(vocab_size)``."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise ValueError(
                f"ids must be a 1-D sequence of token ids, got an array of shape {ids.shape}"
            )
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got an array of dtype {ids.dtype}")
        values = ids.tolist()
    elif isinstance(ids, (str, bytes)):
        raise TypeError(f"ids must be a sequence of integers, got {type(ids).__name__}")
    else:
        try:
            values = [operator.index(i) for i in ids]
        except TypeError:
            raise TypeError(
                f"ids must be a list or 1-D array of integers, got {ids!r:.80}"
            ) from None
    for position, value in enumerate(values):
        if not 0 <= value < vocab_size:
            raise ValueError(
                f"token id {value} at position {position} is out of range: "
                f"this tokenizer's ids are 0..{vocab_size - 1}"
            )
    return values


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text


def _check_kind(cls, state) -> None:
    if not isinstance(state, dict):
        raise TypeError(f"tokenizer state must be a dict, got {type(state).__name__}")
    if state.get("kind") != cls.kind:
        raise ValueError(
            f"{cls.__name__}.from_state expects a state with kind={cls.kind!r}, "
            f"got kind={state.get('kind')!r}"
        )


class CharTokenizer:
    """One token per character; the vocabulary is fixed at construction.

    ``CharTokenizer(chars)`` uses ``chars`` (a string or iterable of distinct
    single characters) in the order given: ``chars[i]`` gets id ``i``.  The
    usual way to build one is :meth:`from_text`, which takes the sorted set
    of characters of a training text.
    """

    kind = "char"

    def __init__(self, chars):
        if isinstance(chars, str):
            chars = list(chars)
        else:
            try:
                chars = list(chars)
            except TypeError:
                raise TypeError(
                    f"chars must be a string or an iterable of characters, "
                    f"got {type(chars).__name__}"
                ) from None
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"chars must contain single characters, got {c!r}")
        if not chars:
            raise ValueError("chars must contain at least one character, got an empty vocabulary")
        if len(set(chars)) != len(chars):
            seen, dupes = set(), []
            for c in chars:
                if c in seen and c not in dupes:
                    dupes.append(c)
                seen.add(c)
            raise ValueError(f"chars must be distinct; repeated: {', '.join(map(repr, dupes))}")
        self.chars = "".join(chars)
        self._index = {c: i for i, c in enumerate(chars)}
        self._table = None  # code point -> id lookup, built on first encode_array

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary = the sorted distinct characters of ``text``."""
        _check_text(text)
        if not text:
            raise ValueError("cannot build a character vocabulary from an empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def _unknown_error(self, text: str) -> ValueError:
        """Build the error for characters of ``text`` missing from the vocabulary."""
        unknown: dict[str, list[int]] = {}
        for position, c in enumerate(text):
            if c not in self._index:
                unknown.setdefault(c, []).append(position)
        parts = []
        for c, positions in list(unknown.items())[:_MAX_REPORTED]:
            shown = ", ".join(str(p) for p in positions[:_MAX_REPORTED])
            if len(positions) > _MAX_REPORTED:
                shown += f", ... ({len(positions)} times)"
            parts.append(f"{c!r} (U+{ord(c):04X}) at position {shown}")
        if len(unknown) > _MAX_REPORTED:
            parts.append(f"and {len(unknown) - _MAX_REPORTED} more distinct characters")
        return ValueError(
            "text contains characters that are not in the vocabulary: "
            + "; ".join(parts)
            + f". A character tokenizer's vocabulary ({self.vocab_size} characters) comes "
            "from its training text, so it can only encode characters that occurred there; "
            "train on text that contains them, or use the byte tokenizer, which encodes any text."
        )

    def encode(self, text: str) -> list[int]:
        _check_text(text)
        index = self._index
        try:
            return [index[c] for c in text]
        except KeyError:
            raise self._unknown_error(text) from None

    def decode(self, ids) -> str:
        chars = self.chars
        return "".join(chars[i] for i in as_id_list(ids, self.vocab_size))

    def to_state(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> "CharTokenizer":
        _check_kind(cls, state)
        chars = state.get("chars")
        if not isinstance(chars, str):
            raise ValueError(
                f"char tokenizer state needs a string 'chars', got {type(chars).__name__}"
            )
        return cls(chars)

    def lookup_table(self) -> np.ndarray:
        """Array mapping a code point to its id, or -1 for code points not in
        the vocabulary; its length is the largest vocabulary code point + 1
        (at most 0x110000 entries, 4.4 MB)."""
        if self._table is None:
            codes = np.fromiter((ord(c) for c in self.chars), dtype=np.int64, count=len(self.chars))
            table = np.full(int(codes.max()) + 1, -1, dtype=np.int32)
            table[codes] = np.arange(len(codes), dtype=np.int32)
            self._table = table
        return self._table

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash((self.kind, self.chars))


class ByteTokenizer:
    """One token per UTF-8 byte: 256 ids, any text encodes."""

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(_utf8(_check_text(text)))

    def decode(self, ids) -> str:
        # A model can emit any byte sequence, including broken UTF-8; show
        # such bytes as U+FFFD rather than lose the whole sample to an error.
        return bytes(as_id_list(ids, 256)).decode("utf-8", errors="replace")

    def to_state(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_state(cls, state: dict) -> "ByteTokenizer":
        _check_kind(cls, state)
        return cls()

    def __repr__(self) -> str:
        return "ByteTokenizer()"

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash(self.kind)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Only lone surrogates (e.g. from os.fsdecode of a bad file name)
        # cannot be encoded; say where instead of showing a codec traceback.
        raise ValueError(
            f"text cannot be encoded as UTF-8: {text[err.start]!r} at position {err.start} "
            "is a lone surrogate"
        ) from None


# kind -> the class whose from_state rebuilds it.  Tokenizers defined in
# other modules add themselves with register_tokenizer (bpe.py does, for
# "bpe"), so that this module never imports them: the dependency runs one
# way only, from those modules down to this one.  numgpt/__init__.py imports
# bpe, so every kind numgpt ships is registered whatever module is imported.
_REGISTRY: dict[str, type] = {}


def register_tokenizer(cls) -> type:
    """Let :func:`tokenizer_from_state` rebuild states of kind ``cls.kind``
    with ``cls.from_state``.  Returns ``cls``, so it can be a class decorator."""
    kind = getattr(cls, "kind", None)
    if not isinstance(kind, str) or not callable(getattr(cls, "from_state", None)):
        raise TypeError(
            f"register_tokenizer needs a class with a string 'kind' and a from_state "
            f"class method, got {cls!r}"
        )
    known = _REGISTRY.get(kind)
    if known is not None and known is not cls:
        raise ValueError(
            f"tokenizer kind {kind!r} is already registered to {known.__module__}.{known.__name__}"
        )
    _REGISTRY[kind] = cls
    return cls


register_tokenizer(CharTokenizer)
register_tokenizer(ByteTokenizer)


def tokenizer_from_state(state: dict):
    """Rebuild a tokenizer from the dict its ``to_state()`` returned."""
    if not isinstance(state, dict):
        raise TypeError(f"tokenizer state must be a dict, got {type(state).__name__}")
    kinds = ", ".join(map(repr, _REGISTRY))
    if "kind" not in state:
        raise ValueError(
            f"tokenizer state has no 'kind' entry (keys: {sorted(map(str, state))}); "
            f"expected one of {kinds}"
        )
    kind = state["kind"]
    cls = _REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(
            f"unknown tokenizer kind {kind!r} in tokenizer state; expected one of {kinds}"
        )
    return cls.from_state(state)


def id_dtype(vocab_size: int) -> np.dtype:
    """The array dtype used for token ids: uint16 (2 bytes per token) when
    ``vocab_size <= 65535``, else int32."""
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.int32)


def encode_array(tokenizer, text: str) -> np.ndarray:
    """Encode ``text`` into a 1-D NumPy array of ids, fast for large texts.

    Equal to ``np.array(tokenizer.encode(text))`` but built without a Python
    loop for the char and byte tokenizers:

    * char: the text's UTF-32 encoding is viewed as an array of code points,
      which index a lookup table (code point -> id);
    * byte: the UTF-8 bytes are viewed directly as an array.

    Other tokenizers use their own ``encode_array(text)`` method if they have
    one, else ``encode``.  The dtype is :func:`id_dtype`: uint16 when
    ``vocab_size <= 65535`` (half the memory of int32; GPT-2's 50257 ids
    fit), else int32.  Unknown characters raise the same ValueError as
    ``encode``.
    """
    _check_text(text)
    dtype = id_dtype(tokenizer.vocab_size)
    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(_utf8(text), dtype=np.uint8).astype(dtype)
    if isinstance(tokenizer, CharTokenizer):
        # surrogatepass keeps a lone surrogate as its own code point, so it is
        # reported as an unknown character like any other.
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        table = tokenizer.lookup_table()
        in_range = codes < len(table)
        ids = np.full(codes.shape, -1, dtype=np.int32)
        ids[in_range] = table[codes[in_range]]
        if (ids < 0).any():
            raise tokenizer._unknown_error(text)
        return ids.astype(dtype)
    fast = getattr(tokenizer, "encode_array", None)
    if callable(fast):
        return np.asarray(fast(text)).astype(dtype, copy=False)
    return np.asarray(tokenizer.encode(text), dtype=dtype)
