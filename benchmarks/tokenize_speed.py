"""Tokenizing speed: ``numgpt prepare`` with a GPT-2-format BPE vocabulary against Hugging Face
``tokenizers`` and ``tiktoken`` with the very same vocabulary, in MB of text per second.

Offline there is no GPT-2 vocabulary to download, so the script trains one with numgpt on the text
itself (``train_bpe``, ``--vocab_size`` tokens, saved as ``vocab.json`` + ``merges.txt``) and gives
it to all three: ``tokenizers`` loads the two files as a byte-level BPE, and ``tiktoken`` gets the
same vocabulary as mergeable ranks (token bytes -> id; a trained vocabulary's ids are its merge
order, which is what tiktoken's ranks mean) with GPT-2's pre-tokenizer pattern.  Before timing, it
checks that all three give identical ids on the whole text.

numgpt is timed end to end (``prepare``: read, encode, write ``train.bin``/``val.bin``), with one
process and with ``--workers`` processes; the other two are timed encoding the text in memory, on one
call (one thread) and on a batch of lines (their own thread pools).  The text is the original file
(every word new to each tokenizer's cache) and the file repeated to about ``--mb`` MB.

    pip install tokenizers tiktoken        # for this benchmark only; numgpt does not need them
    python benchmarks/tokenize_speed.py --text ../shared/data/tinyshakespeare.txt
"""

import argparse
import io
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from numgpt.bpe import EOT, BPETokenizer, train_bpe  # noqa: E402
from numgpt.tokenfiles import prepare  # noqa: E402

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def hf_tokenizer(directory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE.from_file(os.path.join(directory, "vocab.json"),
                                         os.path.join(directory, "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([EOT])
    return tok


def tiktoken_encoding(bpe):
    import tiktoken

    ranks = {bpe.token_bytes(i): i for i in range(bpe.vocab_size) if i != bpe.eot_token}
    return tiktoken.Encoding(name="numgpt-bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: bpe.eot_token})


def cpu_seconds():
    """CPU time of this process (all its threads) and of its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best_of(repeats, fn):
    """``(wall seconds, CPU seconds)`` of the fastest of ``repeats`` calls (by wall time)."""
    runs = []
    for _ in range(repeats):
        cpu, start = cpu_seconds(), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start, cpu_seconds() - cpu))
    return min(runs)


def prepared_ids(directory):
    return np.concatenate([np.fromfile(os.path.join(directory, name), dtype="<u2")
                           for name in ("train.bin", "val.bin")]).astype(np.int64)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = os.path.dirname(os.path.abspath(__file__))
    # ../shared/data beside the repository (a clone in /work/main, or a worktree one level deeper).
    candidates = [os.path.join(here, *[".."] * up, "shared", "data", "tinyshakespeare.txt") for up in (2, 3)]
    default = next((c for c in candidates if os.path.exists(c)), candidates[0])
    parser.add_argument("--text", default=os.path.normpath(default), help="a UTF-8 text file")
    parser.add_argument("--mb", type=float, default=10.0, help="repeat the text to about this many MB")
    parser.add_argument("--vocab_size", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2, help="numgpt prepare --workers for the parallel run")
    parser.add_argument("--chunk_mb", type=int, default=1, help="numgpt prepare --chunk_mb")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many for tokenizers and tiktoken")
    args = parser.parse_args()

    with open(args.text, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    copies = max(1, round(args.mb * 1e6 / len(raw)))
    start = time.perf_counter()
    bpe = train_bpe(text, args.vocab_size)
    print(f"trained a {bpe.vocab_size}-token BPE on {args.text} ({len(raw) / 1e6:.2f} MB) in "
          f"{time.perf_counter() - start:.1f} s; {len(bpe.merges)} merges")
    hf_tok = tok = enc = None
    with tempfile.TemporaryDirectory() as tmp:
        vocab_dir = os.path.join(tmp, "vocab")
        bpe.save(vocab_dir)
        bpe = BPETokenizer.from_dir(vocab_dir)
        try:
            hf_tok = hf_tokenizer(vocab_dir)
        except ImportError:
            print("tokenizers is not installed (pip install tokenizers): skipped")
        try:
            enc = tiktoken_encoding(bpe)
        except ImportError:
            print("tiktoken is not installed (pip install tiktoken): skipped")
        big_path = os.path.join(tmp, "big.txt")
        with open(big_path, "wb") as f:
            for _ in range(copies):
                f.write(raw)
        big = text * copies
        inputs = [("original", args.text, text, len(raw)), (f"x{copies}", big_path, big, len(raw) * copies)]

        # The same ids from all three, on the whole original text.
        expected = np.asarray(bpe.encode(text))
        if hf_tok is not None:
            assert np.array_equal(hf_tok.encode(text).ids, expected), "tokenizers gives other ids"
        if enc is not None:
            assert np.array_equal(enc.encode(text, allowed_special="all"), expected), "tiktoken gives other ids"
        compared = [name for name, tok in (("tokenizers", hf_tok), ("tiktoken", enc)) if tok is not None]
        if compared:
            print(f"identical ids from numgpt and {' and '.join(compared)} on the whole text ({len(expected):,} tokens)")
        else:
            print("no other tokenizer installed to compare ids with")

        rows = []
        # numgpt first: its worker processes are forked, and a fork after tokenizers has used its
        # thread pool switches that pool off.
        for label, path, content, nbytes in inputs:
            mb = nbytes / 1e6
            for workers in (1, args.workers):
                out = os.path.join(tmp, f"out-{label}-{workers}")
                timing = best_of(1, lambda: prepare(path, out, vocab_dir, workers=workers,
                                                        chunk_bytes=args.chunk_mb << 20, log=lambda *a: None,
                                                        progress_stream=io.StringIO()))
                rows.append((label, f"numgpt prepare, {workers} process{'es' if workers > 1 else ''}", mb, timing))
                if label == "original":
                    assert np.array_equal(prepared_ids(out), expected)
        for label, path, content, nbytes in inputs:
            mb = nbytes / 1e6
            lines = content.splitlines(keepends=True)
            blocks = ["".join(lines[i:i + 64]) for i in range(0, len(lines), 64)]
            if hf_tok is not None:
                rows.append((label, "tokenizers, one call", mb,
                             best_of(args.repeats, lambda: hf_tok.encode(content).ids)))
                rows.append((label, "tokenizers, encode_batch of 64-line blocks", mb,
                             best_of(args.repeats, lambda: hf_tok.encode_batch(blocks))))
            if enc is not None:
                rows.append((label, "tiktoken, one call", mb,
                             best_of(args.repeats, lambda: enc.encode(content, allowed_special="all"))))
                rows.append((label, f"tiktoken, encode_batch of 64-line blocks, {args.workers} threads", mb,
                             best_of(args.repeats, lambda: enc.encode_batch(blocks, allowed_special="all",
                                                                            num_threads=args.workers))))
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    # On a shared machine the wall clock also counts other people's work; CPU seconds do not, but
    # they add up every thread and process, so they say nothing about what parallelism buys.
    print("\n| text | tokenizer | MB/s (wall) | MB per CPU-second |\n|---|---|---|---|")
    for label, name, mb, (wall, cpu) in rows:
        print(f"| {label} | {name} | {mb / wall:.2f} | {mb / cpu:.2f} |")


if __name__ == "__main__":
    main()
