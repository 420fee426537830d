"""GPT-2's byte-level BPE tokenizer, and a trainer for new vocabularies.

GPT-2 turns text into ids in three steps.

1. **Pre-tokenization.**  The text is cut into *pre-tokens* by one regular
   expression (OpenAI's ``encoder.py``)::

       's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

   applied left to right: at each position the first alternative that
   matches wins, and each alternative is greedy.  So a pre-token is an
   English contraction suffix, a run of letters, a run of digits or a run
   of other symbols (each optionally led by one ASCII space), or a run of
   white space.  ``\\s+(?!\\S)`` gives back the last white-space character
   of a run that is followed by a word, so that the word keeps its leading
   space: ``"a   b"`` becomes ``["a", "  ", " b"]``.  BPE merges never
   cross pre-token boundaries, which is why "dog", " dog", "dog." and
   "dog!" are learned as the same word with different neighbours.

2. **Bytes as symbols.**  Each pre-token is encoded as UTF-8, and every
   byte becomes one printable character (:func:`bytes_to_unicode`), so any
   text at all, in any script, is spelled with just 256 base symbols, and
   the vocabulary files can be plain JSON and text.  The space byte is
   ``"Ġ"`` and the newline byte ``"Ċ"``, which is why GPT-2's tokens look
   like ``"Ġthe"``.

3. **Byte-pair merges.**  A ranked list of merges ``(a, b)`` is applied to
   the symbols of each pre-token: repeatedly the adjacent pair with the
   lowest rank is found and every occurrence of it, left to right, is
   replaced by the joined symbol ``a + b``, until no adjacent pair has a
   rank.  The resulting symbols are looked up in the vocabulary
   (``encoder``: symbol string -> id).  Decoding concatenates the tokens'
   bytes and decodes UTF-8.

Training (:func:`train_bpe`) learns the merges: start from the 256 byte
symbols, count every adjacent pair of symbols over all pre-tokens
(weighted by how often each pre-token occurs), merge the most frequent
pair into a new symbol, update the counts, and repeat until the vocabulary
has the requested size.

**How exactly this matches GPT-2.**  The standard library's ``re`` has no
``\\p{L}``, and numgpt depends on NumPy only, so the pre-tokenizer here is
a hand-written scanner.  It classifies each character with
:func:`unicodedata.category` (``\\p{L}``: categories ``L*``, ``\\p{N}``:
``N*``; note that combining marks, ``Mn``/``Mc``/``Me``, are *neither*, so
an accent written as a separate code point starts a new "other symbols"
run) and treats as ``\\s`` exactly the characters with the Unicode
``White_Space`` property, which is what the ``regex`` module uses.  That
set differs from :meth:`str.isspace` in one place: U+001C..U+001F (the
ASCII file/group/record/unit separators) are ``isspace()`` but are *not*
``\\s``, so they count as "other symbols".  Contractions are matched
case-sensitively with the ASCII apostrophe only (``"I'm"`` gives ``"I"``,
``"'m"`` but ``"I'M"`` gives ``"I"``, ``"'"``, ``"M"``), and the optional
leading space is the ASCII space U+0020 only.

The scanner was checked against GPT-2's pattern run by the ``regex``
module (every code point in several contexts, and random mixed text), and
encoding with GPT-2's own ``encoder.json``/``vocab.bpe`` against
``transformers.GPT2Tokenizer``.  The one source of difference is the
Unicode version: categories come from the running Python's Unicode
database, while ``regex`` ships its own (possibly newer) one, so a
character assigned in between is an "other symbol" here.

Base-symbol ids: a trained vocabulary gives the 256 byte symbols ids
0..255 in the order of their symbol's code point, which is the order of
GPT-2's ``encoder.json`` (``"!"`` is 0, the space ``"Ġ"`` is 220, the
newline ``"Ċ"`` is 198); learned tokens follow in the order they were
learned and special tokens such as ``<|endoftext|>`` come last.

Files: Hugging Face's ``vocab.json`` (symbol string -> id) and
``merges.txt`` (``#version: 0.2`` then one ``a b`` merge per line, best
first), or OpenAI's ``encoder.json`` and ``vocab.bpe`` (the same two
formats under other names).  :meth:`BPETokenizer.save` also writes Hugging
Face's ``special_tokens_map.json``, so that special tokens other than
``<|endoftext|>`` survive a save and load.

What reading the files guarantees.  For any files at all,
:meth:`BPETokenizer.from_dir` and :meth:`BPETokenizer.from_files` either
build exactly the tokenizer the files describe, or raise a ValueError whose
message names the file and what is wrong with it (the line, for a merges
file); a missing file raises :class:`TokenizerFileError`, which is both a
FileNotFoundError and a ValueError.  A JSON file that names a key twice is
refused rather than read as its last occurrence.  The files carry no
checksum, so an edit that leaves them valid (a merge line deleted, say)
loads as what they now say.  ``tests/test_fuzz_bpe.py`` checks this with
damaged and hostile files drawn by Hypothesis.
"""

from __future__ import annotations

import heapq
import itertools
import json
import operator
import os
import re
import time
import unicodedata
from collections import Counter
from types import MappingProxyType

import numpy as np

from ._atomic import atomic_writer
from .tokenizers import as_id_list, register_tokenizer

__all__ = [
    "EOT",
    "BPETokenizer",
    "bytes_to_unicode",
    "pretokenize",
    "tokens_per_char",
    "train_bpe",
]

EOT = "<|endoftext|>"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json")   # what BPETokenizer.save writes
TOKENIZER_JSON = "tokenizer.json"       # Hugging Face's one-file form, read by BPETokenizer.from_tokenizer_json
"""GPT-2's end-of-text special token, the separator between documents."""


# ---------------------------------------------------------------------------
# Bytes as printable symbols


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible table from the 256 byte values to printable characters.

    Bytes that are printable Latin-1 characters (``!``..``~``, ``¡``..``¬``,
    ``®``..``ÿ``) stand for themselves.  The other 68 (controls, the space,
    DEL, the no-break space and the soft hyphen) are given, in increasing
    byte order, the characters U+0100, U+0101, ... so that none of them is
    white space or invisible: byte 0 is ``"Ā"``, the space (32) ``"Ġ"`` and
    the newline (10) ``"Ċ"``.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    stand_in = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(stand_in)
            stand_in += 1
    return table


_BYTE_TO_SYMBOL = bytes_to_unicode()
_SYMBOL_TO_BYTE = {symbol: b for b, symbol in _BYTE_TO_SYMBOL.items()}
# Applied to ``utf8_bytes.decode("latin-1")``, whose code points are the byte
# values, this turns UTF-8 bytes into byte symbols in one C-level pass.
_LATIN1_TO_SYMBOL = str.maketrans({chr(b): s for b, s in _BYTE_TO_SYMBOL.items()})
# The 256 base symbols in GPT-2's id order (by code point).
_BASE_SYMBOLS = sorted(_BYTE_TO_SYMBOL.values())


def _to_symbols(utf8: bytes) -> str:
    """UTF-8 bytes -> the string of their byte symbols."""
    return utf8.decode("latin-1").translate(_LATIN1_TO_SYMBOL)


def _utf8(text: str, what: str = "text") -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Only lone surrogates (e.g. from os.fsdecode of a bad file name) are
        # not encodable; GPT-2 cannot represent them either.
        raise ValueError(
            f"{what} cannot be encoded as UTF-8: {text[err.start]!r} at position {err.start} "
            "is a lone surrogate, which byte-level BPE cannot represent"
        ) from None


# ---------------------------------------------------------------------------
# Pre-tokenization

# The Unicode White_Space property: what the ``regex`` module (and so GPT-2)
# means by \s in a str pattern.  It is stable across Unicode versions since
# 6.3.  Unlike str.isspace() it excludes U+001C..U+001F.
_WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

# One-letter classes, the alphabet of the "kinds" string the scanner reads.
_LETTER, _NUMBER, _SPACE, _OTHER = "L", "N", "S", "O"


class _KindTable(dict):
    """Code point -> class letter, for ``str.translate``; filled on demand so
    only characters that occur are ever classified."""

    # Natural text uses a few thousand distinct characters; the bound only
    # keeps text made of all of Unicode from growing the table to 1.1M entries.
    LIMIT = 1 << 16

    def __missing__(self, code: int) -> str:
        char = chr(code)
        if char in _WHITE_SPACE:
            kind = _SPACE
        else:
            major = unicodedata.category(char)[0]
            kind = _LETTER if major == "L" else _NUMBER if major == "N" else _OTHER
        if len(self) < self.LIMIT:
            self[code] = kind
        return kind


_KINDS = _KindTable()
# A run of one class, read from the kinds string (C speed, no Python loop).
_RUN = re.compile(r"L+|N+|S+|O+")
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


def pretokenize(text: str) -> list[str]:
    """Split ``text`` into GPT-2's pre-tokens; ``"".join`` of the result is ``text``.

    >>> pretokenize("I'm here:  123abc\\n\\n")
    ['I', "'m", ' here', ':', ' ', ' 123', 'abc', '\\n\\n']
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    # kinds[i] is the class letter of text[i]; runs of equal letters are what
    # the \p{L}+, \p{N}+, [^\s\p{L}\p{N}]+ and \s+ alternatives consume.
    kinds = text.translate(_KINDS)
    n = len(text)
    pieces = []
    i = 0
    while i < n:
        char = text[i]
        # 's|'t|'re|'ve|'m|'ll|'d
        if char == "'":
            suffix = next((s for s in _CONTRACTIONS if text.startswith(s, i + 1)), None)
            if suffix is not None:
                pieces.append(text[i : i + 1 + len(suffix)])
                i += 1 + len(suffix)
                continue
        start = i
        # " ?" in front of \p{L}+, \p{N}+ and [^\s\p{L}\p{N}]+: one ASCII space
        # joins the run after it, whatever that run's class (only white space
        # can follow a space without starting one of those three runs).
        if char == " " and i + 1 < n and kinds[i + 1] != _SPACE:
            i += 1
        end = _RUN.match(kinds, i).end()
        if kinds[i] == _SPACE and end < n and end - start > 1:
            # \s+(?!\S): a white-space run followed by a non-space gives its
            # last character back, to lead the next pre-token (or, if that
            # character is not an ASCII space, to be a one-character \s+).
            end -= 1
        pieces.append(text[start:end])
        i = end
    return pieces


# ---------------------------------------------------------------------------
# Errors for files


class _MergeError(ValueError):
    """A bad merge; ``rank`` lets a file reader name the line."""

    def __init__(self, rank: int, message: str):
        super().__init__(message)
        self.rank = rank


class TokenizerFileError(FileNotFoundError, ValueError):
    """A tokenizer file is missing.  It is both a FileNotFoundError and a
    ValueError, so either ``except`` clause catches it."""


def _read_text(path, what: str) -> str:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise TokenizerFileError(2, f"{what} file not found", path) from None
    except IsADirectoryError:
        raise ValueError(f"{what} path {path!r} is a directory, expected a file") from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what} file {path!r} is not valid UTF-8 (byte offset {err.start})"
        ) from None


class _DuplicateKey(Exception):
    """Raised by _refuse_duplicate_keys; carries the repeated key."""


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    # json.loads silently keeps the last of two equal keys; a token given two
    # ids (or a special-token role given twice) is ambiguous, so refuse it.
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _json_object(text: str, path: str, what: str, expected: str) -> dict:
    """Parse ``text`` (the contents of ``path``) as a JSON object, or raise a ValueError naming the file."""
    try:
        value = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{what} file {path!r} is not valid JSON: {err.msg} at line {err.lineno}, "
            f"column {err.colno}"
        ) from None
    except _DuplicateKey as err:
        raise ValueError(f"{what} file {path!r} has the key {err.args[0]!r} twice") from None
    # ValueError: an integer of more digits than Python converts (4300 by
    # default); RecursionError: arrays or objects nested thousands deep.
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{what} file {path!r} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(  # noqa: TRY004 - a malformed file, not a wrong argument
            f"{what} file {path!r} must hold {expected}, got a JSON {type(value).__name__}"
        )
    return value


def _is_byte_level(pre_tokenizer) -> bool:
    """Whether a tokenizer.json pre_tokenizer is GPT-2's: ByteLevel without a prefix space, alone
    or in a Sequence (with the GPT-2 split pattern, which numgpt's pre-tokenizer applies anyway)."""
    if not isinstance(pre_tokenizer, dict):
        return False
    if pre_tokenizer.get("type") == "Sequence":
        parts = pre_tokenizer.get("pretokenizers") or []
        return any(_is_byte_level(p) for p in parts)
    return pre_tokenizer.get("type") == "ByteLevel" and not pre_tokenizer.get("add_prefix_space", False)


def _parse_vocab(text: str, path: str) -> dict[str, int]:
    vocab = _json_object(text, path, "vocabulary", "a JSON object mapping token -> id")
    for token, token_id in vocab.items():
        if type(token_id) is not int:
            raise ValueError(
                f"vocabulary file {path!r}: the id of token {token!r} must be an integer, "
                f"got {token_id!r}"
            )
    return vocab


def _parse_merges(text: str, path: str) -> tuple[list[tuple[str, str]], int]:
    """The merges of a merges file, and the line number of the first one."""
    lines = text.split("\n")
    # Both Hugging Face and OpenAI write a trailing newline.
    while lines and not lines[-1].strip():
        lines.pop()
    merges = []
    first_rank_line = {}
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\r")
        if number == 1 and line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(
                f"merges file {path!r}, line {number}: expected two tokens separated by "
                f"one space, got {line!r}"
            )
        pair = (parts[0], parts[1])
        if pair in first_rank_line:
            raise ValueError(
                f"merges file {path!r}, line {number}: merge {line!r} repeats line "
                f"{first_rank_line[pair]}"
            )
        first_rank_line[pair] = number
        merges.append(pair)
    has_header = bool(lines) and lines[0].startswith("#version")
    return merges, 2 if has_header else 1


def _parse_special_tokens_map(text: str, path: str) -> list[str]:
    """Tokens named in a Hugging Face ``special_tokens_map.json``; values are a
    token string, a dict with a ``"content"`` string, or a list of either."""
    mapping = _json_object(text, path, "special tokens", "a JSON object")
    tokens = []
    for key, value in mapping.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                item = item.get("content")
            if item is None:  # e.g. "pad_token": null
                continue
            if not isinstance(item, str) or not item:
                raise ValueError(
                    f"special tokens file {path!r}: entry {key!r} must be a token string, "
                    f"got {item!r}"
                )
            if item not in tokens:
                tokens.append(item)
    return tokens


def _write_atomic(path: str, text: str) -> None:
    """Write UTF-8 ``text`` to ``path``: always either the old file or the complete new one."""
    with atomic_writer(path) as f:
        f.write(text.encode("utf-8"))


# ---------------------------------------------------------------------------
# The tokenizer


@register_tokenizer
class BPETokenizer:
    """A byte-level BPE tokenizer: GPT-2's, or one made by :func:`train_bpe`.

    ``encoder`` maps token strings (written in byte symbols, see
    :func:`bytes_to_unicode`) to ids, which must be exactly
    ``0..len(encoder)-1``.  ``merges`` is the ranked list of pairs, best
    first; each pair's parts and its join must be tokens of the vocabulary.
    ``special_tokens`` are tokens that are never produced by BPE and that
    :meth:`encode` recognises literally in the text (default:
    ``{"<|endoftext|>"}`` if that is in the vocabulary, else none).
    """

    kind = "bpe"
    # Pre-tokens remembered with their ids; natural text reuses a few tens of
    # thousands of words, and the limit bounds memory on unnatural text.
    _CACHE_LIMIT = 1 << 18

    def __init__(self, encoder, merges, special_tokens=None):
        if not isinstance(encoder, dict):
            raise TypeError(f"encoder must be a dict of token -> id, got {type(encoder).__name__}")
        size = len(encoder)
        tokens: list[str | None] = [None] * size
        for token, token_id in encoder.items():
            if not isinstance(token, str) or not token:
                raise ValueError(f"encoder keys must be non-empty strings, got {token!r}")
            if type(token_id) is not int and not isinstance(token_id, np.integer):
                raise ValueError(f"the id of token {token!r} must be an int, got {token_id!r}")
            if not 0 <= token_id < size:
                raise ValueError(
                    f"token ids must be exactly 0..{size - 1} (one per token), but token "
                    f"{token!r} has id {token_id}"
                )
            if tokens[token_id] is not None:
                raise ValueError(
                    f"tokens {tokens[token_id]!r} and {token!r} share the id {token_id}"
                )
            tokens[token_id] = token
        self._tokens: list[str] = tokens  # type: ignore[assignment]
        self._encoder = {token: i for i, token in enumerate(tokens)}

        if special_tokens is None:
            special = [EOT] if EOT in self._encoder else []
        elif isinstance(special_tokens, str):
            raise TypeError(
                "special_tokens must be a collection of strings, got the single string "
                f"{special_tokens!r}; wrap it in a list"
            )
        else:
            special = list(dict.fromkeys(special_tokens))
        for token in special:
            if token not in self._encoder:
                raise ValueError(f"special token {token!r} is not in the vocabulary")
        self._special = tuple(sorted(special, key=self._encoder.__getitem__))

        # Every token's bytes.  Ordinary tokens are spelled in byte symbols;
        # special tokens stand for their own text.
        special_set = set(self._special)
        token_bytes = []
        for token in tokens:
            if token in special_set:
                token_bytes.append(_utf8(token, f"special token {token!r}"))
                continue
            try:
                token_bytes.append(bytes(_SYMBOL_TO_BYTE[s] for s in token))
            except KeyError:
                bad = next(s for s in token if s not in _SYMBOL_TO_BYTE)
                raise ValueError(
                    f"token {token!r} (id {self._encoder[token]}) contains {bad!r}, which is "
                    "not one of the 256 byte symbols of bytes_to_unicode(); declare it as a "
                    "special token if it stands for itself"
                ) from None
        self._token_bytes = token_bytes
        missing = [s for s in _BASE_SYMBOLS if s not in self._encoder or s in special_set]
        if missing:
            raise ValueError(
                f"the vocabulary lacks {len(missing)} of the 256 byte symbols (e.g. "
                f"{missing[0]!r} for byte {_SYMBOL_TO_BYTE[missing[0]]}), so some texts "
                "could not be encoded"
            )

        if isinstance(merges, (str, bytes)):
            raise TypeError("merges must be a list of (a, b) pairs, got a string")
        ranks: dict[tuple[str, str], int] = {}
        pairs: list[tuple[str, str]] = []
        for rank, pair in enumerate(merges):
            if (
                not isinstance(pair, (tuple, list))
                or len(pair) != 2
                or not all(isinstance(p, str) and p for p in pair)
            ):
                raise _MergeError(
                    rank, f"merge {rank} must be a pair of non-empty strings, got {pair!r}"
                )
            pair = (pair[0], pair[1])
            if pair in ranks:
                raise _MergeError(rank, f"merge {rank} {pair!r} repeats merge {ranks[pair]}")
            for part in (*pair, pair[0] + pair[1]):
                if part not in self._encoder:
                    raise _MergeError(
                        rank,
                        f"merge {rank} {pair!r}: {part!r} is not in the vocabulary "
                        "(do the vocabulary and merges files belong together?)",
                    )
                if part in special_set:
                    raise _MergeError(
                        rank, f"merge {rank} {pair!r} involves the special token {part!r}"
                    )
            ranks[pair] = rank
            pairs.append(pair)
        self._merges = pairs
        self._ranks = ranks

        self._cache: dict[str, tuple[int, ...]] = {}
        self._special_patterns: dict[frozenset, re.Pattern | None] = {}

    # -- properties -----------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``range(vocab_size)``."""
        return len(self._tokens)

    @property
    def eot_token(self) -> int | None:
        """Id of ``<|endoftext|>`` if it is a special token, else None."""
        return self._encoder[EOT] if EOT in self._special else None

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """The special tokens, in id order."""
        return self._special

    @property
    def encoder(self):
        """Read-only view of token string -> id."""
        return MappingProxyType(self._encoder)

    @property
    def merges(self) -> tuple[tuple[str, str], ...]:
        """The merges, best (lowest rank) first."""
        return tuple(self._merges)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for."""
        token_id = operator.index(token_id)
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of range 0..{self.vocab_size - 1}")
        return self._token_bytes[token_id]

    # -- encoding -------------------------------------------------------------

    def _bpe(self, symbols: str) -> tuple[int, ...]:
        """Ids of one pre-token, given as its string of byte symbols.

        This is GPT-2's algorithm (merge every occurrence of the lowest-ranked
        adjacent pair, left to right, until no pair has a rank) with a heap of
        ``(rank, position)`` so that a long pre-token, e.g. a paragraph of
        Chinese with no spaces, costs O(n log n) rather than O(n^2).
        """
        if len(symbols) == 1:
            return (self._encoder[symbols],)
        ranks = self._ranks
        parts: list[str | None] = list(
            symbols
        )  # None marks a symbol merged into its left neighbour
        n = len(parts)
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            rank = ranks.get((parts[i], parts[i + 1]))
            if rank is not None:
                heap.append((rank, i))
        heapq.heapify(heap)
        while heap:
            rank = heap[0][0]
            a, b = self._merges[rank]
            # One round: pop every entry of this rank; they come out in
            # position order, which gives GPT-2's left-to-right,
            # non-overlapping replacement.  Entries can be stale (their
            # symbols have since changed), so each is checked.
            merged = []
            while heap and heap[0][0] == rank:
                i = heapq.heappop(heap)[1]
                j = nxt[i]
                if parts[i] != a or j < 0 or parts[j] != b:
                    continue
                parts[i] = a + b
                parts[j] = None
                k = nxt[j]
                nxt[i] = k
                if k >= 0:
                    prv[k] = i
                merged.append(i)
            # New neighbours are ranked only after the round, as in GPT-2
            # (a joined symbol can never re-form the pair of this round).
            for i in merged:
                h = prv[i]
                if h >= 0:
                    r = ranks.get((parts[h], parts[i]))
                    if r is not None:
                        heapq.heappush(heap, (r, h))
                k = nxt[i]
                if k >= 0:
                    r = ranks.get((parts[i], parts[k]))
                    if r is not None:
                        heapq.heappush(heap, (r, i))
        encoder = self._encoder
        ids = []
        i = 0
        while i >= 0:
            ids.append(encoder[parts[i]])
            i = nxt[i]
        return tuple(ids)

    def _special_pattern(self, allowed_special) -> re.Pattern | None:
        if isinstance(allowed_special, str):
            if allowed_special != "all":
                raise ValueError(
                    f'allowed_special must be "all" or a collection of special tokens, '
                    f"got the string {allowed_special!r}"
                )
            allowed = frozenset(self._special)
        else:
            try:
                allowed = frozenset(allowed_special)
            except TypeError:
                raise TypeError(
                    f'allowed_special must be "all" or a collection of special tokens, '
                    f"got {type(allowed_special).__name__}"
                ) from None
            unknown = allowed - set(self._special)
            if unknown:
                raise ValueError(
                    f"allowed_special names {sorted(unknown)!r}, which are not special tokens "
                    f"of this tokenizer (those are {list(self._special)!r})"
                )
        if allowed not in self._special_patterns:
            # Longest first, so a special token that begins another one does
            # not cut it short.
            alternatives = sorted(allowed, key=lambda t: (-len(t), t))
            self._special_patterns[allowed] = (
                re.compile("|".join(map(re.escape, alternatives))) if alternatives else None
            )
        return self._special_patterns[allowed]

    def _encode_ordinary(self, text: str, out: list[int]) -> None:
        cache = self._cache
        for piece in pretokenize(text):
            ids = cache.get(piece)
            if ids is None:
                ids = self._bpe(_to_symbols(piece.encode("utf-8")))
                if len(cache) >= self._CACHE_LIMIT:
                    cache.clear()
                cache[piece] = ids
            out.extend(ids)

    def encode(self, text: str, allowed_special="all") -> list[int]:
        """Text -> ids.

        Special tokens in ``allowed_special`` (``"all"``, the default, or a
        collection of them) that occur literally in ``text`` become their
        single id, and the text on either side is encoded separately; others
        are encoded like any other text.  Raises ValueError for text that
        UTF-8 cannot encode (lone surrogates).
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        _utf8(text)
        pattern = self._special_pattern(allowed_special)
        out: list[int] = []
        if pattern is None:
            self._encode_ordinary(text, out)
            return out
        start = 0
        for match in pattern.finditer(text):
            self._encode_ordinary(text[start : match.start()], out)
            out.append(self._encoder[match.group()])
            start = match.end()
        self._encode_ordinary(text[start:], out)
        return out

    # -- decoding -------------------------------------------------------------

    def _id_list(self, ids) -> list[int]:
        return as_id_list(ids, self.vocab_size)

    def decode_bytes(self, ids) -> bytes:
        """Ids -> the bytes they stand for (useful when streaming, where a
        character may be split across tokens)."""
        token_bytes = self._token_bytes
        return b"".join([token_bytes[i] for i in self._id_list(ids)])

    def decode(self, ids) -> str:
        """Ids (a list or 1-D integer array) -> text.  Byte sequences that are
        not valid UTF-8 (a model can emit any) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- files ----------------------------------------------------------------

    def save(self, directory) -> None:
        """Write Hugging Face's ``vocab.json`` and ``merges.txt`` (readable by
        ``transformers.GPT2Tokenizer``) and ``special_tokens_map.json`` into
        ``directory`` (created if needed).  Existing files of those names are
        replaced atomically."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        vocab = json.dumps(self._encoder, ensure_ascii=False, indent=0)
        merges = "".join(f"{a} {b}\n" for a, b in self._merges)
        special: dict = {}
        if EOT in self._special:
            # GPT-2's own map: <|endoftext|> does every job.
            special.update(bos_token=EOT, eos_token=EOT, unk_token=EOT)
        others = [t for t in self._special if t != EOT]
        if others:
            special["additional_special_tokens"] = others
        _write_atomic(os.path.join(directory, "vocab.json"), vocab + "\n")
        _write_atomic(os.path.join(directory, "merges.txt"), "#version: 0.2\n" + merges)
        _write_atomic(
            os.path.join(directory, "special_tokens_map.json"),
            json.dumps(special, ensure_ascii=False, indent=2) + "\n",
        )

    @classmethod
    def from_files(cls, vocab_path, merges_path, special_tokens=None) -> BPETokenizer:
        """Load a vocabulary file (``vocab.json``/``encoder.json``) and a merges
        file (``merges.txt``/``vocab.bpe``)."""
        vocab_path, merges_path = os.fspath(vocab_path), os.fspath(merges_path)
        encoder = _parse_vocab(_read_text(vocab_path, "vocabulary"), vocab_path)
        merges, first_line = _parse_merges(_read_text(merges_path, "merges"), merges_path)
        try:
            return cls(encoder, merges, special_tokens)
        except _MergeError as err:
            raise ValueError(
                f"merges file {merges_path!r}, line {first_line + err.rank} (with vocabulary "
                f"{vocab_path!r}): {err}"
            ) from None
        except ValueError as err:
            raise ValueError(f"{vocab_path!r} with {merges_path!r}: {err}") from None

    @classmethod
    def from_tokenizer_json(cls, path) -> BPETokenizer:
        """Load a Hugging Face ``tokenizer.json`` (the one file ``tokenizers`` and
        transformers' fast tokenizers write) holding a byte-level BPE model."""
        path = os.fspath(path)
        spec = _json_object(_read_text(path, "tokenizer"), path, "tokenizer", "a JSON object")
        model = spec.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE":
            found = model.get("type") if isinstance(model, dict) else model
            raise ValueError(f"tokenizer file {path!r}: numgpt reads byte-level BPE models, this one is {found!r}")
        if not _is_byte_level(spec.get("pre_tokenizer")):
            raise ValueError(f"tokenizer file {path!r}: its pre_tokenizer is not GPT-2's ByteLevel one "
                             f"(without a prefix space), which is the only one numgpt implements")
        encoder, raw_merges = model.get("vocab"), model.get("merges")
        if not isinstance(encoder, dict) or not all(type(i) is int for i in encoder.values()):
            raise ValueError(f"tokenizer file {path!r}: model.vocab must map tokens to integer ids")
        if not isinstance(raw_merges, list):
            raise ValueError(f"tokenizer file {path!r}: model.merges must be a list")
        merges = []
        for rank, merge in enumerate(raw_merges):
            pair = merge.split(" ") if isinstance(merge, str) else merge    # "a b" (older) or ["a", "b"]
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t for t in pair)):
                raise ValueError(f"tokenizer file {path!r}: merge {rank} must be two tokens, got {merge!r}")
            merges.append((pair[0], pair[1]))
        encoder, special = dict(encoder), []
        for added in spec.get("added_tokens") or []:
            if not (isinstance(added, dict) and isinstance(added.get("content"), str)
                    and type(added.get("id")) is int):
                raise ValueError(f"tokenizer file {path!r}: an added token needs 'id' and 'content', got {added!r}")
            if encoder.setdefault(added["content"], added["id"]) != added["id"]:
                raise ValueError(f"tokenizer file {path!r}: added token {added['content']!r} has id {added['id']} "
                                 f"but the vocabulary gives it {encoder[added['content']]}")
            if added.get("special"):
                special.append(added["content"])
        try:
            return cls(encoder, merges, special)
        except _MergeError as err:
            raise ValueError(f"tokenizer file {path!r}, merge {err.rank}: {err}") from None
        except ValueError as err:
            raise ValueError(f"tokenizer file {path!r}: {err}") from None

    @classmethod
    def from_dir(cls, path) -> BPETokenizer:
        """Load a directory in Hugging Face layout (``vocab.json`` +
        ``merges.txt``, plus ``special_tokens_map.json`` if present; or a
        ``tokenizer.json`` alone) or OpenAI layout (``encoder.json`` + ``vocab.bpe``)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise TokenizerFileError(2, "tokenizer directory not found", path)
        if not os.path.isdir(path):
            raise ValueError(
                f"tokenizer path {path!r} is a file; from_dir expects the directory that holds "
                "vocab.json + merges.txt (or encoder.json + vocab.bpe); use from_files for files"
            )
        for vocab_name, merges_name in (
            ("vocab.json", "merges.txt"),
            ("encoder.json", "vocab.bpe"),
        ):
            vocab_path = os.path.join(path, vocab_name)
            merges_path = os.path.join(path, merges_name)
            if os.path.exists(vocab_path) and os.path.exists(merges_path):
                special = None
                map_path = os.path.join(path, "special_tokens_map.json")
                if os.path.exists(map_path):
                    special = _parse_special_tokens_map(
                        _read_text(map_path, "special tokens"), map_path
                    )
                return cls.from_files(vocab_path, merges_path, special)
        if os.path.exists(os.path.join(path, TOKENIZER_JSON)):
            return cls.from_tokenizer_json(os.path.join(path, TOKENIZER_JSON))
        present = sorted(os.listdir(path))
        raise TokenizerFileError(
            2,
            "no tokenizer files: expected vocab.json + merges.txt or tokenizer.json (Hugging Face), or "
            f"encoder.json + vocab.bpe (OpenAI); the directory holds {present[:10]!r}",
            path,
        )

    def to_state(self) -> dict:
        """A JSON-able dict from which :meth:`from_state` rebuilds this
        tokenizer (for storing inside a training checkpoint)."""
        return {
            "kind": self.kind,
            "tokens": list(self._tokens),
            "merges": [f"{a} {b}" for a, b in self._merges],
            "special_tokens": list(self._special),
        }

    @classmethod
    def from_state(cls, state: dict) -> BPETokenizer:
        if not isinstance(state, dict):
            raise TypeError(f"tokenizer state must be a dict, got {type(state).__name__}")
        if state.get("kind") != cls.kind:
            raise ValueError(
                "BPETokenizer.from_state expects a state with kind='bpe', "
                f"got kind={state.get('kind')!r}"
            )
        tokens, merges, special = (state.get(k) for k in ("tokens", "merges", "special_tokens"))
        for name, value in (("tokens", tokens), ("merges", merges), ("special_tokens", special)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(
                    f"bpe tokenizer state needs {name!r} as a list of strings, got {value!r:.80}"
                )
        if len(set(tokens)) != len(tokens):
            raise ValueError("bpe tokenizer state has repeated tokens")
        pairs = []
        for number, merge in enumerate(merges):
            pair = merge.split(" ")
            if len(pair) != 2:
                raise ValueError(f"bpe tokenizer state: merge {number} {merge!r} is not 'a b'")
            pairs.append((pair[0], pair[1]))
        return cls({t: i for i, t in enumerate(tokens)}, pairs, special)

    # -- comparison -----------------------------------------------------------

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, BPETokenizer)
            and other._tokens == self._tokens
            and other._merges == self._merges
            and other._special == self._special
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.vocab_size, len(self._merges), self._special))

    def __repr__(self) -> str:
        return (
            f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self._merges)}, "
            f"special_tokens={list(self._special)})"
        )


# ---------------------------------------------------------------------------
# Training


def train_bpe(
    text: str, vocab_size: int, special_tokens=(EOT,), verbose: bool = False
) -> BPETokenizer:
    """Learn a byte-level BPE vocabulary of ``vocab_size`` tokens from ``text``.

    The vocabulary is the 256 byte symbols (ids 0..255, GPT-2's order), then
    one token per merge in the order learned, then ``special_tokens`` (so
    ``<|endoftext|>`` is the last id, as in GPT-2).  Special tokens occurring
    in ``text`` are cut out before counting, so no merge ever spans or
    rebuilds one.  Each step merges the most frequent adjacent pair within
    the pre-tokens; ties go to the pair whose (left bytes, right bytes) is
    smallest, so training is deterministic.  If two different merges spell
    the same bytes (``"a"+"bc"`` and ``"ab"+"c"``) both are kept as merges
    and share one token.  If the text runs out of pairs first, the
    vocabulary is smaller than asked.

    Pair counts are updated incrementally: an index from each pair to the
    words that contain it means a merge only touches the words it changes.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens must be a collection of strings, got the single string "
            f"{special_tokens!r}; wrap it in a tuple"
        )
    special = list(special_tokens)
    for token in special:
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty strings, got {token!r}")
    if len(set(special)) != len(special):
        raise ValueError(f"special_tokens must be distinct, got {special!r}")
    if type(vocab_size) is not int and not isinstance(vocab_size, np.integer):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    smallest = 256 + len(special)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size must be at least {smallest} (256 byte tokens + {len(special)} special "
            f"tokens), got {vocab_size}"
        )
    _utf8(text)
    started = time.perf_counter()

    # Word counts over pre-tokens, with special tokens cut out of the text.
    if special:
        cutter = re.compile("|".join(map(re.escape, sorted(special, key=lambda t: (-len(t), t)))))
        segments = cutter.split(text)
    else:
        segments = [text]
    word_counts: Counter[str] = Counter()
    for segment in segments:
        word_counts.update(pretokenize(segment))

    # Token ids and their bytes; ids 0..255 are the bytes in GPT-2's order.
    token_bytes = [bytes([_SYMBOL_TO_BYTE[s]]) for s in _BASE_SYMBOLS]
    id_of_bytes = {tb: i for i, tb in enumerate(token_bytes)}
    byte_id = [id_of_bytes[bytes([b])] for b in range(256)]

    words: list[list[int]] = []
    freqs: list[int] = []
    for word, count in word_counts.items():
        words.append([byte_id[b] for b in word.encode("utf-8")])
        freqs.append(count)

    pair_counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in itertools.pairwise(word):
            pair_counts[pair] = pair_counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(w)

    # Max-heap on count, then smallest bytes; stale entries (count changed
    # since) are skipped when popped, as every change pushes a fresh entry.
    def entry(pair, count):
        return (-count, token_bytes[pair[0]], token_bytes[pair[1]], pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    merged_pairs: set[tuple[int, int]] = set()
    target = vocab_size - len(special)
    report_every = max(1, (target - 256) // 10)
    while len(token_bytes) < target and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg_count or neg_count == 0:
            continue
        a, b = pair
        joined = token_bytes[a] + token_bytes[b]
        new_id = id_of_bytes.get(joined)
        if new_id is None:
            new_id = len(token_bytes)
            token_bytes.append(joined)
            id_of_bytes[joined] = new_id
        if pair not in merged_pairs:
            # A pair can re-form only when a later merge re-used an existing
            # token; its first rank already covers it.
            merged_pairs.add(pair)
            merges.append(pair)
        if verbose and len(merges) % report_every == 0:
            print(
                f"merge {len(merges)}: {joined.decode('utf-8', 'replace')!r} "
                f"(count {-neg_count}, vocab {len(token_bytes)}/{target})",
                flush=True,
            )

        delta: dict[tuple[int, int], int] = {}
        for w in where.pop(pair):
            word, freq = words[w], freqs[w]
            new_word = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                    new_word.append(new_id)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            old_pairs = Counter(itertools.pairwise(word))
            new_pairs = Counter(itertools.pairwise(new_word))
            for p, c in old_pairs.items():
                delta[p] = delta.get(p, 0) - c * freq
                if p not in new_pairs and p != pair:
                    where[p].discard(w)
            for p, c in new_pairs.items():
                delta[p] = delta.get(p, 0) + c * freq
                where.setdefault(p, set()).add(w)
            words[w] = new_word
        for p, d in delta.items():
            if d == 0:
                continue
            count = pair_counts.get(p, 0) + d
            if count:
                pair_counts[p] = count
                heapq.heappush(heap, entry(p, count))
            else:
                del pair_counts[p]
                where.pop(p, None)

    # Assemble the vocabulary in byte-symbol spelling.
    symbols = [_to_symbols(tb) for tb in token_bytes]
    encoder = {s: i for i, s in enumerate(symbols)}
    for token in special:
        if token in encoder:
            raise ValueError(
                f"special token {token!r} is also a learned token (byte symbols spell it); "
                "choose a special token string that cannot occur as text, like <|name|>"
            )
        encoder[token] = len(encoder)
    merge_strings = [(symbols[a], symbols[b]) for a, b in merges]
    tokenizer = BPETokenizer(encoder, merge_strings, special)
    if verbose:
        print(
            f"trained {tokenizer.vocab_size} tokens ({len(merges)} merges) from "
            f"{len(text):,} characters in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return tokenizer


def tokens_per_char(tokenizer, text: str) -> float:
    """Average number of tokens per character of ``text`` (lower means the
    tokenizer compresses better; a byte tokenizer gives >= 1)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text:
        raise ValueError("text must be non-empty to measure tokens per character")
    return len(tokenizer.encode(text)) / len(text)
