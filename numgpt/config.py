"""The settings of a training run: one declaration per setting, read by the trainer, the CLI and config files.

Each field of :class:`TrainConfig` is declared once, with its default, its
help text and (where the values are a fixed list) its choices.  The command
line builds its ``numgpt train`` flags from these declarations, a ``--config``
file is checked against them, and :meth:`TrainConfig.validate` checks the
values, so a setting's name, default, help and allowed values live in one
place.

A preset (``gpt2``, the default, or ``modern``) names the model's
architecture choices (norm, position encoding, MLP, QK-norm, tied head, biases)
and its optimizer; a setting left at ``""`` or None takes the preset's value,
and :meth:`TrainConfig.model_choices` and :meth:`TrainConfig.optimizer_name`
are the one place that resolves them.

Resuming decides its settings in one function, :func:`resume_settings`: the
settings saved in the checkpoint, overridden by what the user gave, except the
ones that describe the model and its data (sizes, tokenizer, task), which come
from the checkpoint because the saved weights only fit them (a checkpoint
from before the presets holds a ``gpt2`` model).
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass

from .model import PRESETS
from .tasks import TASKS as _TASKS
from .tokenizers import TOKENIZER_KINDS

TASKS = tuple(_TASKS)
DTYPES = ("float32", "float64")

OPTIMIZERS = ("adamw", "muon")
# The optimizer a preset trains with when --optimizer is not given (the modern preset is the speedrun's).
PRESET_OPTIMIZERS = {"gpt2": "adamw", "modern": "muon"}
# The GPTConfig fields a preset decides and a setting may override ("" or None: the preset's value).
MODEL_CHOICES = ("norm", "position", "mlp", "qk_norm", "tie_head", "bias")

# Settings that describe the saved model and its vocabulary: a resumed run takes them from the checkpoint.
ARCHITECTURE_SETTINGS = ("n_layer", "n_head", "n_embd", "block_size", "task", "tokenizer", "vocab_size",
                         "preset") + MODEL_CHOICES


def setting(default, help, choices=None, kind=None):
    """A TrainConfig field with its help text, its type (``kind``; default: the default's type) and, if
    the values are a fixed list, its choices."""
    kind = type(default) if kind is None else kind
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "kind": kind})


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults: nanoGPT's CPU run (4 x 4 x 128, block 64) on the built-in corpus."""
    # data
    data: str = setting("default", "'default' (built-in corpus, no download), 'shakespeare' (downloaded once), "
                                   "a UTF-8 text file, or a directory of token files (numgpt prepare, nanoGPT "
                                   "or llm.c)")
    task: str = setting("", "train a synthetic task instead of text ('' for text)", ("",) + TASKS)
    tokenizer: str = setting("char", "'char', 'byte' or 'bpe' (a BPE vocabulary trained on the data)",
                             TOKENIZER_KINDS)
    vocab_size: int = setting(512, "vocabulary size of the BPE tokenizer (tokenizer 'bpe'), or of nanoGPT/llm.c "
                                   "token files given as --data DIR (a numgpt prepare directory's meta.json "
                                   "holds its own)")
    # model
    n_layer: int = setting(4, "transformer blocks")
    n_head: int = setting(4, "attention heads")
    n_embd: int = setting(128, "embedding width C")
    block_size: int = setting(64, "context length T")
    dropout: float = setting(0.0, "dropout probability (0 disables)")
    preset: str = setting("gpt2", "the architecture and optimizer: 'gpt2' (layer norm, learned positions, GELU "
                                  "MLP, tied head, biases; AdamW) or 'modern' (RMSNorm, RoPE, squared-ReLU MLP, "
                                  "QK-norm, untied head, no biases; Muon); the settings below override a part",
                          tuple(PRESETS))
    norm: str = setting("", "'layernorm' or 'rmsnorm' (default '': the preset's)", ("", "layernorm", "rmsnorm"))
    position: str = setting("", "position encoding: 'learned' (wpe) or 'rope' (default '': the preset's)",
                            ("", "learned", "rope"))
    mlp: str = setting("", "'gelu', 'relu2' (squared ReLU) or 'swiglu' (default '': the preset's)",
                       ("", "gelu", "relu2", "swiglu"))
    qk_norm: bool = setting(None, "RMS-normalise queries and keys per head (default: the preset's)", kind=bool)
    tie_head: bool = setting(None, "the output head shares the token embedding wte (default: the preset's)",
                             kind=bool)
    bias: bool = setting(None, "biases in linear and norm layers (default: the preset's; GPT-2 has them)",
                         kind=bool)
    init_from: str = setting("", "a Hugging Face GPT-2 directory to fine-tune (config.json + model.safetensors)")
    # optimisation
    batch_size: int = setting(12, "sequences per micro-batch")
    gradient_accumulation_steps: int = setting(1, "micro-batches per optimizer step")
    max_iters: int = setting(2000, "optimizer steps in all")
    learning_rate: float = setting(1e-3, "peak learning rate")
    min_lr: float = setting(1e-4, "learning rate at the end of the cosine decay")
    warmup_iters: int = setting(100, "linear warmup steps")
    lr_decay_iters: int = setting(2000, "step at which the cosine reaches min_lr")
    weight_decay: float = setting(0.1, "AdamW decoupled weight decay")
    beta1: float = setting(0.9, "AdamW beta1")
    beta2: float = setting(0.99, "AdamW beta2")
    grad_clip: float = setting(1.0, "global gradient-norm clip (0 disables)")
    optimizer: str = setting("", "'adamw', or 'muon' (Muon for the hidden 2-D weights, AdamW for embeddings, "
                                 "head, norms and biases; no weight decay for Muon) (default '': the preset's)",
                             ("",) + OPTIMIZERS)
    muon_lr: float = setting(0.02, "Muon's peak learning rate (scaled by the same warmup + cosine schedule)")
    muon_momentum: float = setting(0.95, "Muon's momentum (Nesterov)")
    max_time: float = setting(0.0, "stop once the training steps (evaluations, checkpoints and logging "
                                   "excluded) took this many seconds (0: no limit; max_iters still caps the "
                                   "run); the learning-rate schedule then runs on the fraction of this time "
                                   "spent, not on iterations: warmup takes warmup_iters/lr_decay_iters of it "
                                   "and the cosine reaches min_lr when it is spent")
    # evaluation, logging, output
    eval_interval: int = setting(250, "evaluate (and checkpoint on improvement) every this many steps")
    eval_iters: int = setting(20, "batches per split in each evaluation")
    log_interval: int = setting(10, "print progress every this many steps")
    eval_only: bool = setting(False, "evaluate once and exit")
    sample_tokens: int = setting(200, "tokens of text sampled at the end (0: none)")
    seed: int = setting(1337, "random seed (initialisation, batches, dropout)")
    out_dir: str = setting("out", "directory of the run: ckpt.npz and metrics.jsonl")
    dtype: str = setting("float32", "float32 (training) or float64", DTYPES)
    resume: bool = setting(False, "continue the run saved in out_dir/ckpt.npz")
    overwrite: bool = setting(False, "start a fresh run even if out_dir holds a checkpoint (replacing it)")

    def validate(self):
        """Raise ValueError naming the setting for any value of the wrong type or out of range; returns self."""
        for f in dataclasses.fields(self):
            _check_kind(f.name, getattr(self, f.name))
        positive = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "gradient_accumulation_steps",
                    "eval_interval", "eval_iters", "log_interval", "lr_decay_iters", "vocab_size"]
        non_negative = ["max_iters", "warmup_iters", "sample_tokens", "seed"]
        for name in positive + non_negative:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value < (1 if name in positive else 0):
                raise ValueError(f"{name} must be {'>= 1' if name in positive else '>= 0'}, got {value}")
        for name in ["learning_rate", "min_lr", "weight_decay", "grad_clip", "muon_lr", "max_time"]:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed learning_rate ({self.learning_rate})")
        for name in ["beta1", "beta2", "dropout", "muon_momentum"]:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None and getattr(self, f.name) not in choices:
                shown = ", ".join(repr(c) for c in choices)
                raise ValueError(f"{f.name} must be one of {shown}, got {getattr(self, f.name)!r}")
        if self.tokenizer == "bpe" and self.vocab_size < 257:
            raise ValueError(f"vocab_size for the BPE tokenizer must be > 256, got {self.vocab_size}")
        for name in ["data", "init_from", "out_dir"]:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string, got {value!r}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:     # a file name of bytes that are not UTF-8 (Linux hands them over)
                raise ValueError(f"{name} {value!r} is not valid UTF-8: checkpoints record the run's paths as "
                                 f"UTF-8 text, so rename it") from None
        if not self.out_dir:
            raise ValueError("out_dir must not be empty")
        if self.init_from and not self.resume:
            from .gpt2 import gpt2_mismatch

            if self.bias is False:
                raise ValueError("--init_from loads GPT-2 weights, which have a bias in every linear and "
                                 "layer-norm layer; --no-bias cannot hold them")
            differ = gpt2_mismatch(self.model_choices())
            if differ:
                raise ValueError(f"--init_from loads GPT-2 weights, which need --preset gpt2; --preset "
                                 f"{self.preset} ({', '.join(differ)}) cannot hold them")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite contradict each other: --resume continues the run in "
                             "out_dir, --overwrite replaces it")
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    def model_choices(self):
        """The GPTConfig fields of :data:`MODEL_CHOICES`: the preset's values, overridden by the ones set."""
        choices = dict(PRESETS[self.preset])
        for name in MODEL_CHOICES:
            value = getattr(self, name)
            if value is not None and value != "":
                choices[name] = value
        return choices

    def optimizer_name(self):
        """'adamw' or 'muon': ``optimizer`` if set, else the preset's."""
        return self.optimizer or PRESET_OPTIMIZERS[self.preset]

    @classmethod
    def resumed(cls, out_dir="out", log=print, **overrides):
        """The settings to continue the run saved in ``out_dir``: its own, with ``overrides`` applied.

        What ``numgpt train --resume`` uses; see :func:`resume_settings` for the rule.
        """
        from .checkpoint import CHECKPOINT_NAME, load_checkpoint

        path = os.path.join(os.fspath(out_dir), CHECKPOINT_NAME)
        if not os.path.exists(path):
            raise ValueError(f"--resume: no checkpoint at {path}; start a fresh run without --resume, "
                             f"or give the --out_dir of the run to continue")
        saved = load_checkpoint(path)[1].get("train_config")
        settings, notes = resume_settings(saved, {**overrides, "out_dir": os.fspath(out_dir)})
        for note in notes:
            log(f"note: {note}")
        return cls(**settings).validate()


def settings_help():
    """``{name: (default, help, choices)}`` for every setting, in declaration order."""
    return {f.name: (f.default, f.metadata["help"], f.metadata["choices"]) for f in dataclasses.fields(TrainConfig)}


_FIELD_INDEX = {f.name: i for i, f in enumerate(dataclasses.fields(TrainConfig))}


def setting_kinds():
    """``{name: type}`` (bool, int, float or str) for every setting; a bool may also be None (unset)."""
    return {f.name: f.metadata["kind"] for f in dataclasses.fields(TrainConfig)}


def load_config_file(path):
    """Settings from a TOML or JSON file (by its extension) as a dict of TrainConfig fields."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read config file {path}: {e.strerror}") from None
    kind = "TOML" if path.endswith(".toml") else "JSON"
    try:
        if kind == "TOML":
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
        raise ValueError(f"config file {path} is not valid {kind}: {e}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"config file {path} must hold a table/object of settings")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ValueError(f"config file {path} has unknown setting(s): {', '.join(unknown)}")
    for name, value in settings.items():
        _check_kind(name, value, f"config file {path}: ")
    return settings


def _check_kind(name, value, where=""):
    """Raise ValueError unless ``value`` has the type of setting ``name``: a quoted "false" for a switch
    is a string, and a string is true, so it would silently turn on --overwrite or --resume."""
    kind = setting_kinds()[name]
    if kind is bool:
        unset = dataclasses.fields(TrainConfig)[_FIELD_INDEX[name]].default is None
        if not (isinstance(value, bool) or (unset and value is None)):
            allowed = "true, false or unset (the preset's)" if unset else "true or false"
            raise ValueError(f"{where}{name} must be {allowed}, got {value!r}")
    elif kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}{name} must be an integer, got {value!r}")
    elif kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{where}{name} must be a number, got {value!r}")
    elif kind is str and not isinstance(value, str):
        raise ValueError(f"{where}{name} must be a string, got {value!r}")


def resume_settings(saved, given):
    """The settings of a resumed run, and notes for the user: ``(settings, notes)``.

    ``saved`` is the checkpoint's ``train_config`` (a dict, possibly from an
    older numgpt), ``given`` what the user set now. Given settings win, except
    :data:`ARCHITECTURE_SETTINGS`, which must match the saved weights and so
    come from the checkpoint (with a note when the user asked for another
    value). ``resume`` is True and ``overwrite`` False in the result.
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in (saved or {}).items() if k in known}
    if saved and "preset" not in saved:
        # Saved by a numgpt older than the presets: its model is GPT-2's, whatever the user gives now.
        settings.update({"preset": "gpt2", "norm": "", "position": "", "mlp": "", "qk_norm": None,
                         "tie_head": None})
    notes = []
    for key, value in given.items():
        if key in ARCHITECTURE_SETTINGS and key in settings:
            if value != settings[key]:
                notes.append(f"{key}={settings[key]!r} comes from the checkpoint (not {value!r})")
            continue
        settings[key] = value
    settings["resume"], settings["overwrite"] = True, False
    return settings, notes
