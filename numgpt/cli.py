"""numgpt: a GPT-2 in NumPy with hand-written gradients. Train, sample, check gradients, plot.

Only this module knows every room of the package; each subcommand is a thin
layer over a function a notebook can call directly.
"""

import argparse
import dataclasses
import os
import sys


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
    from .config import settings_help

    for name, (default, help_text, choices) in settings_help().items():
        help_text = f"{help_text} (default: {default!r})"
        flag = f"--{name}"
        # SUPPRESS: only flags given on the command line appear in args, so they can
        # override a --config file and a resumed run's saved settings.
        if isinstance(default, bool):
            action = argparse.BooleanOptionalAction if default else "store_true"
            p.add_argument(flag, action=action, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = {int: _int, float: _float, str: str}[type(default)]
            metavar = name.upper() if choices is None else "{" + ",".join(c for c in choices if c) + "}"
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, choices=choices, help=help_text,
                           metavar=metavar)
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file of settings (flags override it)")


def _int(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def cmd_train(args):
    import signal

    from .checkpoint import CHECKPOINT_NAME
    from .config import TrainConfig, load_config_file
    from .train import train

    settings = load_config_file(args.config) if args.config else {}
    settings.update({k: v for k, v in vars(args).items() if k not in ("command", "func", "config")})
    out_dir = settings.get("out_dir", TrainConfig.out_dir)
    if settings.get("resume") and os.path.exists(os.path.join(out_dir, CHECKPOINT_NAME)):
        cfg = TrainConfig.resumed(**settings)     # the saved settings, overridden by the flags given
    else:
        cfg = TrainConfig(**settings).validate()   # (train() says so if there is nothing to resume)
    result = train(cfg)
    if result.interrupted:
        how = "Ctrl-C" if result.stop_signal == signal.SIGINT else signal.Signals(result.stop_signal).name
        print(f"stopped by {how} at iteration {result.iter_num}; resume with: "
              f"numgpt train --resume --out_dir {cfg.out_dir}")
        return 128 + int(result.stop_signal)
    print(f"done: {result.iter_num} iterations, best val loss {result.best_val_loss:.4f}, "
          f"checkpoint {result.checkpoint}")
    return 0


# --- sample ----------------------------------------------------------------------------

def _load_for_sampling(args):
    from .checkpoint import load_for_inference

    model, tokenizer, task = load_for_inference(args.out_dir, init_from=args.init_from)
    if tokenizer is None:
        raise ValueError(f"{args.out_dir} holds a synthetic-task checkpoint ({task!r}); it has no text tokenizer")
    return model, tokenizer


def cmd_sample(args):
    from .sample import generate_text

    model, tokenizer = _load_for_sampling(args)
    texts = generate_text(model, tokenizer, args.prompt, num_samples=args.num_samples,
                          max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          top_p=args.top_p, seed=args.seed, stop=args.stop or None)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0


# --- tokenizer, plots ----------------------------------------------------------------------

def cmd_tokenizer_train(args):
    from .bpe import tokens_per_char, train_bpe
    from .data import load_text

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
    parser = argparse.ArgumentParser(prog="numgpt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("gradcheck", help="check every layer's backward against finite differences (float64)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed for the random inputs")
    p.add_argument("--rtol", type=float, default=1e-7, help="largest relative error that passes")
    p.add_argument("--method", choices=["full", "adjoint"], default="full",
                   help="'full' compares every element, 'adjoint' one random direction")
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("train", help="train a GPT on text or a synthetic task",
                       description="Train a GPT. Defaults reproduce nanoGPT's CPU run (4 layers x 4 heads x 128, "
                                   "block 64, 2000 iterations) on the built-in corpus.")
    _add_train_flags(p)
    p.set_defaults(func=cmd_train)

    def add_source(p):
        p.add_argument("--out_dir", default="out", help="directory of the training checkpoint (default: out)")
        p.add_argument("--init_from", default="", help="a Hugging Face GPT-2 directory instead of a checkpoint")

    p = sub.add_parser("sample", help="generate text from a trained checkpoint",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_source(p)
    p.add_argument("--prompt", default="", help="text to continue ('' starts from a newline)")
    p.add_argument("--num_samples", type=_positive_int, default=1)
    p.add_argument("--max_new_tokens", type=_positive_int, default=500)
    p.add_argument("--temperature", type=_non_negative_float, default=0.8, help="0 is greedy")
    p.add_argument("--top_k", type=_positive_int, default=None)
    p.add_argument("--top_p", type=_float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=_int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("tokenizer", help="byte-level BPE tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tsub.required = True
    t = tsub.add_parser("train", help="train a BPE vocabulary, written in GPT-2's file format",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", required=True, help="'default', 'shakespeare' or a UTF-8 text file")
    t.add_argument("--vocab_size", type=_positive_int, required=True)
    t.add_argument("--out", required=True, help="directory for vocab.json and merges.txt")
    t.set_defaults(func=cmd_tokenizer_train)

    p = sub.add_parser("plot", help="draw the train/val loss curve to a PNG (needs matplotlib)")
    p.add_argument("--out_dir", default="out")
    p.add_argument("--output", default=None, help="PNG path (default: OUT_DIR/loss.png)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("attention", help="draw every layer's and head's attention over a prompt (needs matplotlib)")
    add_source(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--output", default=None, help="PNG path (default: OUT_DIR/attention.png)")
    p.set_defaults(func=cmd_attention)
    return parser


def _positive_int(text):
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text):
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from .checkpoint import CheckpointError
    from .data import DataError
    try:
        return args.func(args)
    except (DataError, CheckpointError, ValueError, TypeError, OSError, ImportError) as e:
        # Expected failures (bad data, flags, files) get one clear line, not a traceback;
        # NUMGPT_TRACEBACK=1 shows the traceback (for debugging numgpt itself).
        if os.environ.get("NUMGPT_TRACEBACK"):
            raise
        if not getattr(e, "mpi_quiet", False):      # under MPI, rank 0 reports a failure all ranks share
            print(f"numgpt {args.command}: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        from .parallel.mpi import RankFailed
        from .train import TrainingError
        if isinstance(e, (TrainingError, RankFailed)):
            if not getattr(e, "mpi_quiet", False):
                print(f"numgpt {args.command}: {e}", file=sys.stderr)
            return 1
        raise
    except KeyboardInterrupt:
        print(f"numgpt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
