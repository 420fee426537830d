"""Reading and writing published GPT-2 weights in the Hugging Face layout.

OpenAI's GPT-2 checkpoints (gpt2, gpt2-medium, gpt2-large, gpt2-xl) are
published on the Hugging Face Hub as a directory of a few files::

    gpt2/
        config.json          the sizes, as GPT2Config fields (n_layer, n_embd, ...)
        model.safetensors    the weights, one tensor per parameter
        vocab.json           the BPE tokenizer: token -> id
        merges.txt           the BPE tokenizer: merge rules, best first

Get one with either of::

    huggingface-cli download gpt2 --local-dir gpt2
    hf download gpt2 config.json model.safetensors vocab.json merges.txt --local-dir gpt2

numgpt's parameters carry the GPT-2 names already (see
:func:`numgpt.model.param_layout`), so the mapping is short:

=================================  =================================
safetensors tensor                 numgpt parameter
=================================  =================================
``wte.weight``                     ``wte``
``wpe.weight``                     ``wpe``
``h.{i}.ln_1.weight`` ...          the same name
``ln_f.weight``, ``ln_f.bias``     the same name
=================================  =================================

Names may carry a ``transformer.`` prefix (what ``GPT2LMHeadModel.save_pretrained``
writes); the published files use bare names, and so does :func:`save_gpt2`.
The linear layers of GPT-2 are ``Conv1D`` modules whose weights are stored
``(in, out)``, exactly the orientation numgpt uses, so nothing is transposed.
Three kinds of tensor are not parameters and are skipped: ``h.{i}.attn.bias``
(the causal mask, saved by older versions of transformers),
``h.{i}.attn.masked_bias`` (the fill value for masked scores), and
``lm_head.weight`` (the output layer, which GPT-2 ties to ``wte``; it is
checked to equal ``wte``, since a loaded model has GPT-2's tied head).

What the loader refuses
-----------------------
numgpt computes exactly one variant of GPT-2, so a config asking for
anything else is refused rather than silently approximated:
``activation_function`` must be the tanh GELU (``"gelu_new"``, or its alias
``"gelu_pytorch_tanh"``), ``layer_norm_epsilon`` 1e-5, ``n_inner`` null or
``4 * n_embd``, ``scale_attn_weights`` true, ``scale_attn_by_inverse_layer_idx``
false, no cross-attention.

Only GPT-2's architecture exists in this layout: layer norm, learned
positions, the GELU MLP, no QK-norm and the head tied to ``wte`` (the
``gpt2`` preset of :data:`numgpt.model.PRESETS`). :func:`save_gpt2` refuses a
model with any other choice, naming it (:func:`gpt2_mismatch`), and so does
``numgpt train --init_from`` for a run whose settings ask for one.

Dropout
-------
The ``*_pdrop`` fields of a config record the dropout of the run that
produced the weights (0.1 for OpenAI's models).  They are not carried over:
a loaded model gets ``dropout=0.0`` unless the caller asks for another value,
because inference wants none and a fine-tuning run should choose its own.

Files are read through :func:`numgpt.safetensors.read_safetensors` (memory
mapped, nothing executed, F16/BF16/F32/F64 cast to the model's dtype) and
written atomically, so an interrupted :func:`save_gpt2` leaves the previous
files in place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os

import numpy as np

from ._atomic import atomic_writer
from .model import GPT, GPT2_ARCHITECTURE, GPTConfig, gpt2_mismatch, param_layout
from .safetensors import read_safetensors, write_safetensors

__all__ = [
    "GPT2_EPSILON",
    "gpt2_mismatch",
    "is_gpt2_path",
    "load_gpt2",
    "load_gpt2_tokenizer",
    "save_gpt2",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"     # sharded weights: name -> shard file

# numgpt's layer norm always uses this epsilon (it is GPT-2's).
GPT2_EPSILON = 1e-5

# The tanh approximation of GELU, under the names transformers gives it.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")

_PREFIX = "transformer."
_HEAD = "lm_head.weight"
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")

# numgpt name <-> safetensors name, where they differ.
_TO_FILE = {"wte": "wte.weight", "wpe": "wpe.weight"}
_FROM_FILE = {v: k for k, v in _TO_FILE.items()}

_HOW_TO_GET = ("a GPT-2 directory must hold config.json and model.safetensors; get one with\n"
               "    hf download gpt2 config.json model.safetensors vocab.json merges.txt --local-dir gpt2\n"
               "or\n"
               "    huggingface-cli download gpt2 --local-dir gpt2\n"
               "(gpt2-medium, gpt2-large and gpt2-xl work the same way)")


# ---------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------


def _locate(path) -> tuple[str, str, str]:
    """``(directory, config_path, weights_path)`` for a GPT-2 directory or a .safetensors file.

    ``weights_path`` is the single ``model.safetensors`` or the shard index.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        if not path.endswith(".safetensors"):
            raise ValueError(f"load_gpt2: {path!r} is a file but not a .safetensors file; "
                             f"pass a GPT-2 directory or its model.safetensors\n{_HOW_TO_GET}")
        directory = os.path.dirname(os.path.abspath(path))
        weights = path
    elif os.path.isdir(path):
        directory = path
        weights = os.path.join(path, WEIGHTS_NAME)
        if not os.path.isfile(weights) and os.path.isfile(os.path.join(path, INDEX_NAME)):
            weights = os.path.join(path, INDEX_NAME)
    else:
        raise FileNotFoundError(f"load_gpt2: no such file or directory: {path!r}\n{_HOW_TO_GET}")

    config = os.path.join(directory, CONFIG_NAME)
    missing = [name for name, p in ((CONFIG_NAME, config), (os.path.basename(weights), weights))
               if not os.path.isfile(p)]
    if missing:
        present = sorted(os.listdir(directory))
        hint = ""
        if "pytorch_model.bin" in present or "model.bin" in present:
            hint = ("\n(the directory has PyTorch pickle weights; numgpt never unpickles files, "
                    "download model.safetensors instead)")
        raise FileNotFoundError(
            f"load_gpt2: {directory!r} has no {' and no '.join(missing)} "
            f"(it holds {present[:12]}){hint}\n{_HOW_TO_GET}")
    return directory, config, weights


def is_gpt2_path(path) -> bool:
    """True if ``path`` looks like something :func:`load_gpt2` reads (a directory with
    config.json and model.safetensors, or a .safetensors file with config.json beside it)."""
    try:
        _locate(path)
    except (OSError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------
# config.json <-> GPTConfig
# ---------------------------------------------------------------------------


def _config_int(hf: dict, names: tuple[str, ...], where: str) -> int:
    given = {name: hf[name] for name in names if hf.get(name) is not None}
    if len(set(map(repr, given.values()))) > 1:
        shown = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise ValueError(f"{where}: {shown} name one size with different values; keep one of them")
    for name in names:
        if name in hf and hf[name] is not None:
            value = hf[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
            return value
    raise ValueError(f"{where}: config has no {names[0]}"
                     + (f" (nor {', '.join(names[1:])})" if len(names) > 1 else ""))


def _config_from_hf(hf: dict, where: str, block_size, dropout) -> tuple[GPTConfig, int]:
    """The :class:`GPTConfig` for a Hugging Face GPT-2 config dict, and its ``n_positions``."""
    if not isinstance(hf, dict):
        raise ValueError(f"{where}: expected a JSON object, got a JSON {type(hf).__name__}")
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise ValueError(f"{where}: model_type must be 'gpt2', got {model_type!r}")
    # GPT2Config also accepts the generic names (hidden_size, ...) as aliases.
    vocab = _config_int(hf, ("vocab_size",), where)
    # n_ctx is a legacy copy that transformers ignores: it may differ from n_positions.
    n_positions = _config_int(hf, ("n_positions", "max_position_embeddings"), where) \
        if any(hf.get(n) is not None for n in ("n_positions", "max_position_embeddings")) \
        else _config_int(hf, ("n_ctx",), where)
    n_layer = _config_int(hf, ("n_layer", "num_hidden_layers"), where)
    n_head = _config_int(hf, ("n_head", "num_attention_heads"), where)
    n_embd = _config_int(hf, ("n_embd", "hidden_size"), where)

    activation = hf.get("activation_function", "gelu_new")
    if activation not in _TANH_GELU:
        raise ValueError(
            f"{where}: activation_function must be 'gelu_new' (GPT-2's tanh GELU, the only "
            f"activation numgpt implements), got {activation!r}")
    eps = hf.get("layer_norm_epsilon", GPT2_EPSILON)
    if not isinstance(eps, (int, float)) or not math.isclose(eps, GPT2_EPSILON, rel_tol=1e-6):
        raise ValueError(f"{where}: layer_norm_epsilon must be {GPT2_EPSILON} (numgpt's layer "
                         f"norm uses GPT-2's epsilon), got {eps!r}")
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise ValueError(f"{where}: n_inner must be null or 4 * n_embd = {4 * n_embd} "
                         f"(numgpt's MLP is 4x wide), got {n_inner!r}")
    for field, wanted in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                          ("add_cross_attention", False)):
        if field in hf and bool(hf[field]) is not wanted:
            raise ValueError(f"{where}: {field} must be {str(wanted).lower()} for numgpt, "
                             f"got {hf[field]!r}")

    if block_size is None:
        block_size = n_positions
    elif isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or not 1 <= block_size <= n_positions:
        raise ValueError(f"load_gpt2: block_size must be an integer in [1, n_positions={n_positions}] "
                         f"(position embeddings can be cropped, not invented), got {block_size!r}")
    try:
        config = GPTConfig(vocab_size=vocab, block_size=int(block_size), n_layer=n_layer,
                           n_head=n_head, n_embd=n_embd, dropout=dropout, bias=True)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return config, n_positions


GPT2_VOCAB_SIZE = 50257     # GPT-2's vocabulary, whose last id (50256) is <|endoftext|>


def _hf_config(config: GPTConfig, dtype_name: str, eos) -> dict:
    """The config.json that ``GPT2LMHeadModel.from_pretrained`` reads for ``config``.

    ``eos`` is the end-of-text id, or None when the vocabulary has none (transformers' ``generate``
    stops at it, so a guess would cut text short at an ordinary token)."""
    return {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": config.dropout,
        "bos_token_id": eos,
        "embd_pdrop": config.dropout,
        "eos_token_id": eos,
        "initializer_range": 0.02,
        "layer_norm_epsilon": GPT2_EPSILON,
        "model_type": "gpt2",
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_inner": None,
        "n_layer": config.n_layer,
        "n_positions": config.block_size,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": config.dropout,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "torch_dtype": dtype_name,
        "use_cache": True,
        "vocab_size": config.vocab_size,
    }


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _read_tensors(weights_path: str) -> dict[str, np.ndarray]:
    """Every tensor of a single file or of all shards named by an index."""
    if not weights_path.endswith(".json"):
        tensors, _ = read_safetensors(weights_path)
        return tensors
    index = _read_json(weights_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"load_gpt2: {weights_path}: expected a 'weight_map' object of "
                         f"tensor name -> shard file")
    directory = os.path.dirname(weights_path)
    tensors = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = os.path.join(directory, os.path.basename(str(shard)))
        if not os.path.isfile(shard_path):
            raise FileNotFoundError(f"load_gpt2: shard {shard!r} named by {weights_path} is missing")
        tensors.update(read_safetensors(shard_path)[0])
    return tensors


def _numgpt_names(tensors: dict, where: str) -> tuple[dict, np.ndarray | None]:
    """Rename file tensors to numgpt parameter names; drop buffers; return the lm head apart."""
    params, head = {}, None
    for file_name, array in tensors.items():
        name = file_name.removeprefix(_PREFIX)
        if name == _HEAD:
            head = array
            continue
        if name.startswith("h.") and name.endswith(_BUFFER_SUFFIXES):
            continue
        name = _FROM_FILE.get(name, name)
        if name in params:
            raise ValueError(f"{where}: tensor {name!r} appears twice, with and without "
                             f"the {_PREFIX!r} prefix")
        params[name] = array
    return params, head


def load_gpt2(path, dtype=np.float32, block_size=None, *, dropout=0.0) -> GPT:
    """A :class:`~numgpt.model.GPT` holding the weights of a Hugging Face GPT-2 checkpoint.

    ``path`` is a directory with ``config.json`` and ``model.safetensors`` (or
    sharded weights with ``model.safetensors.index.json``), or a
    ``.safetensors`` file with ``config.json`` beside it.  Any GPT-2 size
    loads, as does a custom config of the same architecture.

    ``dtype`` is the model's dtype (float32 or float64); stored F16, BF16,
    F32 or F64 tensors are cast to it.  ``block_size`` (at most the
    checkpoint's ``n_positions``) keeps only the first rows of the position
    embeddings, for running or fine-tuning with a shorter context.
    ``dropout`` is the dropout of the returned model (the checkpoint's own
    ``*_pdrop`` values are ignored; see the module docstring).

    Raises FileNotFoundError when files are missing and ValueError when the
    config describes a model numgpt cannot compute or a tensor is missing,
    unexpected or of the wrong shape (the message names it).
    """
    _, config_path, weights_path = _locate(path)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"load_gpt2: dtype must be float32 or float64, got {dtype}")
    config, n_positions = _config_from_hf(_read_json(config_path), config_path, block_size, dropout)

    tensors, head = _numgpt_names(_read_tensors(weights_path), weights_path)
    if "wte" not in tensors and head is not None:
        tensors["wte"] = head          # saved with only the head's name for the tied matrix (safetensors.torch)
    # wpe is checked against the checkpoint's n_positions, then cropped. Checked before the model is
    # built, so a config.json of absurd sizes is refused by its tensors, not by running out of memory.
    expected = {name: (shape if name != "wpe" else (n_positions, shape[1]))
                for name, shape in param_layout(config)}

    missing = [name for name in expected if name not in tensors]
    unexpected = sorted(name for name in tensors if name not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s): {[_TO_FILE.get(n, n) for n in missing[:6]]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s): {unexpected[:6]}")
        raise ValueError(f"{weights_path}: the tensors do not match a GPT-2 with n_layer="
                         f"{config.n_layer} (from {CONFIG_NAME}): " + "; ".join(parts))
    for name, shape in expected.items():
        array = tensors[name]
        if array.dtype.kind != "f":
            raise ValueError(f"{weights_path}: tensor {_TO_FILE.get(name, name)!r} has dtype "
                             f"{array.dtype}, expected a float type (F16, BF16, F32 or F64)")
        if tuple(array.shape) != shape:
            raise ValueError(f"{weights_path}: tensor {_TO_FILE.get(name, name)!r} has shape "
                             f"{tuple(array.shape)}, expected {shape} for {_describe(config, n_positions)}")
    # The tie is the architecture; a different head cannot be represented.
    if head is not None and (tuple(head.shape) != expected["wte"]
                             or not np.array_equal(head, tensors["wte"])):
        raise ValueError(f"{weights_path}: {_HEAD} differs from wte.weight, but numgpt ties "
                         f"the output layer to the token embedding and cannot load an untied head")
    model = GPT(config, dtype=dtype, init=False)   # every parameter is overwritten below
    for name in expected:
        array = tensors[name]
        model.params[name][...] = array[:config.block_size] if name == "wpe" else array
    return model


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text, so not a JSON file ({exc})") from None


def gpt2_positions(path) -> int:
    """The ``n_positions`` of the GPT-2 checkpoint at ``path`` (read from its config.json alone)."""
    _, config_path, _ = _locate(path)
    return _config_from_hf(_read_json(config_path), config_path, None, 0.0)[1]


def _describe(config: GPTConfig, n_positions: int) -> str:
    return (f"vocab_size={config.vocab_size}, n_positions={n_positions}, "
            f"n_embd={config.n_embd} (from {CONFIG_NAME})")




def load_gpt2_tokenizer(path):
    """The GPT-2 BPE tokenizer stored beside the weights, or None if there is none.

    Recognises ``vocab.json`` + ``merges.txt`` or ``tokenizer.json`` (Hugging
    Face) and ``encoder.json`` + ``vocab.bpe`` (OpenAI).  ``path`` is the directory or
    a file inside it.
    """
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    for files in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"), ("tokenizer.json",)):
        if all(os.path.isfile(os.path.join(directory, name)) for name in files):
            from .bpe import BPETokenizer     # imported here: only GPT-2 users need it
            return BPETokenizer.from_dir(directory)
    return None


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------

_SAVE_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16",
                "bfloat16": "bfloat16"}


def save_gpt2(model: GPT, path, *, dtype=None, tokenizer=None, overwrite=False) -> None:
    """Write ``model`` as a Hugging Face GPT-2 directory: ``config.json`` + ``model.safetensors``.

    ``transformers.GPT2LMHeadModel.from_pretrained(path)`` loads the result,
    and so does :func:`load_gpt2`, bit for bit.  Tensors get the bare names
    of the published checkpoints (``wte.weight``, ``h.0.attn.c_attn.weight``,
    ...), no ``lm_head.weight`` (it is tied to ``wte``), and the metadata
    ``{"format": "pt"}`` that transformers requires.  ``dtype`` chooses the
    stored precision: None (the model's own), ``"float32"``, ``"float16"``,
    ``"bfloat16"`` or ``"float64"``.

    ``tokenizer``, a byte-level BPE tokenizer (GPT-2's or one numgpt trained),
    is written beside the weights (``vocab.json``, ``merges.txt``), so that
    ``numgpt sample --init_from`` and transformers find it, and its
    ``<|endoftext|>`` becomes ``bos_token_id``/``eos_token_id``. Without one
    those ids are GPT-2's 50256 for GPT-2's vocabulary size and null otherwise.

    The directory is created if needed; each file is written atomically. A
    directory that already holds a model (``config.json`` or weights) is
    refused unless ``overwrite``, which also removes the old model's
    ``generation_config.json``. Only models with biases (``bias=True``) exist
    in GPT-2 format.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"save_gpt2: model must be a numgpt GPT, got {type(model).__name__}")
    differ = gpt2_mismatch(model.config)
    if differ:
        raise ValueError(f"save_gpt2: the Hugging Face GPT-2 layout holds only GPT-2's architecture; this "
                         f"model has {', '.join(differ)} (the gpt2 preset has {GPT2_ARCHITECTURE}); save a "
                         "numgpt checkpoint instead")
    if not model.config.bias:
        raise ValueError("save_gpt2: GPT-2 format has a bias in every linear and layer-norm layer; "
                         "this model was built with bias=False and cannot be saved as GPT-2 "
                         "(save a numgpt checkpoint instead)")
    if dtype is None:
        dtype_name = model.dtype.name
    else:
        key = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        if key not in _SAVE_DTYPES:
            raise ValueError(f"save_gpt2: dtype must be None, 'float32', 'float16', 'bfloat16' "
                             f"or 'float64', got {dtype!r}")
        dtype_name = _SAVE_DTYPES[key]

    from .bpe import BPETokenizer

    if tokenizer is not None:
        if not isinstance(tokenizer, BPETokenizer):
            raise TypeError(f"save_gpt2: tokenizer must be a byte-level BPE tokenizer (GPT-2's format has no "
                            f"other), got {type(tokenizer).__name__}")
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(f"save_gpt2: the tokenizer has {tokenizer.vocab_size} tokens but the model's "
                             f"vocabulary is {model.config.vocab_size}")
        eos = tokenizer.eot_token
    else:
        eos = GPT2_VOCAB_SIZE - 1 if model.config.vocab_size == GPT2_VOCAB_SIZE else None
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"save_gpt2: {path!r} exists and is not a directory")
    present = [n for n in (CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME) if os.path.exists(os.path.join(path, n))]
    if present and not overwrite:
        raise ValueError(f"save_gpt2: {path!r} already holds a model ({', '.join(present)}); save into "
                         f"another directory, or pass overwrite=True to replace it")
    os.makedirs(path, exist_ok=True)

    tensors = {}
    for name, array in model.params.items():
        if dtype_name not in ("bfloat16", model.dtype.name):
            array = array.astype(dtype_name)
        tensors[_TO_FILE.get(name, name)] = array
    bf16 = set(tensors) if dtype_name == "bfloat16" else set()
    write_safetensors(os.path.join(path, WEIGHTS_NAME), tensors, {"format": "pt"}, bf16=bf16)

    text = json.dumps(_hf_config(model.config, dtype_name, eos), indent=2, sort_keys=True) + "\n"
    with atomic_writer(os.path.join(path, CONFIG_NAME)) as f:
        f.write(text.encode("utf-8"))
    if present:                # the replaced model's generation settings (its eos id) would outlive it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, "generation_config.json"))
    if tokenizer is not None:
        tokenizer.save(path)
