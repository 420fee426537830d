"""Fuzzing the BPE tokenizer files: vocab.json, merges.txt, special_tokens_map.json.

The property, for every input: :meth:`numgpt.bpe.BPETokenizer.from_dir`
either raises ValueError (TokenizerFileError, for a missing file, is one)
whose message names the file, or builds exactly the tokenizer the files
describe, as read by the small independent reader below, and that tokenizer
decodes what it encodes.  Never another exception.  (The files are text
with no checksum, so an edit that leaves them valid loads as what they now
say.)

Damage is drawn by Hypothesis at positions in each file of a small trained
tokenizer; hostile contents are drawn per file: vocabulary ids of every JSON
type and size, merges lines of every shape, special-token maps of nested
JSON values.
"""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numgpt.bpe import EOT, BPETokenizer, train_bpe

FILES = ("vocab.json", "merges.txt", "special_tokens_map.json")
TEXT = "the cat sat on the mat. The dog's 123 bones!\n<|endoftext|> naïve café ✓"

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict[str, bytes]:
    tokenizer = train_bpe(TEXT * 3, 290, special_tokens=(EOT, "<|pad|>"))
    directory = tmp_path_factory.mktemp("original")
    tokenizer.save(directory)
    return {name: (directory / name).read_bytes() for name in FILES}


def special_tokens_of(mapping: dict) -> list[str]:
    tokens = []
    for value in mapping.values():
        for item in value if isinstance(value, list) else [value]:
            item = item.get("content") if isinstance(item, dict) else item
            if item is not None and item not in tokens:
                tokens.append(item)
    return tokens


def reference_tokenizer(directory) -> BPETokenizer:
    """What the files say, read the plain way (only called on files that loaded)."""
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = [tuple(line.rstrip("\r").split(" ")) for line in lines]
    special = None
    if (directory / "special_tokens_map.json").exists():
        special = special_tokens_of(json.loads((directory / "special_tokens_map.json").read_text(encoding="utf-8")))
    return BPETokenizer(vocab, merges, special)


def write_files(directory, files: dict[str, bytes]) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir()
    for name, content in files.items():
        if content is not None:
            (directory / name).write_bytes(content)


def load_refused_or_faithful(directory) -> bool:
    """True if the files loaded (as they say), False if refused with a ValueError naming a file."""
    try:
        tokenizer = BPETokenizer.from_dir(directory)
    except ValueError as exc:
        assert str(directory) in str(exc), f"the error does not name the file: {exc}"
        return False
    assert tokenizer == reference_tokenizer(directory)
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    return True


def test_the_original_files_load(tmp_path, original):
    write_files(tmp_path / "tok", original)
    assert load_refused_or_faithful(tmp_path / "tok")
    assert BPETokenizer.from_dir(tmp_path / "tok").special_tokens == (EOT, "<|pad|>")


# ---------------------------------------------------------------------------
# Damaged files

snippets = st.sampled_from(
    [b"[", b"]", b"{", b"}", b'"', b"\\", b",", b":", b" ", b"\n", b"\r", b"\xff", b"\xc3", b"\\ud800",
     b"null", b"true", b"-1", b"1e400", b"9" * 5000, b"[" * 3000, b"#version: 0.2\n", b"\xef\xbb\xbf"]
)


@FUZZ
@given(data=st.data())
def test_damaged_files(tmp_path, original, data):
    name = data.draw(st.sampled_from(FILES))
    content = bytearray(original[name])
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(content)))
        action = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip" and position < len(content):
            content[position] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            content[position:position] = data.draw(snippets | st.binary(min_size=1, max_size=6))
        elif action == "delete":
            del content[position : position + data.draw(st.integers(1, 8))]
        else:
            del content[position:]
    write_files(tmp_path / "tok", {**original, name: bytes(content)})
    load_refused_or_faithful(tmp_path / "tok")


@pytest.mark.parametrize("name", FILES)
def test_missing_or_empty_files(tmp_path, original, name):
    write_files(tmp_path / "tok", {**original, name: None})
    if name == "special_tokens_map.json":  # optional: <|endoftext|> is then the only special token
        assert load_refused_or_faithful(tmp_path / "tok")
    else:
        with pytest.raises(ValueError, match="no tokenizer files") as excinfo:
            BPETokenizer.from_dir(tmp_path / "tok")
        assert isinstance(excinfo.value, FileNotFoundError)  # TokenizerFileError is both
    write_files(tmp_path / "tok", {**original, name: b""})
    assert not load_refused_or_faithful(tmp_path / "tok") or name == "merges.txt"


# ---------------------------------------------------------------------------
# Hostile contents, drawn per file

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
odd_ids = st.one_of(
    st.integers(-3, 300), st.integers(), st.sampled_from([2**63, 10**30, -(2**63)]), json_values
)


@FUZZ
@given(data=st.data())
def test_hostile_vocabulary(tmp_path, original, data):
    vocab = json.loads(original["vocab.json"])
    tokens = list(vocab)
    for _ in range(data.draw(st.integers(1, 3))):
        edit = data.draw(st.sampled_from(["id", "drop", "add", "rename"]))
        token = data.draw(st.sampled_from(tokens))
        if edit == "id":
            vocab[token] = data.draw(odd_ids)
        elif edit == "drop":
            vocab.pop(token, None)
        elif edit == "add":
            vocab[data.draw(st.text(max_size=4))] = data.draw(odd_ids)
        elif token in vocab:
            vocab[data.draw(st.text(max_size=4))] = vocab.pop(token)
    raw = json.dumps(vocab, ensure_ascii=data.draw(st.booleans()))
    if data.draw(st.integers(0, 4)) == 0:  # the same token twice, as JSON allows in text
        raw = raw.replace("{", '{"!": 0, ', 1)
    write_files(tmp_path / "tok", {**original, "vocab.json": raw.encode("utf-8", "surrogatepass")})
    load_refused_or_faithful(tmp_path / "tok")


merge_lines = st.one_of(
    st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=12),
    st.sampled_from(["", " ", "a", "a b c", "a  b", " a b", "a b ", "#version: 0.2", "Ġ t", "t h", "\r", "h e\r"]),
)


@FUZZ
@given(data=st.data())
def test_hostile_merges(tmp_path, original, data):
    lines = original["merges.txt"].decode("utf-8").split("\n")
    for _ in range(data.draw(st.integers(1, 3))):
        edit = data.draw(st.sampled_from(["replace", "insert", "delete", "repeat", "swap"]))
        index = data.draw(st.integers(0, len(lines) - 1))
        if edit == "replace":
            lines[index] = data.draw(merge_lines)
        elif edit == "insert":
            lines.insert(index, data.draw(merge_lines))
        elif edit == "delete" and len(lines) > 1:
            del lines[index]
        elif edit == "repeat":
            lines.insert(data.draw(st.integers(0, len(lines))), lines[index])
        else:
            other = data.draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
    content = "\n".join(lines).encode("utf-8", "surrogatepass")
    write_files(tmp_path / "tok", {**original, "merges.txt": content})
    load_refused_or_faithful(tmp_path / "tok")


special_values = st.one_of(
    st.sampled_from([EOT, "<|pad|>", "<|unknown|>", "", "!", None]),
    st.fixed_dictionaries({"content": st.sampled_from([EOT, "<|pad|>", 5, None, ""])}),
    json_values,
)


@FUZZ
@given(mapping=st.dictionaries(
    st.sampled_from(["bos_token", "eos_token", "unk_token", "pad_token", "additional_special_tokens", "x"]),
    special_values | st.lists(special_values, max_size=3),
    max_size=4,
) | json_values)
def test_hostile_special_tokens_map(tmp_path, original, mapping):
    content = json.dumps(mapping).encode("utf-8", "surrogatepass")
    write_files(tmp_path / "tok", {**original, "special_tokens_map.json": content})
    load_refused_or_faithful(tmp_path / "tok")


@pytest.mark.parametrize(
    "name, content, pattern",
    [
        # Found by fuzzing: RecursionError and bare ValueErrors that did not name
        # the file, and repeated keys that json.loads resolved silently.
        ("vocab.json", b"[" * 100_000 + b"]" * 100_000, "vocab.json' is not valid JSON"),
        ("vocab.json", b'{"!": ' + b"9" * 5000 + b"}", "vocab.json' is not valid JSON"),
        ("special_tokens_map.json", b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "is not valid JSON"),
        ("special_tokens_map.json", b'{"eos_token": "<|endoftext|>", "eos_token": "!"}', "'eos_token' twice"),
    ],
    ids=["deep vocab", "long integer id", "deep special map", "repeated special key"],
)
def test_files_found_by_fuzzing(tmp_path, original, name, content, pattern):
    write_files(tmp_path / "tok", {**original, name: content})
    with pytest.raises(ValueError, match=pattern):
        BPETokenizer.from_dir(tmp_path / "tok")


def test_a_token_given_two_ids_is_refused(tmp_path, original):
    """Found by fuzzing: with '"!": 5' added before '"!": 0', json.loads kept
    the last id and the file loaded as if the first were not there."""
    content = original["vocab.json"].replace(b"{", b'{"!": 5, ', 1)
    write_files(tmp_path / "tok", {**original, "vocab.json": content})
    with pytest.raises(ValueError, match="vocab.json' has the key '!' twice"):
        BPETokenizer.from_dir(tmp_path / "tok")
