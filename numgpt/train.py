"""The training loop: data, model, AdamW, evaluation, logging and checkpoints.

``train(TrainConfig(...))`` does what ``numgpt train`` does, from a notebook
as well as from the command line:

1. load the text (built-in corpus, tiny Shakespeare, or a file) and build the
   tokenizer (char, byte or a freshly trained BPE), or set up a synthetic task;
2. build the model (or restore it, the optimizer and the random generator
   from ``out_dir/ckpt.npz`` when resuming);
3. loop: learning rate from the warmup + cosine schedule, forward/backward
   over ``gradient_accumulation_steps`` micro-batches, global-norm clipping,
   AdamW step; every ``log_interval`` a progress line, every
   ``eval_interval`` the mean train/val loss over ``eval_iters`` batches;
4. save a checkpoint on each validation improvement and at the end.

Nothing is lost: checkpoints are written atomically, a non-finite loss or
gradient norm stops the run (naming the iteration) without touching the last
good checkpoint, and Ctrl-C finishes the current step, saves and returns.

Determinism: the training batches (and dropout masks) come from one
``numpy.random.Generator`` whose state is saved in every checkpoint;
evaluation batches come from generators seeded by (seed, iteration). A
resumed run therefore reproduces the losses of an uninterrupted one exactly.
"""

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np

from ._parallel import default_processes
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, load_run, save_run
from .data import DataError, check_data_fits, get_batch, load_text, split_train_val
from .model import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm, cosine_lr, decay_mask_from_layout
from .sample import generate, generate_text
from .tokenizers import ByteTokenizer, CharTokenizer, encode_array

METRICS_NAME = "metrics.jsonl"


class TrainingError(RuntimeError):
    """Training stopped: the message says why and at which iteration."""


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults: nanoGPT's CPU run (4 x 4 x 128, block 64) on the built-in corpus."""
    # data
    data: str = "default"               # "default", "shakespeare", or a UTF-8 text file
    task: str = ""                      # "sort" or "add" trains a synthetic task instead of text
    tokenizer: str = "char"             # "char", "byte" or "bpe"
    vocab_size: int = 512               # BPE vocabulary size (tokenizer "bpe" only)
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    dropout: float = 0.0
    bias: bool = True
    init_from: str = ""                 # a Hugging Face GPT-2 directory to fine-tune
    # optimisation
    batch_size: int = 12
    gradient_accumulation_steps: int = 1
    max_iters: int = 2000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    # evaluation, logging, output
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    eval_only: bool = False
    sample_tokens: int = 200            # text sampled at the end (0: none)
    seed: int = 1337
    out_dir: str = "out"
    dtype: str = "float32"
    resume: bool = False

    def validate(self):
        """Raise ValueError naming the setting for any value out of range."""
        positive = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                    "eval_interval", "eval_iters", "log_interval", "lr_decay_iters"]
        non_negative = ["max_iters", "warmup_iters", "sample_tokens", "seed"]
        for name in positive + non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < (1 if name in positive else 0):
                raise ValueError(f"{name} must be {'>= 1' if name in positive else '>= 0'}, got {value}")
        for name in ["learning_rate", "min_lr", "weight_decay", "grad_clip"]:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})")
        for name in ["beta1", "beta2"]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.tokenizer not in ("char", "byte", "bpe"):
            raise ValueError(f"tokenizer must be 'char', 'byte' or 'bpe', got {self.tokenizer!r}")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise ValueError(f"vocab_size for the BPE tokenizer must be > 256, got {self.vocab_size}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.task and self.task not in ("sort", "add"):
            raise ValueError(f"task must be 'sort' or 'add' (or empty for text), got {self.task!r}")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)


def load_config_file(path):
    """Settings from a TOML or JSON file (by its extension) as a dict of TrainConfig fields."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ImportError:      # Python 3.10
                raise ValueError(f"{path}: TOML config files need Python 3.11+; use a .json file") from None
            settings = tomllib.loads(raw.decode("utf-8"))
        else:
            settings = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise
        raise ValueError(f"config file {path} is not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {e}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"config file {path} must hold a table/object of settings")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ValueError(f"config file {path} has unknown setting(s): {', '.join(unknown)}")
    return settings


# --- data ------------------------------------------------------------------------------

class TextData:
    """Token ids of a text, split 90/10, with the tokenizer that made them."""

    def __init__(self, tokenizer, train_ids, val_ids, description):
        self.tokenizer, self.train_ids, self.val_ids, self.description = tokenizer, train_ids, val_ids, description
        self.vocab_size = tokenizer.vocab_size

    def batch(self, split, batch_size, block_size, rng):
        return get_batch(self.train_ids if split == "train" else self.val_ids, batch_size, block_size, rng)


class TaskData:
    """Batches of a synthetic task; validation batches come from held-out problems."""

    def __init__(self, task):
        self.task = task
        self.tokenizer = None
        self.vocab_size = task.vocab_size
        self.description = f"synthetic task {task!r}"

    def batch(self, split, batch_size, block_size, rng):
        return self.task.sample(batch_size, rng, split="train" if split == "train" else "test")


def build_tokenizer(kind, text, vocab_size=512, log=print):
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "byte":
        return ByteTokenizer()
    from .bpe import tokens_per_char, train_bpe

    start = time.perf_counter()
    tok = train_bpe(text, vocab_size)
    log(f"trained a byte-level BPE tokenizer: {tok.vocab_size} tokens in {time.perf_counter() - start:.1f}s, "
        f"{tokens_per_char(tok, text[:200_000]):.3f} tokens per character")
    return tok


def prepare_data(cfg, tokenizer=None, log=print):
    """TextData or TaskData for ``cfg``; ``tokenizer`` (from a checkpoint) is reused when given."""
    if cfg.task:
        from .tasks import make_task
        return TaskData(make_task(cfg.task))
    text, description = load_text(cfg.data)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.tokenizer, text, cfg.vocab_size, log)
    ids = encode_array(tokenizer, text)
    needed = 10 * (cfg.block_size + 1) + 1       # the 10% validation tail must hold one window
    if len(ids) < needed:
        raise DataError(f"{description} gives only {len(ids)} tokens; a 90/10 split with block_size "
                        f"{cfg.block_size} needs at least {needed}: use more text or a smaller --block_size")
    train_ids, val_ids = split_train_val(ids, 0.1)
    check_data_fits(train_ids, cfg.block_size, "the training split")
    check_data_fits(val_ids, cfg.block_size, "the validation split (the last 10% of the text)")
    return TextData(tokenizer, train_ids, val_ids, description)


# --- the loop --------------------------------------------------------------------------------

def _format_seconds(s):
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def estimate_loss(model, data, cfg, it):
    """Mean loss over ``eval_iters`` batches of each split, from generators seeded by (seed, it)."""
    out = {}
    for k, split in enumerate(("train", "val")):
        rng = np.random.default_rng([cfg.seed, it, k])
        losses = [model.loss(*data.batch(split, cfg.batch_size, cfg.block_size, rng)) for _ in range(cfg.eval_iters)]
        out[split] = float(np.mean(losses))
    return out


def task_accuracy(model, task, n=500, seed=0):
    """Exact-match accuracy of greedy decoding on ``n`` held-out problems of ``task``."""
    def predict(prompts):
        out = generate(model, prompts, task.answer_length, temperature=0)
        return out[:, prompts.shape[1]:]
    return task.evaluate(predict, n, np.random.default_rng(seed), batch_size=250)


class _StopFlag:
    """Turns the first Ctrl-C into a request to stop after the current step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if hasattr(signal, "SIGINT") and _in_main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:          # a second Ctrl-C interrupts at once
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _in_main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


@dataclass
class TrainResult:
    model: GPT
    tokenizer: object
    iter_num: int
    best_val_loss: float
    last_eval: dict
    losses: list                 # training loss of every iteration run in this call
    checkpoint: str
    interrupted: bool = False
    samples: list = None
    accuracy: float = None


def train(cfg, log=print):
    """Run training as configured; returns a :class:`TrainResult`.

    Raises :class:`TrainingError` on a non-finite loss or gradient norm,
    ``DataError`` for unusable data, ``CheckpointError`` for an unusable checkpoint.
    """
    cfg = dataclasses.replace(cfg).validate()
    os.makedirs(cfg.out_dir, exist_ok=True)
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT_NAME)
    metrics_path = os.path.join(cfg.out_dir, METRICS_NAME)
    dtype = np.dtype(cfg.dtype)
    rng = np.random.default_rng(cfg.seed)
    tokenizer, iter_num, best_val = None, 0, float("inf")
    resumed = None
    if cfg.resume:
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        model, tokenizer, meta, arrays = load_run(ckpt_path, dtype=dtype)
        resumed = (meta, arrays)
        saved = meta.get("train_config") or {}
        for key in ("n_layer", "n_head", "n_embd", "block_size", "bias", "task"):
            if key in saved and saved[key] != getattr(cfg, key):
                log(f"note: {key}={saved[key]!r} comes from the checkpoint (not {getattr(cfg, key)!r})")
        cfg = dataclasses.replace(cfg, **{k: saved[k] for k in ("n_layer", "n_head", "n_embd", "block_size",
                                                                 "bias", "task", "tokenizer") if k in saved})
    if cfg.init_from and resumed is None and not cfg.task:
        from .gpt2 import load_gpt2_tokenizer
        tokenizer = load_gpt2_tokenizer(cfg.init_from)
        if tokenizer is None:
            raise ValueError(f"--init_from {cfg.init_from}: no GPT-2 tokenizer files beside the weights "
                             "(vocab.json + merges.txt, or encoder.json + vocab.bpe); fine-tuning needs the "
                             "tokenizer the weights were trained with")
    data = prepare_data(cfg, tokenizer, log)
    tokenizer = data.tokenizer
    log(f"data: {data.description}; vocabulary {data.vocab_size}")
    if data.tokenizer is not None:
        log(f"tokens: {len(data.train_ids):,} train, {len(data.val_ids):,} val")

    if resumed is None:
        if cfg.init_from:
            from .gpt2 import load_gpt2
            model = load_gpt2(cfg.init_from, dtype=dtype, block_size=cfg.block_size)
            if model.config.vocab_size != data.vocab_size:
                raise ValueError(f"--init_from {cfg.init_from} has vocab_size {model.config.vocab_size} but its "
                                 f"tokenizer has {data.vocab_size} tokens")
            log(f"fine-tuning {cfg.init_from}; the model's own size settings replace --n_layer/--n_head/--n_embd")
            cfg = dataclasses.replace(cfg, n_layer=model.config.n_layer, n_head=model.config.n_head,
                                      n_embd=model.config.n_embd, bias=model.config.bias, tokenizer="bpe")
        else:
            block = data.task.block_size if cfg.task else cfg.block_size
            config = GPTConfig(vocab_size=data.vocab_size, block_size=block, n_layer=cfg.n_layer,
                               n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
            model = GPT(config, seed=cfg.seed, dtype=dtype)
    if cfg.task:
        cfg = dataclasses.replace(cfg, block_size=model.config.block_size)
    if model.config.dropout != cfg.dropout:
        model.config = dataclasses.replace(model.config, dropout=cfg.dropout)

    # Forked worker processes when they pay (small models; see GPT.set_threads), else threads.
    model.set_threads(model.n_threads, processes=default_processes())
    optimizer = AdamW(model.flat_params, model.flat_grads, decay_mask_from_layout(model.layout),
                      lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if resumed is not None:
        meta, arrays = resumed
        if "optim/m" in arrays:
            optimizer.load_state_dict({"m": arrays["optim/m"], "v": arrays["optim/v"], "t": meta["optimizer_t"]})
        if meta.get("rng_state"):
            rng.bit_generator.state = meta["rng_state"]
        iter_num = int(meta["iter_num"])
        best_val = meta["best_val_loss"] if meta.get("best_val_loss") is not None else float("inf")
        log(f"resumed from {ckpt_path} at iteration {iter_num}")

    mem = model.memory_estimate(cfg.batch_size * cfg.gradient_accumulation_steps, cfg.block_size)
    log(f"model: {model.config.n_layer} layers x {model.config.n_head} heads x {model.config.n_embd}, "
        f"block {model.config.block_size}; number of parameters: {model.num_params_report() / 1e6:.2f}M; "
        f"memory estimate {mem['total'] / 2**20:.0f} MiB ({cfg.dtype})")
    task_meta = {"name": cfg.task} if cfg.task else None

    def save(reason):
        save_run(ckpt_path, model, optimizer, tokenizer, cfg, iter_num, best_val, rng, task_meta)
        return f"saved {ckpt_path} ({reason})"

    metrics = open(metrics_path, "a", encoding="utf-8")

    def record(entry):
        metrics.write(json.dumps(entry) + "\n")
        metrics.flush()

    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    log(f"training: {cfg.max_iters} iterations, {tokens_per_iter:,} tokens each; out_dir {cfg.out_dir}")
    losses, last_eval, interrupted, accuracy = [], {}, False, None
    start = time.perf_counter()
    ema_ms = None
    drop_rng = rng if cfg.dropout > 0 else None
    try:
        with _StopFlag() as stop:
            while True:
                is_last = iter_num >= cfg.max_iters
                if iter_num % cfg.eval_interval == 0 or is_last:
                    last_eval = estimate_loss(model, data, cfg, iter_num)
                    entry = {"iter": iter_num, "train_loss": last_eval["train"], "val_loss": last_eval["val"]}
                    line = f"eval {iter_num:>6} | train {last_eval['train']:.4f} | val {last_eval['val']:.4f}"
                    if cfg.task:
                        accuracy = task_accuracy(model, data.task, n=500, seed=cfg.seed)
                        entry["accuracy"] = accuracy
                        line += f" | test accuracy {accuracy:.1%}"
                    record(entry)
                    improved = last_eval["val"] < best_val
                    if improved:
                        best_val = last_eval["val"]
                    if not cfg.eval_only and (improved or is_last):
                        line += " | " + save("best val" if improved else "end")
                    log(line)
                if is_last or cfg.eval_only:
                    break
                if stop.requested:
                    interrupted = True
                    log(f"interrupted: {save('Ctrl-C')} at iteration {iter_num}")
                    break

                t0 = time.perf_counter()
                lr = cosine_lr(iter_num, cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.lr_decay_iters)
                loss = 0.0
                for micro in range(cfg.gradient_accumulation_steps):
                    x, y = data.batch("train", cfg.batch_size, cfg.block_size, rng)
                    micro_loss, _ = model.loss_and_grads(x, y, dropout_rng=drop_rng, accumulate=micro > 0,
                                                         loss_scale=1.0 / cfg.gradient_accumulation_steps)
                    loss += micro_loss / cfg.gradient_accumulation_steps
                norm = clip_grad_norm(model.flat_grads, cfg.grad_clip)
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
                    kept = f"the last good checkpoint {ckpt_path} is kept" if os.path.exists(ckpt_path) \
                        else "no checkpoint had been saved yet"
                    raise TrainingError(f"non-finite {what} at iteration {iter_num}; training stopped and {kept}. "
                                        f"Try a smaller --learning_rate or --grad_clip.")
                optimizer.step(lr)
                losses.append(loss)
                dt_ms = (time.perf_counter() - t0) * 1000
                ema_ms = dt_ms if ema_ms is None else 0.9 * ema_ms + 0.1 * dt_ms
                iter_num += 1
                if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
                    elapsed = time.perf_counter() - start
                    eta = (cfg.max_iters - iter_num) * ema_ms / 1000
                    tok_s = tokens_per_iter / (dt_ms / 1000)
                    log(f"iter {iter_num:>6} | loss {loss:.4f} | lr {lr:.2e} | {dt_ms:6.1f} ms/iter | "
                        f"{tok_s:8,.0f} tok/s | elapsed {_format_seconds(elapsed)} | eta {_format_seconds(eta)}")
                    record({"iter": iter_num, "loss": loss, "lr": lr, "ms_per_iter": dt_ms,
                            "tokens_per_s": tok_s, "grad_norm": norm})
    finally:
        metrics.close()
        model.close()               # the worker processes, if any

    samples = None
    if cfg.sample_tokens and tokenizer is not None and not interrupted:
        samples = generate_text(model, tokenizer, "", num_samples=1, max_new_tokens=cfg.sample_tokens,
                                temperature=0.8, top_k=None, seed=cfg.seed)
        log("sample:\n" + samples[0])
    return TrainResult(model, tokenizer, iter_num, best_val, last_eval, losses, ckpt_path, interrupted, samples,
                       accuracy)


def resume_config(out_dir, **overrides):
    """The TrainConfig saved in ``out_dir``'s checkpoint, with ``overrides`` applied and ``resume=True``."""
    _, meta = load_checkpoint(os.path.join(out_dir, CHECKPOINT_NAME))
    saved = meta.get("train_config") or {}
    saved.update(overrides)
    saved["resume"] = True
    saved["out_dir"] = out_dir
    return TrainConfig(**saved)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `numgpt train` (numgpt.cli)")
