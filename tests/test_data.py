"""Tests for numgpt.data: the built-in corpus, the download, loading, batching.

Nothing here touches the network: downloads come from file:// URLs of files
the tests write, or from a patched urlopen.
"""

import hashlib
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import data
from numgpt.data import (
    SHAKESPEARE_SHA256,
    SHAKESPEARE_SIZE,
    DataError,
    check_data_fits,
    default_corpus,
    download_shakespeare,
    get_batch,
    load_text,
    split_train_val,
)

# -- the built-in corpus --------------------------------------------------------


def test_default_corpus_is_a_sizeable_english_text():
    text = default_corpus()
    assert isinstance(text, str)
    assert 400_000 < len(text) < 1_500_000
    letters_and_spaces = sum(c.isascii() and (c.isalpha() or c == " ") for c in text)
    assert letters_and_spaces / len(text) > 0.8
    assert ">>>" not in text  # doctest lines are dropped
    assert "\n\n\n" not in text  # blank-line runs collapse, paragraphs survive
    assert "\n\n" in text
    assert not any(line != line.rstrip() for line in text.splitlines())
    assert len(set(text)) < 200  # a small character vocabulary
    # A few phrases any version of the standard library documents.
    for phrase in ("Return", "argument", "file", "the"):
        assert phrase in text


def test_default_corpus_is_deterministic():
    text = default_corpus()
    assert default_corpus() is text  # cached in-process
    # Recomputed from scratch, in this process with its many extra imports...
    assert default_corpus.__wrapped__() == text
    # ...and in a fresh interpreter, even one run with -OO (which strips
    # docstrings from imported modules: the corpus is read from source).
    code = (
        "import sys, numgpt.data as d; "
        "sys.stdout.buffer.write(d.default_corpus().encode('utf-8'))"
    )
    fresh = subprocess.run(
        [sys.executable, "-OO", "-c", code], capture_output=True, check=True, timeout=60
    ).stdout.decode("utf-8")
    assert fresh == text


def test_clean_docstring():
    doc = """Summary line.

        Body text with trailing spaces.   



        Example:

        >>> f(1)
        2
        >>> g(
        ...     3)

        After the example.
        """
    assert data._clean_docstring(doc) == (
        "Summary line.\n\nBody text with trailing spaces.\n\nExample:\n\nAfter the example."
    )


def test_load_text_default():
    text, description = load_text("default")
    assert text == default_corpus()
    assert "built-in" in description and f"{len(text):,}" in description


# -- loading files --------------------------------------------------------------


def test_load_text_reads_a_utf8_file_exactly(tmp_path):
    path = tmp_path / "poem.txt"
    content = "Shall I compare thee\r\nto a summer’s day?\n"
    path.write_bytes(content.encode("utf-8"))
    text, description = load_text(str(path))
    assert text == content  # byte-exact: no newline translation
    assert str(path) in description
    assert load_text(path)[0] == content  # a Path works too
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfhello")
    assert load_text(str(bom))[0] == "hello"


def test_load_text_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="does not exist") as info:
        load_text(str(path))
    assert str(path) in str(info.value)


def test_load_text_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory") as info:
        load_text(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_load_text_empty_file(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is empty") as info:
        load_text(str(path))
    assert str(path) in str(info.value)


def test_load_text_non_utf8_reports_the_byte_offset(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("naïve café".encode("latin-1"))
    with pytest.raises(DataError) as info:
        load_text(str(path))
    message = str(info.value)
    assert str(path) in message
    assert "not UTF-8" in message
    assert "byte offset 2" in message and "0xef" in message
    # The offset is a true file offset even after a byte-order mark.
    bom = tmp_path / "bom.txt"
    bom.write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(DataError, match="byte offset 5"):
        load_text(str(bom))


def test_data_error_is_a_value_error_and_bad_spec_types():
    assert issubclass(DataError, ValueError)
    with pytest.raises(TypeError, match="spec"):
        load_text(42)
    with pytest.raises(DataError, match="empty"):
        load_text("")


# -- downloading tiny Shakespeare -------------------------------------------------


@pytest.fixture
def remote(tmp_path):
    """A small 'remote' file served by file:// URL, with its size and hash."""
    source = tmp_path / "remote" / "input.txt"
    source.parent.mkdir()
    payload = b"ROMEO:\nBut, soft! what light through yonder window breaks?\n" * 50
    source.write_bytes(payload)
    return {
        "url": source.as_uri(),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
        "payload": payload,
    }


def _kwargs(remote):
    return {"url": remote["url"], "sha256": remote["sha256"], "size": remote["size"]}


def test_download_success_and_cache_reuse(tmp_path, remote, monkeypatch):
    cache = tmp_path / "cache"
    path = download_shakespeare(cache, **_kwargs(remote))
    assert path.parent == cache and path.read_bytes() == remote["payload"]
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temp files left

    def no_network(*args, **kwargs):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert download_shakespeare(cache, **_kwargs(remote)) == path


def test_download_replaces_a_corrupt_cached_copy(tmp_path, remote):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tinyshakespeare.txt").write_bytes(b"truncated")
    path = download_shakespeare(cache, **_kwargs(remote))
    assert path.read_bytes() == remote["payload"]


def test_download_checksum_mismatch_is_refused_and_not_cached(tmp_path, remote):
    cache = tmp_path / "cache"
    kwargs = _kwargs(remote) | {"sha256": "0" * 64}
    with pytest.raises(DataError) as info:
        download_shakespeare(cache, **kwargs)
    message = str(info.value)
    assert "SHA-256" in message and remote["sha256"] in message and "not kept" in message
    assert "--data" in message
    assert list(cache.iterdir()) == []


def test_download_size_mismatch_is_refused_and_not_cached(tmp_path, remote):
    cache = tmp_path / "cache"
    for size in (remote["size"] + 1, remote["size"] - 1):
        with pytest.raises(DataError, match="bytes, expected"):
            download_shakespeare(cache, **(_kwargs(remote) | {"size": size}))
        assert list(cache.iterdir()) == []


def test_download_network_error_suggests_data_flag(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        download_shakespeare(cache)
    message = str(info.value)
    assert "could not download tiny Shakespeare" in message
    assert data.SHAKESPEARE_URL in message
    assert "name resolution" in message
    assert "--data PATH" in message
    assert not (cache / "tinyshakespeare.txt").exists()
    assert list(cache.iterdir()) == []


def test_download_missing_file_url(tmp_path):
    with pytest.raises(DataError, match="could not download.*--data"):
        download_shakespeare(tmp_path / "cache", url=(tmp_path / "absent.txt").as_uri())


def test_download_uses_numgpt_cache_env(tmp_path, remote, monkeypatch):
    monkeypatch.setenv("NUMGPT_CACHE", str(tmp_path / "envcache"))
    assert data.default_cache_dir() == tmp_path / "envcache"
    path = download_shakespeare(**_kwargs(remote))
    assert path == tmp_path / "envcache" / "tinyshakespeare.txt"


def test_load_text_shakespeare_uses_the_cache(tmp_path, remote, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tinyshakespeare.txt").write_bytes(remote["payload"])
    monkeypatch.setenv("NUMGPT_CACHE", str(cache))
    # load_text calls download_shakespeare() with its defaults, which expect
    # the real 1 MB file; substitute a version that expects the small test
    # file (and whose URL could not be fetched anyway).
    real = data.download_shakespeare
    monkeypatch.setattr(
        data, "download_shakespeare",
        lambda: real(sha256=remote["sha256"], size=remote["size"], url="file:///nonexistent"),
    )
    text, description = load_text("shakespeare")
    assert text == remote["payload"].decode()
    assert "Shakespeare" in description


def test_published_checksum_is_in_the_form_the_check_compares_with():
    # The check compares hexdigest() (64 lowercase hex digits) with SHAKESPEARE_SHA256: an
    # uppercase or truncated constant would refuse every correct download.
    assert len(SHAKESPEARE_SHA256) == 64 and set(SHAKESPEARE_SHA256) <= set("0123456789abcdef")
    assert SHAKESPEARE_SIZE == 1_115_394  # the size of the published input.txt


def test_cached_copy_is_verified_over_every_chunk(tmp_path):
    # A local file several read-chunks long, made here (the suite needs nothing beside the
    # repository): the cached copy is accepted without the network only when its whole content
    # hashes right, so a change in the last chunk alone sends it to the (failing) download.
    payload = bytes(range(256)) * (3 * data._CHUNK // 256) + b"the last, partial chunk"
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "tinyshakespeare.txt"
    cached.write_bytes(payload)
    expected = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}
    offline = (tmp_path / "absent.txt").as_uri()
    assert download_shakespeare(cache, url=offline, **expected) == cached
    cached.write_bytes(payload[:-1] + b"!")
    with pytest.raises(DataError, match="could not download"):
        download_shakespeare(cache, url=offline, **expected)


# -- splitting and batching ---------------------------------------------------------


def test_split_train_val():
    ids = np.arange(1000, dtype=np.uint16)
    train, val = split_train_val(ids)
    assert len(train) == 900 and len(val) == 100
    assert np.array_equal(np.concatenate([train, val]), ids)
    train, val = split_train_val(ids, val_fraction=0.25)
    assert (len(train), len(val)) == (750, 250)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(ids, val_fraction=0.0)
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(ids, val_fraction=1.5)
    with pytest.raises(DataError, match="cannot split 1 tokens"):
        split_train_val(np.array([1]))
    with pytest.raises(ValueError, match="1-D"):
        split_train_val(np.zeros((10, 10), dtype=np.int64))


def test_get_batch_shapes_dtypes_and_shift():
    data_ids = (np.arange(5000) % 251).astype(np.uint16)
    x, y = get_batch(data_ids, batch_size=8, block_size=32, rng=np.random.default_rng(0))
    assert x.shape == y.shape == (8, 32)
    assert x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    assert np.array_equal(x[:, 1:], y[:, :-1])
    # Rows are windows of the periodic data: consecutive values mod 251.
    assert np.array_equal(x, (x[:, :1] + np.arange(32)) % 251)
    assert np.array_equal(y, (x + 1) % 251)


@given(
    n=st.integers(2, 300),
    block_size=st.integers(1, 64),
    batch_size=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_get_batch_windows_property(n, block_size, batch_size, seed):
    if n < block_size + 1:
        with pytest.raises(DataError):
            get_batch(np.arange(n), batch_size, block_size, np.random.default_rng(seed))
        return
    # With data = arange, a window is identified by its first value.
    data_ids = np.arange(n, dtype=np.int32)
    x, y = get_batch(data_ids, batch_size, block_size, np.random.default_rng(seed))
    starts = x[:, 0]
    assert ((0 <= starts) & (starts <= n - block_size - 1)).all()
    assert np.array_equal(x, starts[:, None] + np.arange(block_size))
    assert np.array_equal(y, x + 1)


def test_get_batch_reaches_both_ends_of_the_data():
    data_ids = np.arange(12)
    x, _ = get_batch(data_ids, 500, 10, np.random.default_rng(1))
    assert set(x[:, 0].tolist()) == {0, 1}


def test_get_batch_is_deterministic_per_seed():
    data_ids = np.random.default_rng(5).integers(0, 65, size=10_000).astype(np.uint16)
    a = get_batch(data_ids, 4, 16, np.random.default_rng(123))
    b = get_batch(data_ids, 4, 16, np.random.default_rng(123))
    c = get_batch(data_ids, 4, 16, np.random.default_rng(124))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_get_batch_too_short_data():
    with pytest.raises(DataError) as info:
        get_batch(np.arange(50), 4, 64, np.random.default_rng(0))
    message = str(info.value)
    assert "has 50 tokens" in message and "65 are needed" in message
    assert "--block_size" in message and "at most 49" in message
    with pytest.raises(DataError, match="validation split has 3 tokens"):
        check_data_fits(np.arange(3), 8, what="the validation split")
    check_data_fits(np.arange(9), 8)  # exactly enough: no error


def test_get_batch_argument_errors():
    ids = np.arange(100)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        get_batch(ids, 0, 8, rng)
    with pytest.raises(TypeError, match="block_size must be an int"):
        get_batch(ids, 2, 8.0, rng)
    with pytest.raises(TypeError, match="Generator"):
        get_batch(ids, 2, 8, 0)
    with pytest.raises(TypeError, match="NumPy array"):
        get_batch(list(range(100)), 2, 8, rng)
    with pytest.raises(TypeError, match="integer"):
        get_batch(np.zeros(100), 2, 8, rng)


def test_get_batch_works_on_a_memory_map(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    ids = np.memmap(path, dtype=np.uint16, mode="r")
    x, y = get_batch(ids, 3, 20, np.random.default_rng(0))
    assert type(x) is np.ndarray and x.dtype == np.int64
    assert np.array_equal(y, x + 1)
