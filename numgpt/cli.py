"""numgpt: a GPT-2 in NumPy with hand-written gradients. Train, sample, check gradients, plot.

Only this module knows every room of the package; each subcommand is a thin
layer over a function a notebook can call directly.

Exit status: 0 success; 1 a failure found while working (bad data, a missing
or unreadable file, a failed gradient check, a training error); 2 a usage
error found while parsing the command line (an unknown flag, a malformed
value, a value out of its range); 130 interrupted by Ctrl-C; 143 stopped by
SIGTERM (numgpt train saves its checkpoint first).
"""

import argparse
import difflib
import math
import os
import sys
import warnings

from ._oserror import describe_os_error

# --- the parser --------------------------------------------------------------------------

# What people used to nanoGPT, PyTorch scripts or Hugging Face type for a flag of ours.
_FLAG_ALIASES = {
    "lr": "learning_rate", "learning-rate": "learning_rate", "max_lr": "learning_rate",
    "batch": "batch_size", "bs": "batch_size", "batch-size": "batch_size",
    "iters": "max_iters", "steps": "max_iters", "max_steps": "max_iters", "num_iters": "max_iters",
    "wd": "weight_decay", "warmup": "warmup_iters", "warmup_steps": "warmup_iters",
    "layers": "n_layer", "n_layers": "n_layer", "num_layers": "n_layer",
    "heads": "n_head", "n_heads": "n_head", "num_heads": "n_head",
    "n_embed": "n_embd", "d_model": "n_embd", "hidden_size": "n_embd", "embd": "n_embd",
    "context": "block_size", "context_length": "block_size", "seq_len": "block_size", "block": "block_size",
    "clip": "grad_clip", "max_grad_norm": "grad_clip", "grad_norm_clip": "grad_clip",
    "accum": "gradient_accumulation_steps", "grad_accum": "gradient_accumulation_steps",
    "temp": "temperature", "k": "top_k", "p": "top_p", "topk": "top_k", "topp": "top_p",
    "max_tokens": "max_new_tokens", "num_tokens": "max_new_tokens", "length": "max_new_tokens",
    "n": "num_samples", "samples": "num_samples", "output_dir": "out_dir", "outdir": "out_dir",
    "start": "prompt", "text": "prompt",
}


class Limits:
    """The values a numeric flag accepts: ``low``/``high`` bounds, open or closed, and finite.

    Checked after parsing (so ``-1e-3`` reaches the check, not argparse's
    "expected one argument"), and reported as a usage error (exit code 2)
    naming the flag, the range and the value.
    """

    def __init__(self, low=None, high=None, *, low_open=False, high_open=False, integer=False):
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.integer = integer

    def __contains__(self, value):
        if not (math.isfinite(value) if isinstance(value, float) else True):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self):
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_show(self.low)}, {_show(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.integer and self.low == 1 and not self.low_open and self.high is None:
            return "a positive integer"
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_show(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_show(self.high)}"
        return kind


def _show(value):
    """A number as a person would write it: 0 rather than 0.0, -0.001 rather than -1e-03."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


class _Parser(argparse.ArgumentParser):
    """argparse with numgpt's rules, for the parser and every subparser made from it.

    * No prefixes: ``--lr 100`` is not ``--lr_decay_iters 100`` but an error
      suggesting ``--learning_rate`` (``allow_abbrev=False``; subparsers are
      made of this class, so they have the rule too).
    * A negative number after a flag that takes a value is that value
      (``--learning_rate -1e-3``): argparse would take ``-1e-3`` for a flag.
    * ``limits=Limits(...)`` on ``add_argument`` checks the parsed value.
    * A default is shown once in ``--help``, appended unless the help text
      already mentions it.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        self._numgpt_value_flags = set()     # option strings that take a value
        self._numgpt_flags = []              # every option string, for suggestions
        self._numgpt_limits = []             # (action, Limits)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        return self._numgpt_declare(super().add_argument, args, kwargs)

    def add_argument_group(self, *args, **kwargs):
        return self._numgpt_wrap(super().add_argument_group(*args, **kwargs))

    def add_mutually_exclusive_group(self, *args, **kwargs):
        return self._numgpt_wrap(super().add_mutually_exclusive_group(*args, **kwargs))

    def _numgpt_wrap(self, group):
        add = group.add_argument
        group.add_argument = lambda *args, **kwargs: self._numgpt_declare(add, args, kwargs)
        return group

    def _numgpt_declare(self, add, args, kwargs):
        limits = kwargs.pop("limits", None)
        help_text = kwargs.get("help")
        default = kwargs.get("default")
        if (isinstance(help_text, str) and "(default" not in help_text and not kwargs.get("required")
                and not (default is None or default is argparse.SUPPRESS or default is False
                         or (isinstance(default, (str, list)) and not default))):
            kwargs["help"] = f"{help_text} (default: %(default)s)"
        action = add(*args, **kwargs)
        self._numgpt_flags.extend(action.option_strings)
        if action.option_strings and action.nargs in (None, argparse.OPTIONAL):
            self._numgpt_value_flags.update(action.option_strings)
        if limits is not None:
            self._numgpt_limits.append((action, limits))
        return action

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        namespace, extras = super().parse_known_args(self._join_negative_values(args), namespace)
        if extras:
            self.error(self._unrecognized(extras, args))
        for action, limits in self._numgpt_limits:
            value = getattr(namespace, action.dest, None)
            if value is not None and not isinstance(value, bool) and value not in limits:
                self.error(f"{action.option_strings[0]} must be {limits.describe()}, got {_show(value)}")
        return namespace, extras

    def _join_negative_values(self, args):
        """``--flag -1e-3`` -> ``--flag=-1e-3`` for this parser's flags that take a value."""
        joined, i = [], 0
        while i < len(args):
            token = args[i]
            if token == "--":
                joined.extend(args[i:])
                break
            if (token in self._numgpt_value_flags and i + 1 < len(args)
                    and _is_negative_number(args[i + 1])):
                joined.append(f"{token}={args[i + 1]}")
                i += 2
                continue
            joined.append(token)
            i += 1
        return joined

    def _unrecognized(self, extras, args=()):
        message = f"unrecognized arguments: {' '.join(extras)}"
        hints = []
        for token in extras:
            if token.startswith("--"):
                hints.extend(h for h in self.suggest_flags(token.split("=", 1)[0]) if h not in hints)
        if hints:
            message += f" (did you mean {' or '.join(hints)}?)"
        # "--bias false": an on/off flag takes no value; say which spelling turns it off.
        for flag, value in zip(args, args[1:]):
            if (value in extras and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0")
                    and f"--no-{flag[2:]}" in self._numgpt_flags):
                message += f" ({flag} takes no value: {flag} turns it on, --no-{flag[2:]} off)"
                break
        return message

    def suggest_flags(self, flag):
        """The real flags closest to ``flag``: a common alias, the flags it begins, or a near spelling."""
        flags = [f for f in self._numgpt_flags if f.startswith("--") and f != "--help"]
        name = flag[2:]
        alias = _FLAG_ALIASES.get(name) or _FLAG_ALIASES.get(name.replace("-", "_"))
        if alias and f"--{alias}" in flags:
            return [f"--{alias}"]
        underscored = "--" + name.replace("-", "_")
        if underscored in flags:
            return [underscored]
        starting = [f for f in flags if f.startswith(underscored)]
        if starting:
            return starting[:3]
        return difflib.get_close_matches(underscored, flags, n=1, cutoff=0.6)


def _is_negative_number(token):
    if not token.startswith("-") or token == "-":
        return False
    try:
        float(token)
    except ValueError:
        return False
    return True


def cmd_gradcheck(args):
    from .gradcheck import check_all_layers, format_table

    rows = check_all_layers(seed=args.seed, rtol=args.rtol, method=args.method)
    print(f"numgpt gradcheck: float64, seed {args.seed}, {args.method} check, "
          f"pass when max relative error < {args.rtol:g}")
    print(format_table(rows, args.rtol))
    failed = [(layer, r.name) for layer, r in rows if not (r.passed and r.max_rel_error < args.rtol)]
    if failed:
        print(f"\n{len(failed)} check(s) FAILED: " + ", ".join(f"{l}.{n}" for l, n in failed))
        return 1
    print(f"\nall {len(rows)} checks passed")
    return 0


# --- train ---------------------------------------------------------------------------

def _add_train_flags(p):
    from .config import setting_kinds, settings_help

    kinds = setting_kinds()
    for name, (default, help_text, choices) in settings_help().items():
        if "(default" not in help_text:
            help_text = f"{help_text} (default: {default!r})"
        flag = f"--{name}"
        # SUPPRESS: only flags given on the command line appear in args, so they can
        # override a --config file and a resumed run's saved settings.
        if kinds[name] is bool:
            # --flag / --no-flag; a setting that is off by default has --flag alone.
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            p.add_argument(flag, action=action, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {int: _int, float: _float, str: str}[kinds[name]]
            metavar = name.upper() if choices is None else "{" + ",".join(c for c in choices if c) + "}"
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=choices, help=help_text,
                           metavar=metavar)
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings (flags override it)")


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _png_path(text):
    if not text.lower().endswith(".png"):
        raise argparse.ArgumentTypeError(f"expected a path ending in .png, got {text!r}")
    return text


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def cmd_train(args):
    from .checkpoint import CHECKPOINT_NAME, CheckpointError
    from .config import TrainConfig, load_config_file
    from .train import StopSignals, train

    settings = load_config_file(args.config) if args.config else {}
    settings.update({k: v for k, v in vars(args).items() if k not in ("command", "func", "config")})
    out_dir = settings.get("out_dir", TrainConfig.out_dir)
    if settings.get("resume") is True and settings.get("overwrite") is True:
        # Checked here: resuming takes the saved settings, whose overwrite is False, and would hide it.
        raise UsageError("resume and overwrite contradict each other: --resume continues the run in "
                         "out_dir, --overwrite replaces it")
    if settings.get("resume") is True and isinstance(out_dir, str) \
            and os.path.exists(os.path.join(out_dir, CHECKPOINT_NAME)):
        try:
            cfg = TrainConfig.resumed(**settings)     # the saved settings, overridden by the flags given
        except CheckpointError:
            raise
        except (TypeError, ValueError) as e:          # a setting given for the resumed run is out of range
            raise UsageError(str(e)) from None
    else:
        try:
            cfg = TrainConfig(**settings).validate()   # (train() says so if there is nothing to resume)
        except (TypeError, ValueError) as e:
            raise UsageError(str(e)) from None
    # The CLI's own signal guard outlives train(): a second Ctrl-C or SIGTERM that arrives after the
    # checkpoint is saved (workers closing, this message) is absorbed, not a traceback or a kill.
    with StopSignals() as stop:
        result = train(cfg, stop=stop)
        if _AS_PROGRAM:                # the process ends next: a late signal has nothing left to stop
            stop.ignore_after()
        return _report_training(result, cfg)


def _report_training(result, cfg):
    import signal

    if result.interrupted:
        how = "Ctrl-C" if result.stop_signal == signal.SIGINT else signal.Signals(result.stop_signal).name
        print(f"stopped by {how} at iteration {result.iter_num}; resume with: "
              f"numgpt train --resume --out_dir {cfg.out_dir}")
        return 128 + int(result.stop_signal)
    if cfg.eval_only:
        where = f"the checkpoint {result.checkpoint}" if os.path.exists(result.checkpoint) else "a new model"
        print(f"done: evaluated {where} at iteration {result.iter_num}: train loss "
              f"{result.last_eval['train']:.4f}, val loss {result.last_eval['val']:.4f} (eval_only: nothing saved)")
        return 0
    kept = ""
    if result.best_is_legacy:          # kept on resume; its own val loss was never recorded
        kept = f"; the checkpoint resumed from (older than recorded val losses) is in {result.best_checkpoint} " \
               f"(numgpt sample --best)"
    elif result.best_checkpoint:
        kept = f"; the model with the best val loss is in {result.best_checkpoint} (numgpt sample --best)"
    print(f"done: {result.iter_num} iterations, best val loss {result.best_val_loss:.4f}, "
          f"checkpoint {result.checkpoint}{kept}")
    return 0


# --- prepare ---------------------------------------------------------------------------

def cmd_prepare(args):
    from .tokenfiles import prepare

    prepare(args.data, args.out, args.tokenizer, vocab_size=args.vocab_size,
            bpe_sample_chars=args.bpe_sample_chars, chunk_bytes=args.chunk_mb << 20, workers=args.workers,
            overwrite=args.overwrite)
    print(f"train with: numgpt train --data {args.out}")
    return 0


# --- sample ----------------------------------------------------------------------------

def _load_source(args):
    """``load_for_inference`` for the source flags of ``sample`` and ``attention``."""
    from .checkpoint import load_for_inference

    if args.best and args.init_from:
        raise UsageError("--best picks a checkpoint in --out_dir; it cannot go with --init_from")
    return load_for_inference(args.out_dir, init_from=args.init_from, best=args.best)


def _load_for_sampling(args):
    model, tokenizer, task = _load_source(args)
    if tokenizer is None:
        raise ValueError(f"{args.out_dir} holds a synthetic-task checkpoint ({task!r}); it has no text tokenizer")
    return model, tokenizer


def cmd_sample(args):
    from .sample import generate_text

    model, tokenizer, task = _load_source(args)
    if task is not None:
        return _answer_task_problem(model, task, args)
    texts = generate_text(model, tokenizer, args.prompt, num_samples=args.num_samples,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, stop=args.stop or None)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0


def _answer_task_problem(model, task, args):
    """Print the model's greedy answer to the problem typed as --prompt, and whether it is right."""
    from .sample import answer_problem

    if not args.prompt.strip():
        raise ValueError(f"{args.out_dir} holds a synthetic-task checkpoint ({task!r}): give the problem "
                         f"with --prompt, {task.prompt_form()}")
    prompt, answer, expected = answer_problem(model, task, args.prompt)
    print(task.format_problem(prompt, answer))
    print("correct" if (answer == expected).all() else f"wrong: the answer is {task.format_answer(expected)}")
    return 0


# --- tokenizer, plots ----------------------------------------------------------------------

def cmd_tokenizer_train(args):
    from .bpe import TOKENIZER_FILES, tokens_per_char, train_bpe
    from .data import load_text

    present = [n for n in TOKENIZER_FILES if os.path.exists(os.path.join(args.out, n))]
    if present and not args.overwrite:      # e.g. a GPT-2 download, whose weights need its own vocabulary
        raise UsageError(f"{args.out} already holds tokenizer files ({', '.join(present)}); write into another "
                         f"--out, or pass --overwrite to replace them")
    text, description = load_text(args.data)
    tok = train_bpe(text, args.vocab_size)
    tok.save(args.out)
    print(f"trained BPE on {description}: {tok.vocab_size} tokens, "
          f"{tokens_per_char(tok, text):.3f} tokens per character; wrote vocab.json, merges.txt and "
          f"special_tokens_map.json to {args.out}")
    return 0


def cmd_plot(args):
    from .plot import plot_loss
    from .rundir import METRICS_NAME

    out = args.output or os.path.join(args.out_dir, "loss.png")
    path = plot_loss(os.path.join(args.out_dir, METRICS_NAME), out)
    print(f"wrote {path}")
    return 0


def cmd_attention(args):
    from .plot import plot_attention

    model, tokenizer = _load_for_sampling(args)
    ids = tokenizer.encode(args.prompt)
    if not ids:
        raise ValueError("--prompt must not be empty")
    ids = ids[-model.config.block_size:]
    tokens = [tokenizer.decode([i]) for i in ids]
    out = args.output or os.path.join(args.out_dir, "attention.png")
    import numpy as np
    path = plot_attention(model, tokens, np.asarray(ids, dtype=np.int64), out)
    print(f"wrote {path}")
    return 0


def build_parser():
    parser = _Parser(prog="numgpt", description=__doc__.splitlines()[0],
                     epilog="Exit status: 0 success, 1 failure, 2 usage error, 130 interrupted.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND",
                                help="what to do (numgpt COMMAND --help describes its flags)")
    sub.required = True

    def command(name, summary, description=None, **kwargs):
        return sub.add_parser(name, help=summary, description=description or summary[:1].upper() + summary[1:] + ".",
                              **kwargs)

    p = command("gradcheck", "check every layer's backward against finite differences (float64)")
    p.add_argument("--seed", type=_int, default=0, limits=Limits(0, integer=True),
                   help="seed of the random inputs")
    p.add_argument("--rtol", type=_float, default=1e-7, limits=Limits(0, 1, low_open=True, high_open=True),
                   help="a check passes when its largest relative error is below this")
    p.add_argument("--method", choices=["full", "adjoint"], default="full",
                   help="'full' compares every element, 'adjoint' one random direction")
    p.set_defaults(func=cmd_gradcheck)

    p = command("train", "train a GPT on text or a synthetic task",
                "Train a GPT. Defaults reproduce nanoGPT's CPU run (4 layers x 4 heads x 128, "
                "block 64, 2000 iterations) on the built-in corpus.")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    p = command("prepare", "tokenize a text corpus once into token files that train reads via memmap",
                "Encode a UTF-8 text file, or every file under a directory (sorted; documents joined by "
                "<|endoftext|> for BPE, else a newline), a chunk at a time into OUT/train.bin and OUT/val.bin "
                "(the last 10% of tokens; uint16, or uint32 for vocabularies over 65536) and OUT/meta.json. "
                "Then: numgpt train --data OUT.")
    p.add_argument("--data", required=True, help="a UTF-8 text file or a directory of them")
    p.add_argument("--tokenizer", default="char",
                   help="'char' (reads the data twice: characters first), 'byte', 'bpe' (trained on the first "
                        "--bpe_sample_chars characters) or a GPT-2 tokenizer directory (vocab.json + merges.txt)")
    p.add_argument("--out", required=True, help="directory for train.bin, val.bin and meta.json")
    p.add_argument("--vocab_size", type=_int, limits=Limits(1, integer=True), default=512, help="vocabulary size of --tokenizer bpe")
    p.add_argument("--bpe_sample_chars", type=_int, limits=Limits(1, integer=True), default=10_000_000,
                   help="characters at the start of the data that --tokenizer bpe trains on")
    p.add_argument("--chunk_mb", type=_int, limits=Limits(1, 1024, integer=True), default=4,
                   help="MB of text read and encoded at a time (up to 1024)")
    p.add_argument("--workers", type=_int, limits=Limits(1, integer=True), default=1, help="processes encoding chunks in parallel (at most one per core and per chunk)")
    p.add_argument("--overwrite", action="store_true", help="replace token files already in --out")
    p.set_defaults(func=cmd_prepare)

    def add_source(p):
        p.add_argument("--out_dir", default="out", help="directory of the training checkpoint (ckpt.npz)")
        p.add_argument("--init_from", default="",
                       help="a Hugging Face GPT-2 directory to load instead of OUT_DIR's checkpoint")
        p.add_argument("--best", action="store_true",
                       help="load the run's best-validation model (OUT_DIR/best.npz, kept when training went on "
                            "past it) instead of its last checkpoint")

    p = command("sample", "generate text from a trained checkpoint, or answer a synthetic-task problem",
                "Generate text from a trained checkpoint. For a synthetic-task checkpoint (numgpt train "
                "--task), answer the problem given as --prompt by greedy decoding.")
    add_source(p)
    p.add_argument("--prompt", default="",
                   help="text to continue (empty: start from a newline); for a task checkpoint the problem, "
                        "e.g. '2 0 1 1 0 2' (sort) or '12+34' (add)")
    p.add_argument("--num_samples", type=_int, default=1, limits=Limits(1, integer=True),
                   help="how many samples to generate")
    p.add_argument("--max_new_tokens", type=_int, default=500, limits=Limits(1, integer=True),
                   help="tokens to generate per sample")
    p.add_argument("--temperature", type=_float, default=0.8, limits=Limits(0),
                   help="divides the logits: below 1 is more conservative, 0 is greedy")
    p.add_argument("--top_k", type=_int, default=None, limits=Limits(1, integer=True),
                   help="sample only among the k most likely tokens (default: all)")
    p.add_argument("--top_p", type=_float, default=None, limits=Limits(0, 1, low_open=True),
                   help="nucleus sampling: only the most likely tokens holding this much probability mass, "
                        "in (0, 1] (default: all)")
    p.add_argument("--seed", type=_int, default=None, limits=Limits(0, integer=True),
                   help="random seed, for repeatable samples (default: a fresh one each run)")
    p.add_argument("--stop", action="append", default=[],
                   help="end a sample just before this string (repeatable)")
    p.set_defaults(func=cmd_sample)

    p = command("tokenizer", "byte-level BPE tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", help="what to do")
    tsub.required = True
    t = tsub.add_parser("train", help="train a BPE vocabulary, written in GPT-2's file format",
                        description="Train a byte-level BPE vocabulary, written in GPT-2's file format.")
    t.add_argument("--data", required=True, help="'default', 'shakespeare' or a UTF-8 text file")
    t.add_argument("--vocab_size", type=_int, required=True, limits=Limits(257, integer=True),
                   help="tokens in the vocabulary: the 256 bytes, the end-of-text token and the merges")
    t.add_argument("--out", required=True, help="directory for vocab.json and merges.txt")
    t.add_argument("--overwrite", action="store_true", help="replace tokenizer files already in --out")
    t.set_defaults(func=cmd_tokenizer_train)

    p = command("plot", "draw the train/val loss curve to a PNG (needs matplotlib)")
    p.add_argument("--out_dir", default="out", help="directory of the training run (its metrics.jsonl)")
    p.add_argument("--output", default=None, type=_png_path, help="PNG path (default: OUT_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)

    p = command("attention", "draw every layer's and head's attention over a prompt (needs matplotlib)")
    add_source(p)
    p.add_argument("--prompt", required=True, help="the text whose attention is drawn")
    p.add_argument("--output", default=None, type=_png_path, help="PNG path (default: OUT_DIR/attention.png)")
    p.set_defaults(func=cmd_attention)
    return parser


def _show_warning(command):
    """A ``warnings.showwarning`` that prints one line, ``numgpt COMMAND: warning: MESSAGE``."""
    def show(message, category, filename, lineno, file=None, line=None):
        stream = sys.stderr if file is None else file
        try:
            print(f"numgpt {command}: warning: {message}", file=stream)
        except (OSError, ValueError):     # no usable stderr: a warning is not worth a crash
            pass
    return show


class UsageError(ValueError):
    """A setting out of its range, found after parsing (reported as a usage error, exit code 2)."""


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DataError
    command = " ".join(filter(None, (args.command, getattr(args, "tokenizer_command", None))))  # as argparse names it
    previous_showwarning = warnings.showwarning
    warnings.showwarning = _show_warning(command)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"numgpt {command}: error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError, ValueError, TypeError, OSError, ImportError) as e:
        # Expected failures (bad data, flags, files) get one clear line, not a traceback;
        # NUMGPT_TRACEBACK=1 shows the traceback (for debugging numgpt itself).
        if os.environ.get("NUMGPT_TRACEBACK"):
            raise
        if not getattr(e, "mpi_quiet", False):      # under MPI, rank 0 reports a failure all ranks share
            message = describe_os_error(e) if isinstance(e, OSError) else e
            print(f"numgpt {command}: error: {message}", file=sys.stderr)
        return 1
    except MemoryError as e:
        print(f"numgpt {command}: error: not enough memory ({e or 'an allocation failed'}); try a smaller "
              f"--batch_size, --block_size or model", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from .parallel.mpi import RankFailed
        from .train import TrainingError
        if isinstance(e, (TrainingError, RankFailed)):
            if not getattr(e, "mpi_quiet", False):
                print(f"numgpt {command}: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", 2)              # train.Stopped carries the signal it stopped for
        print(f"numgpt {command}: interrupted" + (f" ({e})" if str(e) else ""), file=sys.stderr)
        return 128 + int(signum)
    finally:
        warnings.showwarning = previous_showwarning


_AS_PROGRAM = False        # True when this process is the `numgpt` command itself (see run)


def run():
    """The `numgpt` program: :func:`main` on ``sys.argv``, exiting with its status."""
    global _AS_PROGRAM
    _AS_PROGRAM = True
    sys.exit(main())


if __name__ == "__main__":
    run()
