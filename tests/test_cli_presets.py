"""Tests for the presets and optimizers on the command line: ``numgpt train --preset modern`` and
``--optimizer``, the bool flags of the model choices, --config files with the new settings, the
startup line, --help, sampling from a modern checkpoint, and --init_from's refusal."""

import json
import os
import subprocess
import sys

import pytest

from numgpt.checkpoint import load_checkpoint
from numgpt.cli import main
from test_cli import TINY_FLAGS, assert_clean_error, train_args
from test_train import english_text


@pytest.fixture
def textfile(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(english_text(), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def no_traceback_env(monkeypatch):
    monkeypatch.delenv("NUMGPT_TRACEBACK", raising=False)


def model_choices(meta):
    config = meta["model_config"]
    return tuple(config[k] for k in ("norm", "position", "mlp", "qk_norm", "tie_head", "bias"))


GPT2 = ("layernorm", "learned", "gelu", False, True, True)
MODERN = ("rmsnorm", "rope", "relu2", True, False, False)


@pytest.mark.parametrize("preset, optimizer, choices, optimizer_name", [
    ("gpt2", None, GPT2, "adamw"), ("gpt2", "muon", GPT2, "muon"),
    ("modern", None, MODERN, "muon"), ("modern", "adamw", MODERN, "adamw"),
])
def test_both_presets_train_with_both_optimizers(textfile, tmp_path, capsys, preset, optimizer, choices,
                                                 optimizer_name):
    out = tmp_path / "out"
    extra = ["--preset", preset, "--max_iters", "4"] + (["--optimizer", optimizer] if optimizer else [])
    assert main(train_args(textfile, out, *extra)) == 0
    stdout = capsys.readouterr().out
    assert "done: 4 iterations" in stdout
    arrays, meta = load_checkpoint(out / "ckpt.npz")
    assert model_choices(meta) == choices
    assert meta["optimizer"] == optimizer_name and meta["train_config"]["preset"] == preset
    assert ("optim/muon_m" in arrays) == (optimizer_name == "muon")
    line = next(line for line in stdout.splitlines() if line.startswith("architecture: "))
    assert f"preset {preset} (" in line
    if preset == "modern":
        assert "(rmsnorm, rope positions, relu2 MLP, QK-norm, untied head, no biases)" in line
    else:
        assert "(layernorm, learned positions, gelu MLP, no QK-norm, tied head, biases)" in line
    assert ("optimizer: Muon for the 4 hidden matrices (lr 0.02, momentum 0.95), AdamW" in line) == \
        (optimizer_name == "muon")
    assert ("optimizer: AdamW (lr" in line) == (optimizer_name == "adamw")


def test_sample_from_a_modern_checkpoint(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--preset", "modern", "--max_iters", "4")) == 0
    capsys.readouterr()
    assert main(["sample", "--out_dir", str(out), "--prompt", "The ", "--max_new_tokens", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The ") and len(text.rstrip("\n")) >= 20
    assert set(text) <= set(textfile.read_text(encoding="utf-8")) | {"\n"}


@pytest.mark.parametrize("flags, expected", [
    (["--preset", "modern", "--no-qk_norm", "--tie_head", "--bias"], ("rmsnorm", "rope", "relu2", False, True, True)),
    (["--qk_norm", "--no-tie_head", "--no-bias"], ("layernorm", "learned", "gelu", True, False, False)),
    (["--preset", "modern", "--norm", "layernorm", "--position", "learned", "--mlp", "swiglu"],
     ("layernorm", "learned", "swiglu", True, False, False)),
])
def test_flags_override_the_preset(textfile, tmp_path, flags, expected):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "1", *flags)) == 0
    assert model_choices(load_checkpoint(out / "ckpt.npz")[1]) == expected


@pytest.mark.parametrize("argv, fragment", [
    (["train", "--preset", "llama"], "invalid choice: 'llama'"),
    (["train", "--optimizer", "sgd"], "invalid choice: 'sgd'"),
    (["train", "--mlp", "relu"], "invalid choice: 'relu'"),
    (["train", "--qk_norm", "true"], "unrecognized arguments: true (--qk_norm takes no value: --qk_norm turns "
                                     "it on, --no-qk_norm off)"),
    (["train", "--bias", "false"], "(--bias takes no value: --bias turns it on, --no-bias off)"),
])
def test_bad_flags_are_usage_errors(argv, fragment, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert_clean_error(capsys, fragment)


@pytest.mark.parametrize("extra, fragment", [
    (["--muon_momentum", "1"], "muon_momentum must be in [0, 1), got 1.0"),
    (["--muon_lr", "nan"], "muon_lr must be a finite number >= 0, got nan"),
    (["--max_time", "-5"], "max_time must be a finite number >= 0, got -5.0"),
    (["--init_from", "gpt2", "--preset", "modern"],
     "--init_from loads GPT-2 weights, which need --preset gpt2; --preset modern (norm='rmsnorm', "
     "position='rope', mlp='relu2', qk_norm=True, tie_head=False) cannot hold them"),
    (["--init_from", "gpt2", "--position", "rope"], "--preset gpt2 (position='rope') cannot hold them"),
    (["--init_from", "gpt2", "--no-bias"], "--init_from loads GPT-2 weights, which have a bias in every linear "
                                           "and layer-norm layer; --no-bias cannot hold them"),
])
def test_bad_values_give_one_line_usage_errors(textfile, tmp_path, extra, fragment, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--max_iters", "2", *extra)) == 2
    err = assert_clean_error(capsys, "numgpt train: error:", fragment)
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_config_file_sets_every_new_setting(textfile, tmp_path, suffix, capsys):
    settings = {"data": str(textfile), "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4,
                "max_iters": 3, "eval_interval": 3, "eval_iters": 2, "sample_tokens": 0, "out_dir": str(tmp_path / "o"),
                "preset": "modern", "norm": "layernorm", "position": "rope", "mlp": "swiglu", "qk_norm": False,
                "tie_head": True, "bias": True, "optimizer": "adamw", "muon_lr": 0.03, "muon_momentum": 0.9,
                "max_time": 1000.0}
    path = tmp_path / f"cfg{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(settings), encoding="utf-8")
    else:
        path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()), encoding="utf-8")
    if suffix == ".toml" and sys.version_info < (3, 11):      # no tomllib: a clear error instead
        assert main(["train", "--config", str(path)]) == 1
        assert_clean_error(capsys, "TOML")
        return
    assert main(["train", "--config", str(path)]) == 0
    _, meta = load_checkpoint(tmp_path / "o" / "ckpt.npz")
    for key in ("preset", "norm", "position", "mlp", "qk_norm", "tie_head", "bias", "optimizer", "muon_lr",
                "muon_momentum", "max_time"):
        assert meta["train_config"][key] == settings[key], key
    assert model_choices(meta) == ("layernorm", "rope", "swiglu", False, True, True)
    assert meta["optimizer"] == "adamw" and meta["iter_num"] == 3


def test_resume_keeps_the_preset_and_says_so(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(train_args(textfile, out, "--preset", "modern", "--max_iters", "2")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out_dir", str(out), "--max_iters", "4", "--preset", "gpt2"]) == 0
    stdout = capsys.readouterr().out
    assert "note: preset='modern' comes from the checkpoint (not 'gpt2')" in stdout
    assert "preset modern (rmsnorm" in stdout
    meta = load_checkpoint(out / "ckpt.npz")[1]
    assert meta["iter_num"] == 4 and model_choices(meta) == MODERN and meta["optimizer"] == "muon"


def test_max_time_from_the_command_line(textfile, tmp_path, capsys):
    out = tmp_path / "out"
    flags = [f for f in TINY_FLAGS]
    assert main(["train", "--data", str(textfile), "--out_dir", str(out), *flags, "--preset", "modern",
                 "--max_iters", "1000000", "--lr_decay_iters", "1000000", "--eval_interval", "100000",
                 "--max_time", "0.5"]) == 0
    stdout = capsys.readouterr().out
    assert "training: 1000000 iterations or 0.5 s of training steps, whichever ends first" in stdout
    meta = load_checkpoint(out / "ckpt.npz")[1]
    assert 0 < meta["iter_num"] < 1000000 and meta["train_seconds"] >= 0.5


def test_train_help_shows_the_new_flags(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NUMGPT_TRACEBACK"}
    proc = subprocess.run([sys.executable, "-m", "numgpt", "train", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for usage in ("[--preset {gpt2,modern}]", "[--norm {layernorm,rmsnorm}]", "[--position {learned,rope}]",
                  "[--mlp {gelu,relu2,swiglu}]", "[--qk_norm | --no-qk_norm]", "[--tie_head | --no-tie_head]",
                  "[--bias | --no-bias]", "[--optimizer {adamw,muon}]", "[--muon_lr MUON_LR]",
                  "[--muon_momentum MUON_MOMENTUM]", "[--max_time MAX_TIME]"):
        assert usage in text, usage
    options = text[text.index("options:"):]
    assert "(default: 'gpt2')" in options[options.index(" --preset "):][:600]
    assert "(default: 0.02)" in options[options.index(" --muon_lr "):][:200]
    assert "(default: 0.95)" in options[options.index(" --muon_momentum "):][:200]
    described = options[options.index(" --max_time "):][:700]
    assert "(default: 0.0)" in described and "fraction of this time spent" in described
    assert "(default: the preset's)" in options[options.index(" --qk_norm, --no-qk_norm "):][:200]
