r"""The GPT-2 model: configuration, parameter layout, and the composition of layers.

Architecture (GPT-2, pre-LN), for ids ``idx`` (B, T):

.. code-block:: text

    x = wte[idx] + wpe[:T]                                   embedding
    for each block i:
        x = x + c_proj(attention(c_attn(ln_1(x))))           attention sub-block
        x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))          MLP sub-block (4C hidden)
    logits = ln_f(x) @ wte.T                                 lm head tied to wte

That is the ``gpt2`` preset and the default. :class:`GPTConfig` also offers the
choices of today's models (Llama, the modded-nanoGPT speedrun), each a layer of
:mod:`numgpt.layers` with its own derivation page:

- ``norm="rmsnorm"``: RMSNorm (a learned weight, no bias) in place of every layer norm;
- ``position="rope"``: no ``wpe``; rotary embeddings turn q and k inside attention;
- ``mlp="relu2"`` (squared ReLU, 4C hidden) or ``mlp="swiglu"``
  (``c_fc`` makes the gate and the up projection side by side, hidden
  :func:`swiglu_hidden` (C) so that the MLP keeps about GPT-2's parameter count);
- ``qk_norm=True``: RMSNorm without weight of each head's q and k, before RoPE;
- ``tie_head=False``: an own ``lm_head.weight`` (V, C) instead of ``wte``.

The ``modern`` preset (:data:`PRESETS`) takes them all, with squared ReLU and no biases.

Every step is a forward/backward pair from :mod:`numgpt.layers`; this module
only wires them together and runs the backward in exact reverse order, adding
each gradient into its slot (the residual stream's gradient is the sum of the
skip path and the sub-block path; the tied ``wte`` gets the sum of the
embedding and the lm-head gradients).

All parameters are views into one flat buffer ``model.flat_params`` and all
gradients into ``model.flat_grads`` (as llm.c does): the optimizer, gradient
clipping and zeroing are single vector operations, and a checkpoint is one
array. Names and shapes follow the GPT-2 checkpoints (weights stored (in, out)),
so published weights map one to one.

This module runs one batch in one process. Splitting a batch across threads,
forked processes or MPI ranks is :mod:`numgpt.parallel`'s business: it wraps a
model (``DataParallel(model)``), runs :meth:`GPT.loss_forward` and
:meth:`GPT.backward` on each slice and reduces the gradients.
"""

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import layers as L


NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")
MLPS = ("gelu", "relu2", "swiglu")

# The architecture choices of each preset; the sizes are set separately.
PRESETS = {
    "gpt2": {"norm": "layernorm", "position": "learned", "mlp": "gelu", "qk_norm": False, "tie_head": True,
             "bias": True},
    "modern": {"norm": "rmsnorm", "position": "rope", "mlp": "relu2", "qk_norm": True, "tie_head": False,
               "bias": False},
}


# The architecture choices GPT-2's weights exist for (biases are checked on their own: a fine-tuning run
# takes GPT-2's, and save_gpt2 explains their absence separately).
GPT2_ARCHITECTURE = {k: v for k, v in PRESETS["gpt2"].items() if k != "bias"}


def gpt2_mismatch(choices):
    """``["norm='rmsnorm'", ...]``: the architecture choices (a dict, or a GPTConfig) that GPT-2's weights lack.

    Empty when ``choices`` is GPT-2's architecture (layer norm, learned
    positions, GELU MLP, no QK-norm, tied head).
    """
    if isinstance(choices, GPTConfig):
        choices = choices.to_dict()
    return [f"{name}={choices[name]!r}" for name, value in GPT2_ARCHITECTURE.items()
            if name in choices and choices[name] != value]


def swiglu_hidden(n_embd):
    """SwiGLU's hidden width: 8C/3 rounded up to a multiple of 8. Llama's 2/3 of 4C keeps the
    three matrices at about the parameters of a 4C two-matrix MLP; Llama rounds up to a multiple
    of 256, which at small widths (C = 128: 512 against 344) would overshoot by far."""
    return 8 * -(-8 * n_embd // 24)


@dataclass(frozen=True)
class GPTConfig:
    """Sizes and architecture choices of a model; the defaults are GPT-2's.

    ``bias=False`` drops every linear and norm bias (as nanoGPT allows); the
    other choices are described in the module docstring. Dicts written before
    the choices existed load with the defaults, i.e. as GPT-2.
    """
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True
    norm: str = "layernorm"
    position: str = "learned"
    mlp: str = "gelu"
    qk_norm: bool = False
    tie_head: bool = True

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig.n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) \
                or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("bias", "qk_norm", "tie_head"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name, choices in (("norm", NORMS), ("position", POSITIONS), ("mlp", MLPS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"GPTConfig.{name} must be one of {', '.join(map(repr, choices))}, "
                                 f"got {getattr(self, name)!r}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig.position='rope' turns features in pairs: the head size n_embd/n_head = "
                             f"{self.n_embd}/{self.n_head} = {self.n_embd // self.n_head} must be even")

    @property
    def mlp_hidden(self):
        """Width of the MLP's hidden layer: 4C, or :func:`swiglu_hidden` (C) for SwiGLU."""
        return swiglu_hidden(self.n_embd) if self.mlp == "swiglu" else 4 * self.n_embd

    def preset(self):
        """The name of the preset whose choices this config has (bias included), or None."""
        choices = {k: getattr(self, k) for k in PRESETS["gpt2"]}
        return next((name for name, preset in PRESETS.items() if preset == choices), None)

    def is_gpt2(self):
        """Whether the architecture is GPT-2's (biases aside), so that GPT-2 checkpoints fit it."""
        return not gpt2_mismatch(self)

    def to_dict(self):
        kinds = {"dropout": float, "bias": bool, "qk_norm": bool, "tie_head": bool,
                 "norm": str, "position": str, "mlp": str}
        return {k: kinds.get(k, int)(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {sorted(unknown)}")
        return cls(**d)


def param_layout(config):
    """``[(name, shape)]`` of every parameter, GPT-2 checkpoint names and shapes, in buffer order.

    RMSNorm keeps the layer norms' names (``ln_1.weight``...) and has no bias;
    RoPE has no ``wpe``; an untied head adds ``lm_head.weight`` (V, C) at the end.
    """
    V, Tm, C = config.vocab_size, config.block_size, config.n_embd
    hidden = config.mlp_hidden
    fc_out = 2 * hidden if config.mlp == "swiglu" else hidden          # SwiGLU: gate and up side by side
    layout = [("wte", (V, C))]
    if config.position == "learned":
        layout.append(("wpe", (Tm, C)))
    for i in range(config.n_layer):
        p = f"h.{i}."
        layout += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                   (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
                   (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                   (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                   (p + "mlp.c_fc.weight", (C, fc_out)), (p + "mlp.c_fc.bias", (fc_out,)),
                   (p + "mlp.c_proj.weight", (hidden, C)), (p + "mlp.c_proj.bias", (C,))]
    layout += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    if not config.tie_head:
        layout.append(("lm_head.weight", (V, C)))
    if not config.bias:
        layout = [(n, s) for n, s in layout if not n.endswith(".bias")]
    if config.norm == "rmsnorm":
        layout = [(n, s) for n, s in layout if not n.endswith(("ln_1.bias", "ln_2.bias", "ln_f.bias"))]
    return layout


def param_views(flat, layout):
    """Name -> view of ``flat`` reshaped, in layout order."""
    views, offset = {}, 0
    for name, shape in layout:
        size = math.prod(shape)
        views[name] = flat[offset:offset + size].reshape(shape)
        offset += size
    return views


class GPT:
    """A GPT-2 language model whose parameters live in one flat NumPy buffer.

    ``GPT(config, seed=0, dtype=np.float32)`` initialises as GPT-2/nanoGPT
    (``init=False`` skips it, leaving zeros for weights about to be loaded):
    weights N(0, 0.02), residual projections (``c_proj``) N(0, 0.02/sqrt(2 n_layer)),
    biases 0, layer-norm weights 1.
    """

    def __init__(self, config, seed=0, dtype=np.float32, init=True):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        self.config = config
        self.dtype = dtype
        self.layout = param_layout(config)
        self.num_params = sum(math.prod(s) for _, s in self.layout)
        if 2 * self.num_params * dtype.itemsize > np.iinfo(np.intp).max:    # beyond any allocation, not just this machine's
            raise ValueError(f"a model of this config (vocab_size {config.vocab_size}, block_size {config.block_size}, "
                             f"n_layer {config.n_layer}, n_embd {config.n_embd}) has {self.num_params:.3g} "
                             f"parameters, more than an address space holds")
        self.flat_params = np.zeros(self.num_params, dtype=dtype)
        self.flat_grads = np.zeros(self.num_params, dtype=dtype)
        self.params = param_views(self.flat_params, self.layout)
        self.grads = param_views(self.flat_grads, self.layout)
        self._zero_bias = np.zeros(config.n_embd, dtype=dtype)   # stands in for absent ln biases
        if init:        # init=False leaves zeros, for callers about to load weights (seconds saved at 124M)
            self.init_weights(seed)

    # --- parameters ------------------------------------------------------------

    def init_weights(self, seed=0):
        rng = np.random.default_rng(seed)
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.params.items():
            if name.endswith(".bias"):
                p[...] = 0.0
            elif name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
                p[...] = 1.0
            else:
                std = proj_std if name.endswith("c_proj.weight") else 0.02
                p[...] = rng.standard_normal(p.shape, dtype=np.float64) * std

    def use_param_buffer(self, buffer):
        """Move the parameters into ``buffer`` (1-D, ``num_params`` values of the model's dtype).

        The values are copied and ``flat_params`` and every ``params`` view are
        rebound to ``buffer`` (numgpt.parallel uses it to put them in shared
        memory). Anything holding the old buffer, such as an optimizer built
        before, no longer sees the model's parameters: build it afterwards.
        """
        if not isinstance(buffer, np.ndarray) or buffer.shape != (self.num_params,) or buffer.dtype != self.dtype:
            raise ValueError(f"buffer must be a 1-D {self.dtype} array of {self.num_params} values, got "
                             f"{getattr(buffer, 'dtype', type(buffer).__name__)} {getattr(buffer, 'shape', '')}")
        if buffer is not self.flat_params:
            buffer[...] = self.flat_params
            self.flat_params = buffer
            self.params = param_views(buffer, self.layout)

    def num_params_report(self, non_embedding=True):
        """Parameter count as nanoGPT reports it (position embeddings excluded by default)."""
        n = self.num_params
        if non_embedding and "wpe" in self.params:
            n -= self.params["wpe"].size
        return n

    def memory_estimate(self, batch_size, block_size=None):
        """Rough bytes for parameters, gradients, AdamW moments and one step's activations.

        (``numgpt.parallel.DataParallel.memory_estimate`` adds its workers' gradient buffers.)
        """
        c = self.config
        T = c.block_size if block_size is None else block_size
        for name, value, high in (("batch_size", batch_size, None), ("block_size", T, c.block_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1 \
                    or (high is not None and value > high):
                bound = f"from 1 to the model's {high}" if high is not None else ">= 1"
                raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
        item = self.dtype.itemsize
        state = 4 * self.num_params * item
        per_token_layer = 24 * c.n_embd + 2 * c.n_head * T     # cached activations + attention probs
        acts = batch_size * T * (c.n_layer * per_token_layer + 3 * c.vocab_size) * item
        return {"parameters_and_optimizer": state, "activations": acts, "total": state + acts}

    def zero_grad(self):
        self.flat_grads[...] = 0.0

    def _p(self, name):
        """A parameter, or None for an absent bias (bias=False)."""
        return self.params.get(name)

    def _ln_bias(self, name):
        p = self.params.get(name)
        return self._zero_bias if p is None else p

    def _head_weight(self):
        """The lm head's (V, C) matrix: ``wte`` when tied, else ``lm_head.weight``."""
        return self.params["wte"] if self.config.tie_head else self.params["lm_head.weight"]

    def _norm(self, run, name, x):
        """Layer norm or RMSNorm ``name`` (e.g. ``h.0.ln_1``) of ``x``, as the config says."""
        if self.config.norm == "rmsnorm":
            return run(name, L.rmsnorm_forward, x, self.params[name + ".weight"])
        return run(name, L.layernorm_forward, x, self.params[name + ".weight"], self._ln_bias(name + ".bias"))

    # --- validation --------------------------------------------------------------

    def _check_idx(self, idx, name="idx"):
        if not isinstance(idx, np.ndarray) or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{name} must be an integer numpy array of token ids, got "
                            f"{type(idx).__name__}{'' if not isinstance(idx, np.ndarray) else ' of ' + str(idx.dtype)}")
        if idx.ndim != 2:
            raise ValueError(f"{name} must have shape (B, T), got {idx.shape}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"{name} has T={idx.shape[1]} positions but block_size is {self.config.block_size}")
        if idx.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one position, got shape {idx.shape}")
        V = self.config.vocab_size
        if idx.min() < 0 or idx.max() >= V:
            bad = idx[(idx < 0) | (idx >= V)]
            raise ValueError(f"{name} holds token ids outside [0, {V}): e.g. {bad[:5].tolist()}")

    def check_targets(self, idx, targets):
        """Raise TypeError/ValueError unless ``idx`` are valid ids and ``targets`` integers of its shape."""
        self._check_idx(idx)
        if not isinstance(targets, np.ndarray) or not np.issubdtype(targets.dtype, np.integer):
            raise TypeError("targets must be an integer numpy array")
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {idx.shape}, got {targets.shape}")

    # --- forward -------------------------------------------------------------------

    def _block(self, i, x, attend, run, drop=0.0, dropout_rng=None, pos=0, grad=True):
        """Transformer block ``i`` on the residual stream ``x``: the one definition for training and the KV cache.

        ``run(name, forward, *args)`` calls a layer's forward and returns its
        output (keeping its cache under ``name`` in training); ``attend(name,
        qkv)`` is the attention of the new positions (over the whole sequence
        in training, against the key/value cache when generating); ``pos`` is
        the position of ``x``'s first row (for RoPE); ``grad=False`` (no backward will
        run) lets GELU skip its derivative.
        """
        c = self.config
        h = f"h.{i}."
        a = self._norm(run, h + "ln_1", x)
        a = run(h + "attn.c_attn", L.linear_forward, a, self.params[h + "attn.c_attn.weight"],
                self._p(h + "attn.c_attn.bias"))                                     # (B, T, 3C)
        if c.qk_norm or c.position == "rope":
            a = run(h + "attn.qk", qk_forward, a, c.n_head, c.qk_norm, c.position == "rope", pos)
        a = attend(h + "attn.attention", a)                                         # (B, T, C)
        a = run(h + "attn.c_proj", L.linear_forward, a, self.params[h + "attn.c_proj.weight"],
                self._p(h + "attn.c_proj.bias"))
        if drop:
            a = run(h + "attn.dropout", L.dropout_forward, a, drop, dropout_rng)
        x = x + a                                                                    # residual
        m = self._norm(run, h + "ln_2", x)
        m = run(h + "mlp.c_fc", L.linear_forward, m, self.params[h + "mlp.c_fc.weight"],
                self._p(h + "mlp.c_fc.bias"))                                        # (B, T, 4C), SwiGLU (B, T, 2 hidden)
        m = run(h + "mlp.act", _activation(c.mlp, grad)[0], m)                      # (B, T, hidden)
        m = run(h + "mlp.c_proj", L.linear_forward, m, self.params[h + "mlp.c_proj.weight"],
                self._p(h + "mlp.c_proj.bias"))
        if drop:
            m = run(h + "mlp.dropout", L.dropout_forward, m, drop, dropout_rng)
        return x + m

    def _forward(self, idx, dropout_rng=None, keep_cache=False):
        """Hidden states before the lm head, ``(B, T, C)``, and ``[(layer name, cache)]`` of every layer."""
        c = self.config
        P = self.params
        drop = c.dropout if dropout_rng is not None else 0.0
        caches = [] if keep_cache else None

        def run(name, forward, *args):
            out, cache = forward(*args)
            if keep_cache:
                caches.append((name, cache))
            return out

        def attend(name, qkv):
            return run(name, L.attention_forward, qkv, c.n_head)

        x = run("embedding", L.embedding_forward, idx, P["wte"], P.get("wpe"))       # (B, T, C)
        if drop:
            x = run("embedding.dropout", L.dropout_forward, x, drop, dropout_rng)
        for i in range(c.n_layer):
            x = self._block(i, x, attend, run, drop, dropout_rng, grad=keep_cache)
        x = self._norm(run, "ln_f", x)
        return x, caches

    def forward(self, idx, last_only=False):
        """Logits ``(B, T, V)`` for ids ``idx`` (B, T), in evaluation mode (no dropout).

        ``last_only=True`` returns ``(B, 1, V)``, the last position's logits only
        (what generation needs; skips T-1 rows of the lm-head matmul).
        """
        self._check_idx(idx)
        x, _ = self._forward(idx)
        if last_only:
            x = x[:, -1:]
        logits, _ = L.linear_forward(x, self._head_weight().T)                     # (B, T, V)
        return logits

    def loss(self, idx, targets, ignore_index=-1):
        """Mean cross-entropy of the next-token predictions, evaluation mode."""
        self.check_targets(idx, targets)
        x, _ = self._forward(idx)
        logits, _ = L.linear_forward(x, self._head_weight().T)                      # (B, T, V)
        loss, _ = L.softmax_cross_entropy_forward(logits, targets, ignore_index, overwrite_logits=True)
        return float(loss)

    # --- training: forward, then backward --------------------------------------------

    def loss_and_grads(self, idx, targets, *, ignore_index=-1, dropout_rng=None, accumulate=False,
                       loss_scale=1.0):
        """Forward and backward: ``(loss, grads)``, the loss being the mean over non-ignored targets.

        ``grads`` is ``self.grads``: a dict of views into ``self.flat_grads``, named
        and shaped like ``self.params``. They are overwritten unless
        ``accumulate`` is true, in which case this call's gradient, times
        ``loss_scale``, is added to what is there (gradient accumulation over
        micro-batches: ``loss_scale = 1 / n_micro``). Dropout runs only when a
        ``dropout_rng`` (numpy Generator) is given. The returned loss is unscaled.

        One batch in this process; ``numgpt.parallel.DataParallel(model)`` runs
        slices of it on several cores (or MPI ranks) with the same result.
        """
        self.check_targets(idx, targets)
        count_targets(targets, ignore_index)
        loss, cache = self.loss_forward(idx, targets, ignore_index=ignore_index, dropout_rng=dropout_rng)
        # Without accumulation the first addition into each slot is a copy, so the
        # buffer needs no zeroing pass before the step.
        self.backward(cache, loss_scale, add=_add_into(self.grads) if accumulate else OverwritingAdd(self.grads))
        return loss, self.grads

    def loss_forward(self, idx, targets, *, ignore_index=-1, dropout_rng=None):
        """The training forward: ``(loss, cache)``, the cache holding what :meth:`backward` needs.

        ``idx`` and ``targets`` are taken as valid (see :meth:`check_targets`);
        at least one target must differ from ``ignore_index``.
        """
        x, caches = self._forward(idx, dropout_rng, keep_cache=True)
        logits, head_cache = L.linear_forward(x, self._head_weight().T)              # (B, T, V)
        # The logits, then the probabilities, then dlogits share one buffer: at GPT-2's
        # vocabulary that is 2 fewer arrays of (B*T, 50257).
        loss, ce_cache = L.softmax_cross_entropy_forward(logits, targets, ignore_index, overwrite_logits=True)
        caches += [("lm_head", head_cache), ("loss", ce_cache)]
        return float(loss), caches

    def backward(self, cache, dloss=1.0, add=None):
        """Backward of :meth:`loss_forward` (``dloss``: the gradient of the objective w.r.t. the loss).

        Walks the layers in exact reverse order and hands every parameter
        gradient to ``add(name, value, path)`` (``path`` 0 and 1 for the tied
        ``wte``'s lm-head and embedding halves, in that order; an untied
        ``wte`` has only its embedding path, 0); the default
        adds into ``self.grads``. Absent biases (``bias=False``) are skipped.
        The cache is used up (its buffers are overwritten).
        """
        c = self.config
        grads = self.grads
        add_to = _add_into(grads) if add is None else add

        def put(name, value, path=0):
            if name in grads:
                add_to(name, value, path)

        def back(name):
            got, layer_cache = cache.pop()
            assert got == name, f"backward expected the cache of {name}, found {got}"
            return layer_cache

        def dropout_back(dout, name):           # dropout ran only if the forward had a generator
            return L.dropout_backward(dout, back(name)) if cache[-1][0] == name else dout

        dlogits = L.softmax_cross_entropy_backward(dloss, back("loss"), overwrite_cache=True)   # (B, T, V)
        dx, dhead = _head_back(dlogits, back("lm_head"))                            # dhead: (V, C)
        del dlogits
        if c.tie_head:
            put("wte", dhead, path=0)                                               # lm-head path of the tie
        else:
            put("lm_head.weight", dhead)
        dx = self._norm_back(put, dx, back("ln_f"), "ln_f")
        for i in reversed(range(c.n_layer)):
            h = f"h.{i}."
            dm = dx                                                                 # residual: both branches get dx
            dm = dropout_back(dm, h + "mlp.dropout")
            dm = _linear_back(put, dm, back(h + "mlp.c_proj"), h + "mlp.c_proj")
            dm = _activation(c.mlp)[1](dm, back(h + "mlp.act"))
            dm = _linear_back(put, dm, back(h + "mlp.c_fc"), h + "mlp.c_fc")
            dm = self._norm_back(put, dm, back(h + "ln_2"), h + "ln_2")
            dx = dx + dm
            da = dx
            da = dropout_back(da, h + "attn.dropout")
            da = _linear_back(put, da, back(h + "attn.c_proj"), h + "attn.c_proj")
            da = L.attention_backward(da, back(h + "attn.attention"))
            if c.qk_norm or c.position == "rope":
                da = qk_backward(da, back(h + "attn.qk"))
            da = _linear_back(put, da, back(h + "attn.c_attn"), h + "attn.c_attn")
            da = self._norm_back(put, da, back(h + "ln_1"), h + "ln_1")
            dx = dx + da
        dx = dropout_back(dx, "embedding.dropout")
        dwte, dwpe = L.embedding_backward(dx, back("embedding"))
        put("wte", dwte, path=1 if c.tie_head else 0)                               # embedding path (of the tie)
        if dwpe is not None:
            put("wpe", dwpe)
        assert not cache

    def _norm_back(self, put, dout, cache, prefix):
        """Backward of :meth:`_norm`, handing its weight (and bias) gradients to ``put``."""
        if self.config.norm == "rmsnorm":
            dx, dw = L.rmsnorm_backward(dout, cache)
        else:
            dx, dw, db = L.layernorm_backward(dout, cache)
            put(prefix + ".bias", db)
        put(prefix + ".weight", dw)
        return dx

    def attention_maps(self, idx):
        """Attention probabilities of every layer, ``(n_layer, B, H, T, T)``, evaluation mode."""
        self._check_idx(idx)
        _, caches = self._forward(idx, keep_cache=True)
        maps = []
        for name, cache in caches:
            if name.endswith(".attn.attention"):
                q, kT, v, att_probs, scale = cache          # the attention layer's cache
                maps.append(att_probs)
        return np.stack(maps)

    # --- inference with a key/value cache --------------------------------------------

    def new_kv_cache(self, batch_size):
        """Zeroed key and value buffers, ``(n_layer, B, H, block_size, D)`` each."""
        c = self.config
        shape = (c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)
        return {"k": np.zeros(shape, self.dtype), "v": np.zeros(shape, self.dtype), "pos": 0}

    def forward_step(self, idx, kv_cache, last_only=False):
        """Logits ``(B, t, V)`` for ``t`` new ids that follow the ``kv_cache["pos"]`` cached positions.

        Keys and values of the new positions are written into the cache and
        ``kv_cache["pos"]`` advances by ``t``. Equal to the matching rows of
        :meth:`forward` over the whole sequence. ``last_only=True`` returns
        ``(B, 1, V)``, the last new position's logits (generation's prefill
        needs no more: at GPT-2's vocabulary the head over a 32-token prompt is
        about a fifth of the prefill).
        """
        self._check_idx(idx)
        c, P = self.config, self.params
        pos = kv_cache["pos"]
        B, t = idx.shape
        want = (c.n_layer, B, c.n_head, c.block_size, c.n_embd // c.n_head)
        for key in ("k", "v"):      # a cache of another model (or batch size) would be read silently
            if np.shape(kv_cache[key]) != want or kv_cache[key].dtype != self.dtype:
                raise ValueError(f"kv_cache[{key!r}] has shape {np.shape(kv_cache[key])} "
                                 f"{getattr(kv_cache[key], 'dtype', '')}, expected {want} {self.dtype} for this "
                                 f"model and a batch of {B}: make it with this model's new_kv_cache({B})")
        if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or pos < 0:
            raise ValueError(f"kv_cache['pos'] must be a non-negative integer, got {pos!r}")
        if pos + t > c.block_size:
            raise ValueError(f"the KV cache holds {pos} positions; {t} more exceed block_size {c.block_size}")

        def run(name, forward, *args):
            return forward(*args)[0]

        x = P["wte"][idx]                                                           # (B, t, C)
        if c.position == "learned":
            x += P["wpe"][pos:pos + t]
        for i in range(c.n_layer):
            def attend(name, qkv, i=i):
                return L.attention_step_forward(qkv, kv_cache["k"][i], kv_cache["v"][i], pos, c.n_head)
            x = self._block(i, x, attend, run, pos=pos, grad=False)
        if last_only:
            x = x[:, -1:]
        x = self._norm(run, "ln_f", x)
        kv_cache["pos"] = pos + t
        logits, _ = L.linear_forward(x, self._head_weight().T)
        return logits

    # --- state -------------------------------------------------------------------------

    def state_dict(self):
        """Name -> a copy of each parameter."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters (cast to the model's dtype), checking names, shapes and values.

        Everything is checked before anything is copied, so a refused state dict leaves the model as it
        was. Returns ``(missing, unexpected)``, the names of each kind (both empty when ``strict``), as
        PyTorch's ``load_state_dict`` does.
        """
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        if strict and (missing or unexpected):
            raise ValueError(f"parameter names do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        values = {}
        for name, p in self.params.items():
            if name not in state:
                continue
            value = np.asarray(state[name])
            if value.shape != p.shape:
                raise ValueError(f"parameter {name} must have shape {p.shape}, got {value.shape}")
            if value.dtype.kind not in "fiu":       # object, complex, bool, strings: no faithful cast
                raise TypeError(f"parameter {name} must hold real numbers, got dtype {value.dtype}")
            with np.errstate(over="ignore"):
                cast = value.astype(p.dtype)
            if not np.isfinite(cast).all():
                raise ValueError(f"parameter {name} holds values that are not finite in {p.dtype} (NaN, inf, "
                                 f"or too large for it)")
            values[name] = cast
        for name, value in values.items():
            self.params[name][...] = value
        return missing, unexpected


def qk_forward(qkv, n_head, qk_norm, rope, pos=0):
    """QK-norm (RMSNorm without weight over each head's D features) and then RoPE of the queries
    and keys in ``qkv`` (B, T, 3C), for positions ``pos .. pos+T-1``; the values pass unchanged.

    This is the order of Qwen3 and of the modded-nanoGPT speedrun: the norm
    fixes each head's q and k to length sqrt(D), the rotation keeps that length.
    Returns the new ``qkv`` (B, T, 3C) and the cache for :func:`qk_backward`.
    """
    B, T, C3 = qkv.shape
    D = C3 // 3 // n_head
    parts = qkv.reshape(B, T, 3, n_head, D)                 # q, k, v of every head, as views
    out = np.empty_like(parts)                              # (B, T, 3, H, D)
    out[:, :, 2] = parts[:, :, 2]
    caches = []
    for j in (0, 1):                                        # queries, then keys
        y, norm_cache, rope_cache = parts[:, :, j], None, None          # (B, T, H, D)
        if qk_norm:
            y, norm_cache = L.rmsnorm_forward(y)
        if rope:
            y, rope_cache = L.rope_forward(y.transpose(0, 2, 1, 3), pos)  # (B, H, T, D), RoPE's layout
            y = y.transpose(0, 2, 1, 3)
        out[:, :, j] = y
        caches.append((norm_cache, rope_cache))
    return out.reshape(B, T, C3), (n_head, caches)


def qk_backward(dout, cache):
    """Gradient ``dqkv`` (B, T, 3C) of :func:`qk_forward`: RoPE's backward, then RMSNorm's, for q and k."""
    n_head, caches = cache
    B, T, C3 = dout.shape
    parts = dout.reshape(B, T, 3, n_head, C3 // 3 // n_head)
    dqkv = np.empty_like(parts)                             # (B, T, 3, H, D)
    dqkv[:, :, 2] = parts[:, :, 2]
    for j, (norm_cache, rope_cache) in enumerate(caches):
        g = parts[:, :, j]                                  # (B, T, H, D)
        if rope_cache is not None:
            g = L.rope_backward(g.transpose(0, 2, 1, 3), rope_cache).transpose(0, 2, 1, 3)
        if norm_cache is not None:
            g = L.rmsnorm_backward(g, norm_cache)
        dqkv[:, :, j] = g
    return dqkv.reshape(B, T, C3)


def _activation(kind, grad=True):
    """The MLP's activation for ``GPTConfig.mlp``: ``(forward, backward)`` on c_fc's output.

    ``grad=False`` (evaluation, generation) gives a GELU forward without the derivative
    it would otherwise compute for the backward.

    Looked up at each call (not a table built at import), so that a layer function
    replaced in :mod:`numgpt.layers` (as the failure tests do) is the one that runs.
    """
    if kind == "gelu":
        return (L.gelu_forward if grad else _gelu_inference), L.gelu_backward
    if kind == "relu2":
        return L.relu_squared_forward, L.relu_squared_backward
    return _swiglu_packed_forward, _swiglu_packed_backward


def _gelu_inference(a):
    return L.gelu_forward(a, derivative=False)


def _swiglu_packed_forward(a):
    """SwiGLU of c_fc's output (B, T, 2 hidden), the gate and the up projection side by side."""
    gate, up = np.split(a, 2, axis=-1)                      # (B, T, hidden) views
    return L.swiglu_forward(gate, up)


def _swiglu_packed_backward(dout, cache):
    return np.concatenate(L.swiglu_backward(dout, cache), axis=-1)   # (B, T, 2 hidden): dgate | dup


def count_targets(targets, ignore_index=-1):
    """How many ``targets`` are not ``ignore_index``; ValueError if none is (the mean loss is undefined)."""
    total = int(np.count_nonzero(targets != ignore_index))
    if total == 0:
        raise ValueError(f"every target equals ignore_index={ignore_index}: the mean loss over no targets "
                         "is undefined")
    return total


def _add_into(grads):
    """The plain reducer: ``grads[name] += value``."""
    def add(name, value, path=0):
        grads[name] += value
    return add


class OverwritingAdd:
    """A reducer whose first addition into each slot copies (the slot's old value is dropped).

    Used for a step without accumulation: every slot receives at least one
    addition, so the gradient buffer needs no zeroing pass first.
    """

    def __init__(self, grads):
        self.grads = grads
        self._written = set()

    def __call__(self, name, value, path=0):
        if name in self._written:
            self.grads[name] += value
        else:
            np.copyto(self.grads[name], value)
            self._written.add(name)


def _head_back(dlogits, cache):
    """Backward of the lm head, the bias-free linear layer logits = x W with W = head^T (C, V).

    Returns ``(dx, dhead)`` with ``dhead = dW^T = dlogits^T x`` computed directly in the
    head's stored (V, C) layout: linear_backward's dW is (C, V), and copying its transpose
    into the (V, C) gradient slot cost 167 ms a step at GPT-2 124M (one core, half a batch
    of 4 x 256), the same product in this layout nothing extra. Any gradient test of the model
    (tests/test_model.py's finite differences, the PyTorch reference) covers it.
    """
    x, w, _ = cache                          # x (..., C), w = head^T (C, V), a view
    V = w.shape[1]
    N = math.prod(x.shape[:-1])
    x2 = x.reshape(N, w.shape[0])            # (N, C)
    dlogits2 = dlogits.reshape(N, V)         # (N, V)
    dx = (dlogits2 @ w.T).reshape(x.shape)   # (..., C); w.T is the head itself, contiguous
    dhead = dlogits2.T @ x2                  # (V, C)
    return dx, dhead


def _linear_back(put, dout, cache, prefix):
    """Backward of a linear layer, handing its weight and bias gradients to ``put``."""
    dx, dw, db = L.linear_backward(dout, cache)
    put(prefix + ".weight", dw)
    put(prefix + ".bias", db)
    return dx
