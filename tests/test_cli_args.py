"""Tests for numgpt.cli's command-line rules (issue 12): no flag prefixes, suggestions for unknown
flags, negative numbers as values, a help text and one shown default for every flag, range errors
as usage errors (exit code 2), one-line warnings, and OS errors described in a sentence."""

import argparse
import errno
import os
import subprocess
import sys
import warnings

import pytest

import numgpt.cli as cli
from numgpt.cli import build_parser, describe_os_error, main


@pytest.fixture(autouse=True)
def no_traceback_env(monkeypatch):
    monkeypatch.delenv("NUMGPT_TRACEBACK", raising=False)


def all_parsers():
    """``[(command words, parser)]`` for the top-level parser and every subparser, at any depth."""
    found = []

    def walk(words, parser):
        found.append((words, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(words + [name], sub)

    walk([], build_parser())
    return found


PARSERS = all_parsers()
PARSER_IDS = [" ".join(words) or "numgpt" for words, _ in PARSERS]

# Values for the required flags, so a parse can get as far as the flag under test.
REQUIRED = {"--data": "default", "--vocab_size": "300", "--out": "tok", "--prompt": "abc"}


def required_argv(parser, skip=None):
    argv = []
    for action in parser._actions:
        if action.required and action.option_strings and action.option_strings[0] != skip:
            argv += [action.option_strings[0], REQUIRED[action.option_strings[0]]]
    return argv


def usage_error(argv, capsys):
    """Run main(argv), which must stop with a usage error (exit code 2); return stderr."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    return err


# --- item 7: no prefixes; suggestions ----------------------------------------------------------

@pytest.mark.parametrize("words, parser", PARSERS, ids=PARSER_IDS)
def test_every_parser_refuses_prefixes(words, parser):
    assert parser.allow_abbrev is False


def test_a_prefix_is_not_taken_for_the_flag_it_begins(capsys):
    # --lr used to be read as --lr_decay_iters, silently.
    err = usage_error(["train", "--lr", "100"], capsys)
    assert "unrecognized arguments: --lr 100" in err
    assert "did you mean --learning_rate?" in err
    err = usage_error(["sample", "--max_new", "5"], capsys)
    assert "did you mean --max_new_tokens?" in err
    err = usage_error(["gradcheck", "--meth", "adjoint"], capsys)
    assert "did you mean --method?" in err


@pytest.mark.parametrize("argv, suggestion", [
    (["train", "--batch", "8"], "--batch_size"),
    (["train", "--n_layers", "2"], "--n_layer"),
    (["train", "--lerning_rate", "0.1"], "--learning_rate"),
    (["train", "--max-iters", "3"], "--max_iters"),
    (["train", "--lr=0.1"], "--learning_rate"),
    (["sample", "--temp", "0.5"], "--temperature"),
    (["sample", "--top", "5"], "--top_k or --top_p"),
    (["plot", "--outdir", "x"], "--out_dir"),
])
def test_unknown_flags_suggest_the_closest_real_one(argv, suggestion, capsys):
    err = usage_error(argv, capsys)
    assert f"(did you mean {suggestion}?)" in err


def test_an_alias_of_another_command_is_not_suggested(capsys):
    # --lr means --learning_rate, which sample does not have: no suggestion rather than a wrong one.
    err = usage_error(["sample", "--lr", "3"], capsys)
    assert "unrecognized arguments: --lr 3" in err and "did you mean" not in err


# --- item 8: negative numbers -------------------------------------------------------------------

def value_flags():
    cases = []
    for words, parser in PARSERS:
        for action in parser._actions:
            if action.option_strings and action.nargs is None and action.option_strings[0] != "--config":
                cases.append((words, parser, action))
    return cases


VALUE_FLAGS = value_flags()


@pytest.mark.parametrize("words, parser, action", VALUE_FLAGS,
                         ids=[" ".join(w) + " " + a.option_strings[0] for w, _, a in VALUE_FLAGS])
def test_every_value_flag_takes_a_negative_number(words, parser, action, capsys):
    flag = action.option_strings[0]
    argv = words + required_argv(parser, skip=flag) + [flag, "-1e-3"]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        # a usage error, but about the value, never "expected one argument"
        err = capsys.readouterr().err
        assert "expected one argument" not in err
        assert flag in err and ("-1e-3" in err or "-0.001" in err), err
    else:
        value = getattr(args, action.dest)
        value = value[-1] if isinstance(value, list) else value
        assert value in (-0.001, "-1e-3"), value


def test_negative_values_reach_the_range_checks(capsys):
    args = build_parser().parse_args(["train", "--learning_rate", "-1e-3", "--min_lr", "-inf"])
    assert args.learning_rate == -0.001 and args.min_lr == float("-inf")
    err = usage_error(["sample", "--temperature", "-1e-3"], capsys)
    assert "--temperature must be a finite number >= 0, got -0.001" in err
    err = usage_error(["gradcheck", "--rtol", "-inf"], capsys)
    assert "--rtol must be in (0, 1), got -inf" in err
    # a prompt that looks like a number is text all the same
    args = build_parser().parse_args(["attention", "--prompt", "-5e3"])
    assert args.prompt == "-5e3"
    # after "--" nothing is rewritten
    assert cli._Parser()._join_negative_values(["--x", "--", "--y", "-1"]) == ["--x", "--", "--y", "-1"]


# --- item 9: help ---------------------------------------------------------------------------------

def rendered_help(parser, action):
    formatter = parser.formatter_class(prog=parser.prog)
    formatter.add_argument(action)
    return " ".join(formatter.format_help().split())


@pytest.mark.parametrize("words, parser", PARSERS, ids=PARSER_IDS)
def test_every_flag_has_help_and_shows_its_default_once(words, parser):
    if words:
        assert parser.description and parser.description.strip(), "no description"
    for action in parser._actions:
        text = rendered_help(parser, action)
        names = "/".join(action.option_strings) or action.metavar
        assert action.help and action.help.split("(default")[0].strip(), f"{names} has no help text"
        assert text.count("(default:") <= 1, f"{names}: {text}"


def test_sample_help_shows_out_dir_default_once(capsys):
    with pytest.raises(SystemExit) as info:
        main(["sample", "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.count("(default: out)") == 1
    assert "(default: None)" not in out and "(default: [])" not in out


def test_top_level_help_describes_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in ["gradcheck", "train", "sample", "tokenizer", "plot", "attention"]:
        sub = dict((tuple(w), p) for w, p in PARSERS)[(name,)]
        assert sub.description
        summary = " ".join(sub.description.split())
        assert f"{name} " in out and summary.split(".")[0][1:30] in out, name
    assert "2 usage error" in out


# --- item 14: range errors are usage errors -------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["gradcheck", "--rtol", "-1"], "--rtol must be in (0, 1), got -1"),
    (["gradcheck", "--rtol", "0"], "--rtol must be in (0, 1), got 0"),
    (["gradcheck", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["sample", "--top_p", "0"], "--top_p must be in (0, 1], got 0"),
    (["sample", "--top_p", "1.5"], "--top_p must be in (0, 1], got 1.5"),
    (["sample", "--top_k", "0"], "--top_k must be a positive integer, got 0"),
    (["sample", "--num_samples", "0"], "--num_samples must be a positive integer, got 0"),
    (["sample", "--max_new_tokens", "-5"], "--max_new_tokens must be a positive integer, got -5"),
    (["sample", "--temperature", "nan"], "--temperature must be a finite number >= 0, got nan"),
    (["sample", "--seed", "-2"], "--seed must be an integer >= 0, got -2"),
    (["tokenizer", "train", "--data", "default", "--out", "tok", "--vocab_size", "-5"],
     "--vocab_size must be an integer >= 257, got -5"),
    (["prepare", "--data", "x", "--out", "y", "--chunk_mb", "100000000000000"],
     "--chunk_mb must be in [1, 1024], got 100000000000000"),
    (["plot", "--output", "loss.jpg"], "argument --output: expected a path ending in .png, got 'loss.jpg'"),
    (["attention", "--output", "maps"], "argument --output: expected a path ending in .png, got 'maps'"),
])
def test_range_errors_exit_2_naming_flag_range_and_value(argv, message, capsys):
    err = usage_error(argv, capsys)
    assert message in err
    assert err.strip().splitlines()[-1].startswith(f"numgpt {argv[0]}")


def test_gradcheck_negative_rtol_is_refused_before_any_check(capsys, monkeypatch):
    import numgpt.gradcheck

    def must_not_run(*args, **kwargs):
        raise AssertionError("the checks ran with a negative rtol")

    monkeypatch.setattr(numgpt.gradcheck, "check_all_layers", must_not_run)
    usage_error(["gradcheck", "--rtol", "-1"], capsys)


def test_the_docstring_documents_the_exit_codes():
    doc = " ".join(cli.__doc__.split())
    for fragment in ["0 success", "1 a failure", "2 a usage error", "130 interrupted"]:
        assert fragment in doc


# --- item 11: warnings ------------------------------------------------------------------------------

def test_a_warning_is_one_clean_line_and_showwarning_is_restored(monkeypatch, capsys):
    def warns(args):
        warnings.warn("something looks odd", stacklevel=2)
        return 0

    monkeypatch.setattr(cli, "cmd_gradcheck", warns)
    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["gradcheck"]) == 0
    assert warnings.showwarning is before
    assert capsys.readouterr().err == "numgpt gradcheck: warning: something looks odd\n"


def test_showwarning_is_restored_after_a_failure(monkeypatch, capsys):
    def fails(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_gradcheck", fails)
    before = warnings.showwarning
    assert main(["gradcheck"]) == 130
    assert warnings.showwarning is before


def test_plot_warning_on_a_bad_metrics_line_shows_no_source(tmp_path):
    pytest.importorskip("matplotlib")
    lines = ['{"iter": 0, "loss": 4.0}', "{not json", '{"iter": 1, "loss": 3.5}', '{"iter": 2, "loss": 3.0}']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMGPT_TRACEBACK", "PYTHONWARNINGS")}
    proc = subprocess.run([sys.executable, "-m", "numgpt", "plot", "--out_dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("numgpt plot: warning: ")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "skipped 1 line" in proc.stderr and "line 2" in proc.stderr
    assert ".py:" not in proc.stderr and "warnings.warn" not in proc.stderr
    assert (tmp_path / "loss.png").is_file()


# --- item 10: operating-system errors -----------------------------------------------------------------

def raised(action):
    try:
        action()
    except OSError as e:
        return e
    raise AssertionError("no OSError")


def test_describe_os_error_for_real_errors(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    text = describe_os_error(raised(lambda: os.mkdir(afile)))
    assert text == f"{afile} exists and is not a directory; remove or rename it, or choose another path"
    text = describe_os_error(raised(lambda: os.makedirs(afile / "out")))
    assert text.startswith(f"{afile} exists and is not a directory, so {afile / 'out'} cannot be made")
    missing = tmp_path / "missing.txt"
    assert describe_os_error(raised(lambda: open(missing))) == f"no such file or directory: {missing}"
    adir = tmp_path / "adir"
    adir.mkdir()
    assert describe_os_error(raised(lambda: os.mkdir(adir))) == f"{adir} already exists; choose another path"
    assert describe_os_error(raised(lambda: open(adir, "w"))) == f"{adir} is a directory, but a file is needed there"


@pytest.mark.parametrize("code, expected", [
    (errno.EACCES, "permission denied: /x/y (check its permissions or choose another path)"),
    (errno.EPERM, "permission denied: /x/y (check its permissions or choose another path)"),
    (errno.ENOSPC, "the disk is full while writing /x/y: free some space and try again, or choose another path"),
    (errno.EROFS, "/x/y is on a read-only file system; choose another path"),
    (errno.EBUSY, f"{os.strerror(errno.EBUSY)[:1].lower()}{os.strerror(errno.EBUSY)[1:]}: /x/y"),
])
def test_describe_os_error_by_errno(code, expected):
    assert describe_os_error(OSError(code, os.strerror(code), "/x/y")) == expected


def test_describe_os_error_keeps_numgpt_own_messages():
    e = FileNotFoundError(errno.ENOENT, "no checkpoint in out; train first", "out/ckpt.npz")
    assert describe_os_error(e) == "no checkpoint in out; train first"
    assert describe_os_error(FileNotFoundError("no metrics log at 'm'")) == "no metrics log at 'm'"
    assert describe_os_error(OSError(errno.EACCES, os.strerror(errno.EACCES))) == \
        "permission denied: a file (check its permissions or choose another path)"


def test_main_reports_an_os_error_in_a_sentence(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    data = tmp_path / "data.txt"
    data.write_text("the quick brown fox jumps over the lazy dog\n" * 20, encoding="utf-8")
    assert main(["tokenizer", "train", "--data", str(data), "--vocab_size", "260", "--out", str(afile)]) == 1
    err = capsys.readouterr().err
    assert "[Errno" not in err and "Traceback" not in err
    assert f"{afile} exists and is not a directory" in err
    assert afile.read_text() == "x"
