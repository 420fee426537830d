"""numgpt prepare and token files: streamed encoding, the file formats, reading them back (numgpt's,
nanoGPT's, llm.c's), flat memory through np.memmap, and the command line end to end."""

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt.bpe import EOT, pretokenize, train_bpe
from numgpt.cli import main
from numgpt.data import DataError, TextData, TokenFileData, prepare_data
from numgpt.tokenfiles import (LLMC_MAGIC, META_NAME, TRAIN_NAME, VAL_NAME, _Cutter, _Progress, open_token_dir,
                               prepare, text_pieces, token_dtype)
from numgpt.tokenizers import ByteTokenizer, CharTokenizer, encode_array

from measure import PRINT_PEAK_KIB

# Text that exercises every rule of GPT-2's pre-tokenizer: contractions, runs of spaces before words,
# tabs, CRLF, no-break spaces, digits, symbols, accents, CJK, emoji, a literal end-of-text token.
MIXED = (
    "I'm here:  123abc\n\nShe said 'twas   fine -- wasn't it?\r\n\tTabs\tand\u00a0nbsp 3.14159 "
    "caf\u00e9 na\u0308ive \u4f60\u597d\u4e16\u754c \U0001f600!! don't  'll 's 'S\n"
    "THE END.<|endoftext|>Second   document\u2003em space\n   \n" + "x" * 300 + " done\n"
)

LINES = ["To be, or not to be, that is the question:", "Whether 'tis nobler in the mind to suffer",
         "The slings and arrows of outrageous fortune,", "Or to take arms against a sea of troubles"]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe("\n".join(LINES * 20) + MIXED, 300)


@pytest.fixture
def textfile(tmp_path):
    rng = np.random.default_rng(0)
    text = "\n".join(LINES[i] for i in rng.integers(0, len(LINES), 400)) + "\n" + MIXED
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8", newline="")
    return path


def read_tokens(directory):
    meta = json.loads((directory / META_NAME).read_text())
    dtype = "<u2" if meta["dtype"] == "uint16" else "<u4"
    train = np.fromfile(directory / TRAIN_NAME, dtype=dtype)
    val = np.fromfile(directory / VAL_NAME, dtype=dtype)
    return meta, train, val


def streamed_ids(text, tokenizer, chunk_bytes, tmp_path):
    path = tmp_path / "stream.txt"
    path.write_text(text, encoding="utf-8", newline="")
    pieces = [piece for piece, _ in text_pieces([str(path)], tokenizer, "", chunk_bytes)]
    assert "".join(pieces) == text
    return pieces, np.concatenate([encode_array(tokenizer, p).astype(np.int64) for p in pieces])


# --- streaming: chunk by chunk equals the whole ----------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_streamed_encoding_equals_whole_encoding(kind, chunk_bytes, bpe, tmp_path):
    text = MIXED * 3
    tokenizer = {"char": CharTokenizer.from_text(text), "byte": ByteTokenizer(), "bpe": bpe}[kind]
    pieces, ids = streamed_ids(text, tokenizer, chunk_bytes, tmp_path)
    if chunk_bytes < 100:
        assert len(pieces) > 5                       # the text really was cut
    np.testing.assert_array_equal(ids, np.asarray(tokenizer.encode(text)))


@given(st.lists(st.sampled_from([" ", "  ", "\n", "\t", "\r\n", "\u00a0", "\u3000", "'", "'s", "'ll", "a", "Bc",
                                  "7", "42", ".", "--", "\u00e9", "\u4f60", "\U0001f600", EOT]),
                max_size=40).map("".join), st.integers(1, 12))
def test_bpe_streaming_cuts_only_at_pre_token_boundaries(bpe, tmp_path_factory, text, chunk_bytes):
    if not text:
        return
    tmp = tmp_path_factory.mktemp("hyp")
    pieces, ids = streamed_ids(text, bpe, chunk_bytes, tmp)
    np.testing.assert_array_equal(ids, np.asarray(bpe.encode(text), dtype=np.int64))
    # Stronger than equal ids (which a small vocabulary may give by luck): the same pre-tokens.
    assert [t for piece in pieces for t in pretokenize(piece)] == pretokenize(text)


def test_bpe_cut_is_before_white_space_after_a_non_space(bpe):
    cutter = _Cutter(bpe)
    text = "one two  three\n\nfour"
    at = cutter.cut(text)
    assert (text[:at], text[at:]) == ("one two  three", "\n\nfour")
    assert cutter.cut("nowhitespace") == 0 and cutter.cut("   \n ") == 0
    assert _Cutter(CharTokenizer("ab")).cut("abab") == 4          # char and byte cut anywhere


# --- prepare: files, dtype, split, meta.json ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["char", "byte", "bpe", "gpt2-dir"])
def test_prepare_writes_the_split_of_the_whole_encoding(kind, textfile, bpe, tmp_path):
    text = textfile.read_bytes().decode("utf-8")
    if kind == "gpt2-dir":
        bpe.save(tmp_path / "gpt2")
        spec, expected_tok = str(tmp_path / "gpt2"), bpe
    else:
        spec = kind
        expected_tok = {"char": CharTokenizer.from_text(text), "byte": ByteTokenizer(),
                        "bpe": train_bpe(text, 300)}[kind]
    out = tmp_path / "out"
    meta = prepare(textfile, out, spec, vocab_size=300, chunk_bytes=97, log=lambda *a: None,
                   progress_stream=io.StringIO())
    on_disk, train, val = read_tokens(out)
    assert on_disk == meta
    expected = np.asarray(expected_tok.encode(text))
    n_train = int(len(expected) * 0.9)                  # numgpt train's split of the same text
    np.testing.assert_array_equal(train, expected[:n_train])
    np.testing.assert_array_equal(val, expected[n_train:])
    assert meta["format"] == "numgpt-tokens" and meta["version"] == 1
    assert (meta["dtype"], meta["byteorder"]) == ("uint16", "little")
    assert (meta["train_tokens"], meta["val_tokens"]) == (n_train, len(expected) - n_train)
    assert meta["vocab_size"] == expected_tok.vocab_size and meta["max_id"] == expected.max()
    assert meta["tokenizer"] == expected_tok.to_state()
    assert sorted(os.listdir(out)) == [META_NAME, TRAIN_NAME, VAL_NAME]         # no temporary files left


def test_token_files_are_little_endian_uint16(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("ab" * 50, encoding="utf-8")
    prepare(path, tmp_path / "out", "byte", log=lambda *a: None, progress_stream=io.StringIO())
    raw = (tmp_path / "out" / TRAIN_NAME).read_bytes()
    assert raw[:4] == bytes([ord("a"), 0, ord("b"), 0])


def test_token_dtype_widens_past_65536_ids(tmp_path):
    assert token_dtype(65536) == np.dtype("<u2") and token_dtype(65537) == np.dtype("<u4")
    # A character vocabulary of 70,000 code points needs uint32 ids.
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 20_000)] + [chr(c) for c in range(0x20000, 0x20000 + 50_000)]
    text = "".join(chars) * 2
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    meta = prepare(path, tmp_path / "out", "char", chunk_bytes=50_000, log=lambda *a: None,
                   progress_stream=io.StringIO())
    assert (meta["dtype"], meta["vocab_size"]) == ("uint32", 70_000)
    _, train, val = read_tokens(tmp_path / "out")
    ids = np.concatenate([train, val])
    np.testing.assert_array_equal(ids, np.tile(np.arange(70_000), 2))
    assert (tmp_path / "out" / TRAIN_NAME).stat().st_size == 4 * meta["train_tokens"]
    data = prepare_data(str(tmp_path / "out"), block_size=8)
    assert data.train_ids.dtype == np.dtype("<u4") and data.vocab_size == 70_000


def test_a_directory_is_its_sorted_files_joined(tmp_path, bpe):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "b.txt").write_text("second document " * 20, encoding="utf-8")
    (docs / "a.txt").write_text("\ufeff" + "first document " * 20, encoding="utf-8")    # the BOM is dropped
    (docs / "sub" / "c.txt").write_text("third " * 30, encoding="utf-8")
    (docs / ".hidden").write_text("never read", encoding="utf-8")
    joined = ["first document " * 20, "second document " * 20, "third " * 30]
    quiet = dict(log=lambda *a: None, progress_stream=io.StringIO(), chunk_bytes=16)

    meta = prepare(docs, tmp_path / "char", "char", **quiet)
    _, train, val = read_tokens(tmp_path / "char")
    tok = CharTokenizer.from_state(meta["tokenizer"])
    assert tok.decode(np.concatenate([train, val])) == "\n".join(joined)
    assert meta["source"]["files"] == 3 and meta["source"]["separator"] == "\n"

    bpe.save(tmp_path / "gpt2")
    meta = prepare(docs, tmp_path / "bpe", str(tmp_path / "gpt2"), **quiet)
    _, train, val = read_tokens(tmp_path / "bpe")
    ids = np.concatenate([train, val])
    assert list(ids) == bpe.encode(EOT.join(joined))
    assert (ids == bpe.eot_token).sum() == 2 and meta["source"]["separator"] == EOT


def test_bpe_trains_on_a_bounded_sample(textfile, tmp_path):
    text = textfile.read_bytes().decode("utf-8")
    meta = prepare(textfile, tmp_path / "out", "bpe", vocab_size=280, bpe_sample_chars=500,
                   log=lambda *a: None, progress_stream=io.StringIO())
    assert meta["tokenizer"] == train_bpe(text[:500], 280).to_state()


def test_two_worker_processes_write_the_same_files(textfile, bpe, tmp_path):
    bpe.save(tmp_path / "gpt2")
    quiet = dict(log=lambda *a: None, progress_stream=io.StringIO(), chunk_bytes=512)
    prepare(textfile, tmp_path / "one", str(tmp_path / "gpt2"), workers=1, **quiet)
    prepare(textfile, tmp_path / "two", str(tmp_path / "gpt2"), workers=2, **quiet)
    for name in (TRAIN_NAME, VAL_NAME, META_NAME):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_workers_are_capped_at_the_cores_and_the_chunks(textfile, tmp_path, monkeypatch):
    import numgpt.tokenfiles as tokenfiles

    notes, pools = [], []
    real_encoded = tokenfiles._encoded

    def encoded(pieces, tokenizer, dtype, workers):
        pools.append(workers)
        return real_encoded(pieces, tokenizer, dtype, workers)

    monkeypatch.setattr(tokenfiles, "_encoded", encoded)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    quiet = dict(log=notes.append, progress_stream=io.StringIO())
    size = textfile.stat().st_size
    prepare(textfile, tmp_path / "one", "char", workers=1, **quiet)
    # A chunk size that cuts the text into about 9 pieces: the cap is the 3 "cores".
    prepare(textfile, tmp_path / "many", "char", workers=1000, chunk_bytes=size // 8, **quiet)
    # One chunk: no pool at all, whatever was asked for.
    prepare(textfile, tmp_path / "single", "char", workers=8, chunk_bytes=size + 1, **quiet)
    assert pools == [1, 3, 1]
    assert [n for n in notes if "workers asked for" in n] == [
        f"note: 1000 workers asked for, but this machine has 3 core(s) and the text gives about "
        f"{size // (size // 8) + 1} chunk(s) to encode: using 3",
        "note: 8 workers asked for, but this machine has 3 core(s) and the text gives about 1 chunk(s) "
        "to encode: using 1"]
    for out in ("many", "single"):
        for name in (TRAIN_NAME, VAL_NAME):
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / out / name).read_bytes()


def test_an_interrupted_prepare_leaves_the_old_files_and_no_temporary_ones(textfile, tmp_path, monkeypatch):
    import numgpt.tokenfiles as tokenfiles

    quiet = dict(log=lambda *a: None, progress_stream=io.StringIO(), chunk_bytes=64)
    out = tmp_path / "out"
    prepare(textfile, out, "byte", **quiet)
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    calls = []

    def encode_then_fail(tokenizer, text, dtype):
        calls.append(1)
        if len(calls) >= 3:
            raise KeyboardInterrupt
        return encode_array(tokenizer, text).astype(dtype)

    monkeypatch.setattr(tokenfiles, "_encode", encode_then_fail)
    with pytest.raises(KeyboardInterrupt):
        prepare(textfile, out, "char", overwrite=True, **quiet)
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    with pytest.raises(KeyboardInterrupt):
        prepare(textfile, tmp_path / "fresh", "char", **quiet)
    assert os.listdir(tmp_path / "fresh") == []


@pytest.mark.parametrize("present", [("train.bin", "val.bin", "meta.json"), ("train.bin", "val.bin")])
def test_prepare_refuses_token_files_already_there_unless_overwrite(textfile, tmp_path, present, capsys):
    # numgpt's own, or a nanoGPT directory (train.bin and val.bin alone): hours of tokenizing to redo.
    out = tmp_path / "out"
    out.mkdir()
    for name in present:
        (out / name).write_bytes(b"\x01\x00" * 10)
    before = {name: (out / name).read_bytes() for name in present}
    with pytest.raises(DataError, match=rf"{out} already holds token files \({', '.join(present)}\); prepare "
                                        rf"into another --out, or pass --overwrite"):
        prepare(textfile, out, "byte", log=lambda *a: None, progress_stream=io.StringIO())
    assert {name: (out / name).read_bytes() for name in present} == before
    assert main(["prepare", "--data", str(textfile), "--out", str(out)]) == 1
    assert "already holds token files" in capsys.readouterr().err
    assert {name: (out / name).read_bytes() for name in present} == before
    assert main(["prepare", "--data", str(textfile), "--out", str(out), "--overwrite"]) == 0
    assert open_token_dir(out).train.count > 10


def test_prepare_records_a_data_path_that_is_not_utf8(textfile, tmp_path):
    # The name's bytes reach Python as lone surrogates; meta.json keeps them escaped, and nothing is
    # renamed into --out unless meta.json can be written.
    path = os.path.join(os.fsencode(tmp_path), b"corpus-\xff.txt")
    with open(path, "wb") as f:
        f.write(textfile.read_bytes())
    out = tmp_path / "out"
    meta = prepare(os.fsdecode(path), out, "byte", log=lambda *a: None, progress_stream=io.StringIO())
    assert sorted(os.listdir(out)) == sorted([META_NAME, TRAIN_NAME, VAL_NAME])
    assert json.loads((out / META_NAME).read_text(encoding="utf-8"))["source"]["data"] == meta["source"]["data"]
    assert open_token_dir(out).train.count == meta["train_tokens"]


def test_prepare_errors_are_clear(tmp_path):
    quiet = dict(log=lambda *a: None, progress_stream=io.StringIO())
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text " * 10 + b"\xff and more")
    with pytest.raises(DataError, match=r"bad.txt is not UTF-8 text: invalid byte at byte offset 100"):
        prepare(bad, tmp_path / "out", "char", chunk_bytes=7, **quiet)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        prepare(tmp_path / "empty.txt", tmp_path / "out", "byte", **quiet)
    (tmp_path / "short.txt").write_text("a", encoding="utf-8")
    with pytest.raises(DataError, match="too few to split"):
        prepare(tmp_path / "short.txt", tmp_path / "out", "byte", **quiet)
    with pytest.raises(ValueError, match="tokenizer must be 'char', 'byte', 'bpe' or a GPT-2 tokenizer directory"):
        prepare(tmp_path / "short.txt", tmp_path / "out", "words", **quiet)
    with pytest.raises(DataError, match="inside the data directory"):
        prepare(tmp_path, tmp_path / "out", "byte", **quiet)
    assert not (tmp_path / "out" / META_NAME).exists()


def test_progress_rewrites_one_line_on_a_terminal_and_prints_lines_otherwise():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, log = Terminal(), io.StringIO()
    for stream in (tty, log):
        progress = _Progress("encoding", 4_000_000, stream, interval=0)
        progress.update(1_000_000)
        progress.update(2_000_000)
        progress.finish()
    assert tty.getvalue().count("\r") == 3 and tty.getvalue().count("\n") == 1
    assert "encoding: 2.0/4.0 MB (50%)" in tty.getvalue() and "MB/s, ETA" in tty.getvalue()
    lines = log.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("encoding: 1.0/4.0 MB (25%), ") and "\r" not in log.getvalue()
    quiet = _Progress("encoding", 100, io.StringIO(), interval=None)
    assert quiet.interval == 5.0                        # not a terminal: a line every few seconds


# --- reading: the same data as training on the text --------------------------------------------------


def test_a_prepared_directory_gives_the_batches_of_the_text(textfile, tmp_path):
    prepare(textfile, tmp_path / "out", "char", chunk_bytes=100, log=lambda *a: None,
            progress_stream=io.StringIO())
    from_text = prepare_data(str(textfile), block_size=16, tokenizer_kind="char", log=lambda *a: None)
    from_files = prepare_data(str(tmp_path / "out"), block_size=16)
    assert isinstance(from_text, TextData) and isinstance(from_files, TokenFileData)
    assert isinstance(from_files.train_ids, np.memmap) and not from_files.train_ids.flags.writeable
    assert from_files.tokenizer == from_text.tokenizer and from_files.vocab_size == from_text.vocab_size
    assert from_files.task is None and "token files" in from_files.description
    for split in ("train", "val"):
        a = from_text.batch(split, 8, 16, np.random.default_rng(3))
        b = from_files.batch(split, 8, 16, np.random.default_rng(3))
        for x, y in zip(a, b):
            assert y.dtype == np.int64
            np.testing.assert_array_equal(x, y)


def test_token_data_pickles_as_file_names_and_reopens(textfile, tmp_path):
    prepare(textfile, tmp_path / "out", "byte", log=lambda *a: None, progress_stream=io.StringIO())
    data = prepare_data(str(tmp_path / "out"), block_size=16)
    blob = pickle.dumps(data)
    assert len(blob) < 2000 < data.train_ids.nbytes
    again = pickle.loads(blob)
    assert isinstance(again.train_ids, np.memmap)
    for x, y in zip(data.batch("train", 4, 16, np.random.default_rng(0)),
                    again.batch("train", 4, 16, np.random.default_rng(0))):
        np.testing.assert_array_equal(x, y)


def test_a_prepared_directory_refuses_another_tokenizer(textfile, tmp_path):
    prepare(textfile, tmp_path / "out", "char", log=lambda *a: None, progress_stream=io.StringIO())
    with pytest.raises(DataError, match="were made by CharTokenizer"):
        prepare_data(str(tmp_path / "out"), block_size=8, tokenizer=ByteTokenizer())


def test_bad_meta_and_sizes_are_reported(textfile, tmp_path):
    out = tmp_path / "out"
    prepare(textfile, out, "byte", log=lambda *a: None, progress_stream=io.StringIO())
    meta = json.loads((out / META_NAME).read_text())
    (out / META_NAME).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DataError, match="format version 99, this numgpt reads version 1"):
        prepare_data(str(out), block_size=8)
    (out / META_NAME).write_text(json.dumps({**meta, "train_tokens": meta["train_tokens"] + 1}))
    with pytest.raises(DataError, match=r"train.bin: meta.json says .* but the file has"):
        prepare_data(str(out), block_size=8)
    (out / META_NAME).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="the validation tokens .* has"):
        prepare_data(str(out), block_size=meta["val_tokens"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no token files.*numgpt prepare --data"):
        prepare_data(str(empty), block_size=8)


# --- nanoGPT and llm.c files ---------------------------------------------------------------------------


def write_llmc(path, tokens, magic=LLMC_MAGIC, version=1, count=None, dtype="<u2"):
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=dtype).tobytes())


@pytest.mark.parametrize("dtype, named, n", [("<i8", "int64", "20,000"), ("<i4", "int32/uint32", "10,000"),
                                             ("<u4", "int32/uint32", "10,000")])
def test_nanogpt_files_of_wider_ids_are_refused_not_read_as_uint16(tmp_path, dtype, named, n):
    # ids.tofile() of NumPy's default int64: read as uint16 three tokens in four would be 0.
    rng = np.random.default_rng(0)
    rng.integers(0, 65, 5000).astype(dtype).tofile(tmp_path / TRAIN_NAME)
    rng.integers(0, 65, 600).astype("<u2").tofile(tmp_path / VAL_NAME)
    with pytest.raises(DataError, match=rf"train.bin: every second uint16 of its first {n} is zero, so it "
                                        rf"looks like {named} ids.*ids.astype\(np.uint16\).tofile"):
        prepare_data(str(tmp_path), block_size=16, vocab_size=65)
    # Genuine uint16 tokens with many zeros (id 0 common) still read, as do files too short to judge.
    tokens = np.where(rng.random(5000) < 0.45, 0, rng.integers(1, 65, 5000)).astype("<u2")
    tokens.tofile(tmp_path / TRAIN_NAME)
    np.testing.assert_array_equal(prepare_data(str(tmp_path), block_size=16, vocab_size=65).train_ids, tokens)
    np.arange(1, 31, dtype="<i4").tofile(tmp_path / TRAIN_NAME)      # 60 uint16: fewer than 64 proves nothing
    assert prepare_data(str(tmp_path), block_size=8, vocab_size=65).train_ids.size == 60


def test_nanogpt_files_are_read_with_the_given_vocab_size(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 65, 5000).astype("<u2"), rng.integers(0, 65, 600).astype("<u2")
    train.tofile(tmp_path / TRAIN_NAME)
    val.tofile(tmp_path / VAL_NAME)
    (tmp_path / "meta.pkl").write_bytes(b"not a pickle: numgpt must never load it")
    data = prepare_data(str(tmp_path), block_size=16, vocab_size=65)
    np.testing.assert_array_equal(data.train_ids, train)
    np.testing.assert_array_equal(data.val_ids, val)
    assert data.vocab_size == 65 and data.tokenizer is None
    assert "nanoGPT" in data.description and "meta.pkl is not read" in data.description
    with pytest.raises(DataError, match=r"train.bin: holds token id 64, not below the vocabulary size 60 .*"
                                        r"--vocab_size 65"):
        prepare_data(str(tmp_path), block_size=16, vocab_size=60)
    with open(tmp_path / VAL_NAME, "ab") as f:
        f.write(b"\x01")
    with pytest.raises(DataError, match=r"val.bin: 1,201 bytes is not a whole number of uint16 tokens"):
        prepare_data(str(tmp_path), block_size=16, vocab_size=65)


def test_a_vocabulary_beside_foreign_tokens_is_their_tokenizer(tmp_path, bpe):
    ids = np.asarray(bpe.encode("\n".join(LINES * 10)), dtype="<u2")
    write_llmc(tmp_path / "tiny_train.bin", ids)
    write_llmc(tmp_path / "tiny_val.bin", ids[:200])
    bpe.save(tmp_path)
    data = prepare_data(str(tmp_path), block_size=16, vocab_size=7)
    assert data.tokenizer == bpe and data.vocab_size == bpe.vocab_size


def test_llmc_shards_are_read_and_bad_headers_rejected(tmp_path):
    rng = np.random.default_rng(1)
    train, val = rng.integers(0, 50257, 4000), rng.integers(0, 50257, 500)
    write_llmc(tmp_path / "tiny_shakespeare_train.bin", train)
    write_llmc(tmp_path / "tiny_shakespeare_val.bin", val)
    data = prepare_data(str(tmp_path), block_size=32, vocab_size=50257)
    np.testing.assert_array_equal(data.train_ids, train)
    np.testing.assert_array_equal(data.val_ids, val)
    assert "llm.c" in data.description and data.train_ids.dtype == np.dtype("<u2")
    x, y = data.batch("val", 2, 32, np.random.default_rng(0))
    assert x.dtype == np.int64 and x.shape == (2, 32)

    val_path = tmp_path / "tiny_shakespeare_val.bin"
    write_llmc(val_path, val, magic=12345)
    with pytest.raises(DataError, match=r"val.bin: not an llm.c token file: magic number 12345, expected 20240520"):
        prepare_data(str(tmp_path), block_size=32, vocab_size=50257)
    write_llmc(val_path, val, version=2)
    with pytest.raises(DataError, match="has version 2, expected 1"):
        prepare_data(str(tmp_path), block_size=32, vocab_size=50257)
    write_llmc(val_path, val, count=501)
    with pytest.raises(DataError, match=r"the header says 501 tokens \(1,002 bytes after the header\) but the "
                                        r"file has 1,000 bytes"):
        prepare_data(str(tmp_path), block_size=32, vocab_size=50257)
    val_path.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="truncated llm.c token file: its header needs 1024 bytes, the file has 100"):
        prepare_data(str(tmp_path), block_size=32, vocab_size=50257)
    write_llmc(val_path, val)
    write_llmc(tmp_path / "tiny_shakespeare_train_2.bin", train)
    with pytest.raises(DataError, match="expected one llm.c train shard and one val shard"):
        prepare_data(str(tmp_path), block_size=32, vocab_size=50257)


def test_llmc_files_named_like_nanogpt_files_are_recognised(tmp_path):
    write_llmc(tmp_path / TRAIN_NAME, np.arange(3000) % 100)
    write_llmc(tmp_path / VAL_NAME, np.arange(400) % 100)
    found = open_token_dir(tmp_path, vocab_size=100)
    assert found.train.offset == 1024 and found.train.count == 3000 and "llm.c" in found.description


# --- memory stays flat ---------------------------------------------------------------------------------

def _child_env():
    """The environment of a child Python that imports this checkout's numgpt."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from numgpt.data import prepare_data

    directory, mode = sys.argv[1], sys.argv[2]
    if mode == "memmap":
        data = prepare_data(directory, block_size=128, vocab_size=50257)
        rng = np.random.default_rng(0)
        for _ in range(50):
            for split in ("train", "val"):
                x, y = data.batch(split, 16, 128, rng)
        assert x.dtype == np.int64
    else:   # the negative control: what loading the file would cost
        ids = np.fromfile(directory + "/train.bin", dtype="<u2")
        ids[::512].sum()
""") + PRINT_PEAK_KIB


def test_training_batches_from_token_files_keep_resident_memory_flat(tmp_path):
    n_tokens = 150 * 2**20                            # 300 MiB of uint16
    chunk = (np.arange(16 * 2**20) % 50257).astype("<u2")         # written a chunk at a time, never held whole
    with open(tmp_path / TRAIN_NAME, "wb") as f:
        for start in range(0, n_tokens, len(chunk)):
            chunk[: n_tokens - start].tofile(f)
    (np.arange(100_000) % 50257).astype("<u2").tofile(tmp_path / VAL_NAME)
    size_kib = (tmp_path / TRAIN_NAME).stat().st_size // 1024

    def peak_kib(mode):
        done = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path), mode], capture_output=True, text=True,
                              env=_child_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip())

    flat = peak_kib("memmap")
    assert flat < size_kib / 3, f"peak RSS {flat} KiB reading a {size_kib} KiB token file"
    assert peak_kib("load") > size_kib                # the measure does see a loaded file


_PREPARE_CHILD = textwrap.dedent("""
    import io, sys
    from numgpt.tokenfiles import prepare

    prepare(sys.argv[1], sys.argv[2], "byte", chunk_bytes=1 << 18, log=lambda *a: None,
            progress_stream=io.StringIO())
""") + PRINT_PEAK_KIB


def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path):
    block = ("\n".join(LINES) + "\n").encode("utf-8") * 1000
    peaks = {}
    for mb in (2, 32):
        path = tmp_path / f"corpus{mb}.txt"
        with open(path, "wb") as f:
            for _ in range(mb * 2**20 // len(block)):
                f.write(block)
        done = subprocess.run([sys.executable, "-c", _PREPARE_CHILD, str(path), str(tmp_path / f"out{mb}")],
                              capture_output=True, text=True, env=_child_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        peaks[mb] = int(done.stdout.strip())
    assert peaks[32] < peaks[2] + 8 * 1024, peaks           # 30 MB more text, under 8 MB more memory


# --- the command line ------------------------------------------------------------------------------

TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
        "--max_iters", "12", "--eval_interval", "6", "--eval_iters", "2", "--warmup_iters", "2",
        "--lr_decay_iters", "12", "--log_interval", "6", "--sample_tokens", "0", "--seed", "0"]


def test_cli_prepare_then_train_matches_training_on_the_text(textfile, tmp_path, capsys):
    tokens = tmp_path / "tokens"
    assert main(["prepare", "--data", str(textfile), "--out", str(tokens), "--chunk_mb", "1"]) == 0
    captured = capsys.readouterr()
    assert "train with: numgpt train --data" in captured.out and "encoding:" in captured.err
    assert sorted(os.listdir(tokens)) == [META_NAME, TRAIN_NAME, VAL_NAME]

    assert main(["train", "--data", str(tokens), "--out_dir", str(tmp_path / "run1"), *TINY]) == 0
    from_files = capsys.readouterr().out
    assert main(["train", "--data", str(textfile), "--out_dir", str(tmp_path / "run2"), *TINY]) == 0
    from_text = capsys.readouterr().out
    done = [line for line in from_files.splitlines() if line.startswith("done:")]
    assert done and done[0].split(", checkpoint")[0] in from_text
    # The checkpoint holds the tokenizer from meta.json, so it samples text, and a resumed run
    # accepts the directory because its tokenizer is the checkpoint's.
    assert main(["sample", "--out_dir", str(tmp_path / "run1"), "--max_new_tokens", "10", "--seed", "0"]) == 0
    assert main(["train", "--resume", "--out_dir", str(tmp_path / "run1"), "--max_iters", "14"]) == 0
    assert "done: 14 iterations" in capsys.readouterr().out


def test_cli_trains_on_nanogpt_files_with_the_given_vocab_size(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rng.integers(0, 65, 3000).astype("<u2").tofile(tmp_path / TRAIN_NAME)
    rng.integers(0, 65, 400).astype("<u2").tofile(tmp_path / VAL_NAME)
    assert main(["train", "--data", str(tmp_path), "--vocab_size", "65", "--out_dir", str(tmp_path / "run"),
                 *TINY]) == 0
    out = capsys.readouterr().out
    assert "nanoGPT token files" in out and "vocabulary 65" in out and "done: 12 iterations" in out
    assert main(["train", "--data", str(tmp_path), "--vocab_size", "50", "--out_dir", str(tmp_path / "run2"),
                 *TINY]) == 1
    assert "not below the vocabulary size 50" in capsys.readouterr().err


def test_cli_train_on_a_directory_without_tokens_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("text")
    assert main(["train", "--data", str(tmp_path / "docs"), "--out_dir", str(tmp_path / "run"), *TINY]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "holds no token files" in err and "numgpt prepare" in err


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 1 << 16])
def test_only_a_leading_byte_order_mark_is_dropped_and_empty_files_are_skipped(tmp_path, chunk_bytes):
    from numgpt.tokenfiles import _decoded_chunks

    (tmp_path / "a").write_bytes("\ufeff\ufeffx".encode("utf-8"))    # the second one is text, as for utf-8-sig
    (tmp_path / "b").write_bytes(b"")
    (tmp_path / "c").write_bytes("y\u00e9z".encode("utf-8"))
    paths = [str(tmp_path / name) for name in "abc"]
    assert "".join(t for t, _ in _decoded_chunks(paths, "|", chunk_bytes)) == "\ufeffx|y\u00e9z"
