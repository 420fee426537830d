"""numgpt: a GPT-2 in NumPy with every gradient derived and written by hand.

Rooms, lowest first (a room never imports a higher one):
``layers`` (forward/backward pairs) -> ``gradcheck`` -> ``model`` -> ``parallel`` (threads, forked
processes and MPI ranks around a model) -> ``optim`` ->
``tokenizers``/``bpe``/``data``/``tasks`` -> ``checkpoint``/``safetensors``/``gpt2`` ->
``sample`` -> ``config``/``rundir`` -> ``train`` -> ``cli``.
"""

# bpe registers its tokenizer kind with tokenizers.tokenizer_from_state on
# import; importing it here makes "bpe" known whichever numgpt module is used.
from . import bpe as _bpe  # noqa: F401
from .checkpoint import load_for_inference, load_run
from .gpt2 import load_gpt2, save_gpt2
from .model import GPT, GPTConfig
from .optim import AdamW, clip_grad_norm, cosine_lr
from .parallel import DataParallel
from .sample import generate, generate_text
from .train import TrainConfig, train

__version__ = "0.1.0"

__all__ = ["GPT", "GPTConfig", "DataParallel", "AdamW", "clip_grad_norm", "cosine_lr", "generate", "generate_text",
           "TrainConfig", "train", "load_run", "load_for_inference", "load_gpt2", "save_gpt2", "__version__"]
