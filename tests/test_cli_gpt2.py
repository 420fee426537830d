"""End-to-end tests of the commands around GPT-2 weights, BPE tokenizers and pictures.

Everything runs through ``numgpt.cli.main([...])`` exactly as a user's command
line would, on tiny models and a few kilobytes of text that mixes ASCII with
multi-byte UTF-8 (accents, a snowman, Japanese, currency signs), so that a
byte-level BPE tokenizer has to split characters across tokens:

* ``numgpt tokenizer train`` writes vocab.json + merges.txt that load again;
* ``numgpt train --tokenizer bpe`` keeps the BPE tokenizer in its checkpoint,
  and ``numgpt sample`` uses it;
* ``numgpt train --init_from DIR`` fine-tunes a GPT-2 directory written by
  :func:`numgpt.save_gpt2` (weights) and :meth:`BPETokenizer.save`
  (tokenizer), and ``numgpt sample --init_from DIR`` samples from one;
* ``numgpt plot`` and ``numgpt attention`` draw PNGs, or say how to install
  matplotlib when it is missing.

Every failure must be one clear line on stderr and exit status 1, never a
traceback. Only the tests that render a PNG need matplotlib.
"""

import json
import math
import os
import re
import shutil
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from numgpt import GPT, GPTConfig, load_gpt2, save_gpt2
from numgpt.bpe import BPETokenizer, tokens_per_char, train_bpe
from numgpt.checkpoint import load_checkpoint
from numgpt.cli import main
from numgpt.gpt2 import load_gpt2_tokenizer
from numgpt.sample import generate_text
from numgpt.checkpoint import load_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_SENTENCES = [
    "The lighthouse keeper climbed the stairs at dusk and lit the lamp.",
    "Un café crème, s'il vous plaît, dit la naïve Zoë à l'Hôtel.",
    "Snow fell quietly on the orchard \u2014 \u2603 \u2014 covering the last apples.",
    "東京の天気は晴れです。The price was 5 € or 4 £.",
    "Every Tuesday the baker saved one loaf for the schoolteacher.",
    "Four geese crossed the road in single file while the traffic waited.",
]

# A prompt of characters that are 2, 3 and 3 bytes long in UTF-8.
MULTIBYTE_PROMPT = "café \u2603 東京"

# The smallest model worth training: runs take a fraction of a second.
TINY_FLAGS = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "4",
              "--eval_interval", "10", "--eval_iters", "2", "--warmup_iters", "2", "--lr_decay_iters", "20",
              "--log_interval", "5", "--sample_tokens", "0", "--seed", "0"]

BPE_VOCAB = 300
GPT2_BLOCK = 32


def make_text(n_lines=100, seed=0):
    rng = np.random.default_rng(seed)
    return "\n".join(_SENTENCES[i] for i in rng.integers(0, len(_SENTENCES), n_lines)) + "\n"


@pytest.fixture(scope="module")
def text():
    return make_text()


@pytest.fixture(scope="module")
def textfile(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("data") / "input.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bpe(text):
    tokenizer = train_bpe(text, BPE_VOCAB)
    assert tokenizer.vocab_size == BPE_VOCAB      # the text has pairs enough for every merge
    return tokenizer


@pytest.fixture(autouse=True)
def no_traceback_env(monkeypatch):
    monkeypatch.delenv("NUMGPT_TRACEBACK", raising=False)


def tiny_gpt(vocab_size, seed=0):
    config = GPTConfig(vocab_size=vocab_size, block_size=GPT2_BLOCK, n_layer=1, n_head=2, n_embd=16)
    return GPT(config, seed=seed)


def write_gpt2_dir(directory, tokenizer, model_vocab=None, seed=0):
    """A GPT-2 directory: random weights (config.json + model.safetensors) and the tokenizer files."""
    model = tiny_gpt(tokenizer.vocab_size if model_vocab is None else model_vocab, seed=seed)
    save_gpt2(model, directory)
    tokenizer.save(directory)
    return model


@pytest.fixture
def gpt2_dir(tmp_path, bpe):
    directory = tmp_path / "gpt2-tiny"
    model = write_gpt2_dir(directory, bpe)
    return directory, model


def assert_clean_error(capsys, *fragments):
    """stderr holds the fragments and no traceback; returns it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    return err


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000
    # the atomic write leaves no temporary file behind
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------
# numgpt tokenizer train
# ---------------------------------------------------------------------------


def test_tokenizer_train_writes_loadable_gpt2_files(textfile, text, bpe, tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--data", str(textfile), "--vocab_size", str(BPE_VOCAB),
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert (out / "vocab.json").is_file() and (out / "merges.txt").is_file()
    loaded = BPETokenizer.from_dir(out)
    assert loaded.vocab_size == BPE_VOCAB
    assert loaded == bpe                            # the same vocabulary train_bpe learns
    assert loaded.decode(loaded.encode(text)) == text
    # the printed compression figure is the loaded tokenizer's
    match = re.search(r"([0-9]+\.[0-9]+) tokens per character", stdout)
    assert match, stdout
    assert float(match.group(1)) == pytest.approx(tokens_per_char(loaded, text), abs=6e-4)
    assert float(match.group(1)) < 1.0              # merges compress the text
    assert str(BPE_VOCAB) in stdout and str(out) in stdout
    # vocab.json is plain JSON mapping token -> id over 0..vocab_size-1
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    assert sorted(vocab.values()) == list(range(BPE_VOCAB))
    # the directory is a GPT-2 tokenizer directory as far as load_gpt2_tokenizer is concerned
    assert load_gpt2_tokenizer(out) == loaded


def test_tokenizer_train_refuses_tokenizer_files_already_there_unless_overwrite(textfile, tmp_path, capsys):
    # e.g. a GPT-2 download: its weights mean nothing with another vocabulary
    out = tmp_path / "gpt2"
    out.mkdir()
    (out / "vocab.json").write_text('{"!": 0}', encoding="utf-8")
    argv = ["tokenizer", "train", "--data", str(textfile), "--vocab_size", "260", "--out", str(out)]
    assert main(argv) == 2
    assert_clean_error(capsys, f"numgpt tokenizer train: error: {out} already holds tokenizer files (vocab.json); "
                               f"write into another --out, or pass --overwrite to replace them")
    assert os.listdir(out) == ["vocab.json"] and (out / "vocab.json").read_text(encoding="utf-8") == '{"!": 0}'
    assert main(argv + ["--overwrite"]) == 0
    assert BPETokenizer.from_dir(out).vocab_size == 260


@pytest.mark.parametrize("vocab_size", ["1", "100", "256"])
def test_tokenizer_train_vocab_size_too_small(textfile, tmp_path, vocab_size, capsys):
    out = tmp_path / "tok"
    with pytest.raises(SystemExit) as info:            # a usage error, found by the parser
        main(["tokenizer", "train", "--data", str(textfile), "--vocab_size", vocab_size, "--out", str(out)])
    assert info.value.code == 2
    err = assert_clean_error(capsys, "numgpt tokenizer train: error:", "vocab_size", "257", vocab_size)
    assert err.strip().splitlines()[-1] == \
        f"numgpt tokenizer train: error: --vocab_size must be an integer >= 257, got {vocab_size}"
    assert not (out / "vocab.json").exists()


@pytest.mark.parametrize("vocab_size", ["0", "-5", "lots"])
def test_tokenizer_train_vocab_size_not_a_positive_integer(textfile, tmp_path, vocab_size, capsys):
    with pytest.raises(SystemExit) as info:
        main(["tokenizer", "train", "--data", str(textfile), "--vocab_size", vocab_size,
              "--out", str(tmp_path / "tok")])
    assert info.value.code == 2
    assert_clean_error(capsys, "--vocab_size")


def test_tokenizer_train_missing_data_file(tmp_path, capsys):
    missing = tmp_path / "no-such-file.txt"
    assert main(["tokenizer", "train", "--data", str(missing), "--vocab_size", "300",
                 "--out", str(tmp_path / "tok")]) == 1
    assert_clean_error(capsys, "numgpt tokenizer train: error:", str(missing))
    assert not (tmp_path / "tok").exists()


@pytest.fixture(scope="module")
def cli_tokenizer(tmp_path_factory, textfile):
    out = tmp_path_factory.mktemp("cli-tok")
    assert main(["tokenizer", "train", "--data", str(textfile), "--vocab_size", str(BPE_VOCAB),
                 "--out", str(out)]) == 0
    return BPETokenizer.from_dir(out)


@given(st.text(max_size=60))
def test_written_tokenizer_round_trips_any_text(cli_tokenizer, s):
    ids = cli_tokenizer.encode(s)
    assert all(0 <= i < BPE_VOCAB for i in ids)
    assert cli_tokenizer.decode(ids) == s


# ---------------------------------------------------------------------------
# numgpt train --tokenizer bpe, then numgpt sample
# ---------------------------------------------------------------------------


def test_train_with_bpe_then_sample(textfile, text, bpe, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(textfile), "--out_dir", str(out), "--tokenizer", "bpe",
                 "--vocab_size", str(BPE_VOCAB), "--max_iters", "10", *TINY_FLAGS]) == 0
    stdout = capsys.readouterr().out
    assert "done: 10 iterations" in stdout
    assert "tokens per character" in stdout

    model, tokenizer, meta, _ = load_run(out / "ckpt.npz")
    assert isinstance(tokenizer, BPETokenizer)
    assert tokenizer == bpe
    assert model.config.vocab_size == tokenizer.vocab_size == BPE_VOCAB
    assert meta["train_config"]["tokenizer"] == "bpe"
    assert tokenizer.decode(tokenizer.encode(text)) == text

    # sample continues a multi-byte prompt; the printed text is exactly what the
    # checkpoint's model and tokenizer produce
    argv = ["sample", "--out_dir", str(out), "--prompt", MULTIBYTE_PROMPT, "--max_new_tokens", "20",
            "--seed", "3", "--temperature", "0.9"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(MULTIBYTE_PROMPT)
    expected = generate_text(model, tokenizer, MULTIBYTE_PROMPT, max_new_tokens=20, seed=3, temperature=0.9)
    assert printed == expected[0] + "\n"
    # any character is in a byte-level vocabulary: no prompt is refused
    assert main(["sample", "--out_dir", str(out), "--prompt", "\U0001f980 Ω", "--max_new_tokens", "3",
                 "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("\U0001f980 Ω")


def test_train_bpe_vocab_size_too_small(textfile, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", str(textfile), "--out_dir", str(out), "--tokenizer", "bpe",
                 "--vocab_size", "200", "--max_iters", "1", *TINY_FLAGS]) == 2      # a usage error
    assert_clean_error(capsys, "numgpt train: error:", "vocab_size", "200")
    assert not (out / "ckpt.npz").exists()


# ---------------------------------------------------------------------------
# Fine-tuning a GPT-2 directory: numgpt train --init_from DIR
# ---------------------------------------------------------------------------


def finetune_args(init_from, textfile, out_dir, *extra):
    return ["train", "--init_from", str(init_from), "--data", str(textfile), "--out_dir", str(out_dir),
            "--block_size", "16", "--batch_size", "4", "--eval_interval", "5", "--eval_iters", "2",
            "--warmup_iters", "0", "--learning_rate", "1e-2", "--min_lr", "1e-3", "--lr_decay_iters", "5",
            "--log_interval", "1", "--sample_tokens", "0", "--seed", "0", *extra]


def test_finetune_crops_context_and_lowers_the_loss(gpt2_dir, textfile, bpe, tmp_path, capsys):
    directory, original = gpt2_dir
    out = tmp_path / "ft"
    assert main(finetune_args(directory, textfile, out, "--max_iters", "5")) == 0
    stdout = capsys.readouterr().out
    assert "fine-tuning" in stdout and "done: 5 iterations" in stdout
    assert ("note: block_size 16 keeps the first 16 of the model's 32 positions (the others are not in this "
            "run's checkpoints); --block_size 32 keeps all") in stdout

    model, tokenizer, meta, arrays = load_run(out / "ckpt.npz")
    assert tokenizer == bpe                                    # the directory's tokenizer, kept
    assert model.config.block_size == 16                       # wpe cropped from 32 rows
    assert arrays["params/wpe"].shape == (16, 16)
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd) == (1, 2, 16)
    assert model.config.vocab_size == bpe.vocab_size
    assert meta["iter_num"] == 5
    # the weights moved, but only by a few optimizer steps
    assert not np.array_equal(model.params["wte"], original.params["wte"])

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [r for r in records if "val_loss" in r]
    steps = [r["loss"] for r in records if "loss" in r]
    assert [r["iter"] for r in evals] == [0, 5]
    assert all(math.isfinite(x) for r in evals for x in (r["train_loss"], r["val_loss"]))
    assert all(math.isfinite(x) for x in steps) and len(steps) == 5
    # a random model starts near ln(vocab) and learns the unigram statistics quickly
    assert evals[0]["val_loss"] == pytest.approx(math.log(bpe.vocab_size), abs=0.5)
    assert evals[1]["train_loss"] < evals[0]["train_loss"]
    assert evals[1]["val_loss"] < evals[0]["val_loss"]


def test_finetune_starts_from_the_given_weights(gpt2_dir, textfile, tmp_path):
    directory, original = gpt2_dir
    out = tmp_path / "ft0"
    # zero steps: the checkpoint holds the loaded weights exactly
    assert main(finetune_args(directory, textfile, out, "--max_iters", "0")) == 0
    arrays, _ = load_checkpoint(out / "ckpt.npz")
    for name, value in original.params.items():
        saved = arrays[f"params/{name}"]
        expected = value[:16] if name == "wpe" else value
        np.testing.assert_array_equal(saved, expected, err_msg=name)


def test_finetuned_run_resumes(gpt2_dir, textfile, tmp_path, capsys):
    directory, _ = gpt2_dir
    out = tmp_path / "ft"
    assert main(finetune_args(directory, textfile, out, "--max_iters", "3")) == 0
    assert main(["train", "--resume", "--out_dir", str(out), "--max_iters", "6"]) == 0
    assert "resumed from" in capsys.readouterr().out
    model, _, meta, _ = load_run(out / "ckpt.npz")
    assert meta["iter_num"] == 6 and model.config.block_size == 16


def test_sample_from_a_gpt2_directory(gpt2_dir, bpe, capsys):
    directory, original = gpt2_dir
    argv = ["sample", "--init_from", str(directory), "--prompt", MULTIBYTE_PROMPT, "--max_new_tokens", "12",
            "--seed", "7"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(MULTIBYTE_PROMPT) and len(printed) > len(MULTIBYTE_PROMPT) + 1
    expected = generate_text(load_gpt2(directory), bpe, MULTIBYTE_PROMPT, max_new_tokens=12, seed=7,
                             temperature=0.8)
    assert printed == expected[0] + "\n"
    # the same seed gives the same text
    assert main(argv) == 0
    assert capsys.readouterr().out == printed


def test_finetune_without_tokenizer_files(tmp_path, textfile, bpe, capsys):
    directory = tmp_path / "weights-only"
    save_gpt2(tiny_gpt(bpe.vocab_size), directory)
    out = tmp_path / "ft"
    assert main(finetune_args(directory, textfile, out, "--max_iters", "2")) == 1
    err = assert_clean_error(capsys, "numgpt train: error:", str(directory), "vocab.json", "merges.txt")
    assert "tokenizer" in err
    assert not (out / "ckpt.npz").exists()
    # sampling needs the tokenizer too
    assert main(["sample", "--init_from", str(directory), "--prompt", "a", "--max_new_tokens", "2"]) == 1
    assert_clean_error(capsys, "numgpt sample: error:", "vocab.json", "merges.txt")


@pytest.mark.parametrize("extra", [5, -40])
def test_finetune_vocab_size_disagreeing_with_tokenizer(tmp_path, textfile, bpe, extra, capsys):
    directory = tmp_path / "mismatch"
    write_gpt2_dir(directory, bpe, model_vocab=bpe.vocab_size + extra)
    out = tmp_path / "ft"
    assert main(finetune_args(directory, textfile, out, "--max_iters", "2")) == 1
    err = assert_clean_error(capsys, "numgpt train: error:", "vocab_size",
                             str(bpe.vocab_size + extra), str(bpe.vocab_size))
    assert len(err.strip().splitlines()) == 1
    assert not (out / "ckpt.npz").exists()


@pytest.mark.parametrize("command", ["sample", "attention"])
@pytest.mark.parametrize("extra", [5, -40])
def test_sampling_vocab_size_disagreeing_with_tokenizer(tmp_path, bpe, extra, command, capsys):
    # `sample` and `attention` must refuse the mismatch up front, naming both sizes, as
    # `train` does, rather than fail mid-generation on an id one side does not know (or,
    # for a larger model vocabulary, succeed or fail depending on what gets sampled).
    directory = tmp_path / "mismatch"
    write_gpt2_dir(directory, bpe, model_vocab=bpe.vocab_size + extra)
    argv = [command, "--init_from", str(directory), "--prompt", MULTIBYTE_PROMPT]
    if command == "sample":
        argv += ["--max_new_tokens", "30", "--temperature", "0.1", "--seed", "0"]
    else:
        argv += ["--output", str(tmp_path / "attention.png")]
    assert main(argv) == 1
    assert_clean_error(capsys, f"numgpt {command}: error:", "vocab_size",
                       str(bpe.vocab_size + extra), str(bpe.vocab_size))


def test_finetune_block_size_beyond_the_checkpoint(gpt2_dir, textfile, tmp_path, capsys):
    directory, _ = gpt2_dir
    argv = finetune_args(directory, textfile, tmp_path / "ft", "--max_iters", "1")
    argv[argv.index("--block_size") + 1] = "64"
    assert main(argv) == 1
    assert_clean_error(capsys, "numgpt train: error:", "block_size", f"n_positions={GPT2_BLOCK}", "64")


# ---------------------------------------------------------------------------
# --init_from something that is not a GPT-2 directory
# ---------------------------------------------------------------------------


def _not_gpt2(tmp_path, kind, textfile):
    if kind == "missing":
        return tmp_path / "no-such-dir"
    if kind == "unrelated dir":
        d = tmp_path / "notes"
        d.mkdir()
        (d / "notes.txt").write_text("hello", encoding="utf-8")
        return d
    if kind == "training out_dir":            # a common mix-up: a numgpt run, not a GPT-2 directory
        d = tmp_path / "out"
        assert main(["train", "--data", str(textfile), "--out_dir", str(d), "--max_iters", "1", *TINY_FLAGS]) == 0
        return d
    if kind == "text file":
        return textfile
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "unrelated dir", "training out_dir", "text file"])
def test_sample_init_from_not_a_gpt2_directory(tmp_path, textfile, kind, capsys):
    path = _not_gpt2(tmp_path, kind, textfile)
    capsys.readouterr()
    assert main(["sample", "--init_from", str(path), "--prompt", "The", "--max_new_tokens", "3"]) == 1
    err = assert_clean_error(capsys, "numgpt sample: error:", str(path.name))
    # says what a GPT-2 directory is and how to get one
    assert "config.json" in err and "model.safetensors" in err
    assert "download" in err


def test_train_init_from_not_a_gpt2_directory(tmp_path, textfile, capsys):
    path = _not_gpt2(tmp_path, "unrelated dir", textfile)
    # the tokenizer is looked for first: the error names what is missing
    assert main(finetune_args(path, textfile, tmp_path / "ft", "--max_iters", "1")) == 1
    assert_clean_error(capsys, "numgpt train: error:", str(path))
    assert not (tmp_path / "ft" / "ckpt.npz").exists()


def test_train_init_from_with_a_task_names_the_tasks_vocabulary(gpt2_dir, textfile, tmp_path, capsys):
    directory, original = gpt2_dir
    assert main(["train", "--init_from", str(directory), "--task", "sort", "--max_iters", "1", "--block_size", "16",
                 "--out_dir", str(tmp_path / "ft")]) == 1
    assert_clean_error(capsys, f"--init_from {directory} has vocab_size {original.config.vocab_size} but the task "
                               f"'sort' has its own vocabulary of 3 tokens")


# ---------------------------------------------------------------------------
# numgpt plot and numgpt attention
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def char_run_template(tmp_path_factory, textfile):
    out = tmp_path_factory.mktemp("char-run") / "run"
    assert main(["train", "--data", str(textfile), "--out_dir", str(out), "--max_iters", "20", *TINY_FLAGS]) == 0
    return out


@pytest.fixture
def char_run(char_run_template, tmp_path):
    """A private copy of a tiny trained char-level run, so each test may write into it."""
    return shutil.copytree(char_run_template, tmp_path / "run")


def test_plot_writes_loss_png(char_run, capsys):
    pytest.importorskip("matplotlib")
    assert main(["plot", "--out_dir", str(char_run)]) == 0
    assert_png(char_run / "loss.png")
    assert str(char_run / "loss.png") in capsys.readouterr().out


def test_plot_to_a_chosen_path(char_run, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "pictures" / "curve.png"
    assert main(["plot", "--out_dir", str(char_run), "--output", str(target)]) == 0
    assert_png(target)
    assert not (char_run / "loss.png").exists()


def test_attention_writes_png(char_run, capsys):
    pytest.importorskip("matplotlib")
    assert main(["attention", "--out_dir", str(char_run), "--prompt", "The lighthouse"]) == 0
    assert_png(char_run / "attention.png")
    assert str(char_run / "attention.png") in capsys.readouterr().out


def test_attention_prompt_longer_than_the_context(char_run, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "long.png"
    prompt = _SENTENCES[0] * 2                       # far longer than block_size 16
    assert main(["attention", "--out_dir", str(char_run), "--prompt", prompt, "--output", str(target)]) == 0
    assert_png(target)


def test_attention_from_a_gpt2_directory(gpt2_dir, tmp_path):
    pytest.importorskip("matplotlib")
    directory, _ = gpt2_dir
    target = tmp_path / "gpt2-attention.png"
    # byte-level tokens that split a character still get drawable labels
    assert main(["attention", "--init_from", str(directory), "--prompt", MULTIBYTE_PROMPT,
                 "--output", str(target)]) == 0
    assert_png(target)


def test_plot_and_attention_without_matplotlib(char_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)      # makes `import matplotlib` fail
    assert main(["plot", "--out_dir", str(char_run)]) == 1
    err = assert_clean_error(capsys, "numgpt plot: error:", "matplotlib", "pip install")
    assert len(err.strip().splitlines()) == 1
    assert main(["attention", "--out_dir", str(char_run), "--prompt", "The"]) == 1
    assert_clean_error(capsys, "numgpt attention: error:", "matplotlib", "pip install")
    assert not (char_run / "loss.png").exists() and not (char_run / "attention.png").exists()


@pytest.mark.parametrize("prompt, fragments", [
    ("The \U0001f980", ["not in the vocabulary", "\U0001f980"]),
    ("", ["--prompt", "empty"]),
])
def test_attention_bad_prompt(char_run, prompt, fragments, capsys):
    # refused before any drawing, so this runs with or without matplotlib
    assert main(["attention", "--out_dir", str(char_run), "--prompt", prompt]) == 1
    assert_clean_error(capsys, "numgpt attention: error:", *fragments)
    assert not (char_run / "attention.png").exists()


def test_attention_without_a_checkpoint(tmp_path, capsys):
    assert main(["attention", "--out_dir", str(tmp_path / "nothing"), "--prompt", "The"]) == 1
    assert_clean_error(capsys, "numgpt attention: error:", "no checkpoint")
