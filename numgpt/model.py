r"""The GPT-2 model: configuration, parameter layout, and the composition of layers.

Architecture (GPT-2, pre-LN), for ids ``idx`` (B, T):

.. code-block:: text

    x = wte[idx] + wpe[:T]                                   embedding
    for each block i:
        x = x + c_proj(attention(c_attn(ln_1(x))))           attention sub-block
        x = x + mlp.c_proj(gelu(mlp.c_fc(ln_2(x))))          MLP sub-block (4C hidden)
    logits = ln_f(x) @ wte.T                                 lm head tied to wte

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
"""

import math
from dataclasses import asdict, dataclass

import numpy as np

from . import layers as L
from ._malloc import tune_malloc
from ._parallel import default_threads, run_parallel, split


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT-2 model. ``bias=False`` drops every linear and layer-norm bias (as nanoGPT allows)."""
    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float = 0.0
    bias: bool = True

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
        if not isinstance(self.bias, (bool, np.bool_)):
            raise ValueError(f"GPTConfig.bias must be True or False, got {self.bias!r}")

    def to_dict(self):
        return {k: (float(v) if k == "dropout" else bool(v) if k == "bias" else int(v))
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        known = {"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "bias"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {sorted(unknown)}")
        return cls(**d)


def param_layout(config):
    """``[(name, shape)]`` of every parameter, GPT-2 checkpoint names and shapes, in buffer order."""
    V, Tm, C = config.vocab_size, config.block_size, config.n_embd
    layout = [("wte", (V, C)), ("wpe", (Tm, C))]
    for i in range(config.n_layer):
        p = f"h.{i}."
        layout += [(p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                   (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
                   (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                   (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                   (p + "mlp.c_fc.weight", (C, 4 * C)), (p + "mlp.c_fc.bias", (4 * C,)),
                   (p + "mlp.c_proj.weight", (4 * C, C)), (p + "mlp.c_proj.bias", (C,))]
    layout += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    if not config.bias:
        layout = [(n, s) for n, s in layout if not n.endswith(".bias")]
    return layout


def _views(flat, layout):
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
        self.flat_params = np.zeros(self.num_params, dtype=dtype)
        self.flat_grads = np.zeros(self.num_params, dtype=dtype)
        self.params = _views(self.flat_params, self.layout)
        self.grads = _views(self.flat_grads, self.layout)
        self._zero_bias = np.zeros(config.n_embd, dtype=dtype)   # stands in for absent ln biases
        self._aux = []
        self.n_threads = default_threads()
        tune_malloc()           # recycle freed activation buffers (see numgpt/_malloc.py)
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

    def num_params_report(self, non_embedding=True):
        """Parameter count as nanoGPT reports it (position embeddings excluded by default)."""
        n = self.num_params
        if non_embedding:
            n -= self.params["wpe"].size
        return n

    def memory_estimate(self, batch_size, block_size=None):
        """Rough bytes for parameters, gradients, AdamW moments and one step's activations."""
        c = self.config
        T = c.block_size if block_size is None else block_size
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

    # --- forward / backward --------------------------------------------------------

    def _forward(self, idx, dropout_rng=None, keep_cache=False):
        """Hidden states before the lm head, ``(B, T, C)``, and the caches of every layer."""
        c = self.config
        P = self.params
        drop = c.dropout if dropout_rng is not None else 0.0
        caches = [] if keep_cache else None

        def run(forward, *args):
            out, cache = forward(*args)
            if keep_cache:
                caches.append(cache)
            return out

        x = run(L.embedding_forward, idx, P["wte"], P["wpe"])                    # (B, T, C)
        if drop:
            x = run(L.dropout_forward, x, drop, dropout_rng)
        for i in range(c.n_layer):
            h = f"h.{i}."
            a = run(L.layernorm_forward, x, P[h + "ln_1.weight"], self._ln_bias(h + "ln_1.bias"))
            a = run(L.linear_forward, a, P[h + "attn.c_attn.weight"], self._p(h + "attn.c_attn.bias"))  # (B,T,3C)
            a = run(L.attention_forward, a, c.n_head)                                # (B, T, C)
            a = run(L.linear_forward, a, P[h + "attn.c_proj.weight"], self._p(h + "attn.c_proj.bias"))
            if drop:
                a = run(L.dropout_forward, a, drop, dropout_rng)
            x = x + a                                                                # residual
            m = run(L.layernorm_forward, x, P[h + "ln_2.weight"], self._ln_bias(h + "ln_2.bias"))
            m = run(L.linear_forward, m, P[h + "mlp.c_fc.weight"], self._p(h + "mlp.c_fc.bias"))  # (B,T,4C)
            m = run(L.gelu_forward, m)
            m = run(L.linear_forward, m, P[h + "mlp.c_proj.weight"], self._p(h + "mlp.c_proj.bias"))
            if drop:
                m = run(L.dropout_forward, m, drop, dropout_rng)
            x = x + m
        x = run(L.layernorm_forward, x, P["ln_f.weight"], self._ln_bias("ln_f.bias"))
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
        logits, _ = L.linear_forward(x, self.params["wte"].T)                      # (B, T, V)
        return logits

    def loss(self, idx, targets, ignore_index=-1):
        """Mean cross-entropy of the next-token predictions, evaluation mode."""
        self._check_targets(idx, targets)
        loss, _ = L.softmax_cross_entropy_forward(self.forward(idx), targets, ignore_index)
        return float(loss)

    def _check_targets(self, idx, targets):
        self._check_idx(idx)
        if not isinstance(targets, np.ndarray) or not np.issubdtype(targets.dtype, np.integer):
            raise TypeError("targets must be an integer numpy array")
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {idx.shape}, got {targets.shape}")

    def loss_and_grads(self, idx, targets, *, ignore_index=-1, dropout_rng=None, accumulate=False,
                       loss_scale=1.0):
        """Forward and backward: ``(loss, grads)``, the loss being the mean over non-ignored targets.

        ``grads`` is ``self.grads``: a dict of views into ``self.flat_grads``, named
        and shaped like ``self.params``. They are overwritten unless
        ``accumulate`` is true, in which case this call's gradient, times
        ``loss_scale``, is added to what is there (gradient accumulation over
        micro-batches: ``loss_scale = 1 / n_micro``). Dropout runs only when a
        ``dropout_rng`` (numpy Generator) is given. The returned loss is unscaled.

        Fast path: the batch is cut into ``self.n_threads`` slices that run at
        once on worker threads (NumPy releases the GIL in BLAS and ufuncs), each
        with a single-threaded BLAS and its own gradient buffer; the buffers are
        then summed. Each slice's loss gradient is weighted by its share of the
        targets, so the result is the whole batch's gradient
        (tests/test_model.py compares 1 and 2 threads).
        """
        self._check_targets(idx, targets)
        parts = self._batch_parts(idx.shape[0])
        counts = [int(np.count_nonzero(targets[s] != ignore_index)) for s in parts]
        total = sum(counts)
        if total == 0:
            raise ValueError(f"every target equals ignore_index={ignore_index}: the mean loss over no targets "
                             "is undefined")
        if len(parts) > 1 and min(counts) == 0:            # a slice without targets: run the batch whole
            parts, counts = [slice(None)], [total]
        if len(parts) == 1:
            loss = self._loss_and_grads_part(idx, targets, (self.flat_grads, self.grads), accumulate, loss_scale,
                                             ignore_index, dropout_rng)
            return loss, self.grads
        # Child generators seeded from the parent's stream (not Generator.spawn, whose
        # counter is not part of the saved state): a resumed run draws the same masks.
        rngs = ([np.random.default_rng(seed) for seed in dropout_rng.integers(0, 2**63, size=len(parts))]
                if dropout_rng is not None else [None] * len(parts))
        aux = self._aux_grads(len(parts) - 1)
        grad_sets = [(self.flat_grads, self.grads)] + aux
        jobs = [(idx[s], targets[s], grads, accumulate and k == 0, loss_scale * n / total, ignore_index, rng)
                for k, (s, n, grads, rng) in enumerate(zip(parts, counts, grad_sets, rngs))]
        losses = run_parallel(self._loss_and_grads_part, jobs)
        run_parallel(_add_flat, [(self.flat_grads, [flat for flat, _ in aux], lo, hi)
                                 for lo, hi in split(self.num_params, self.n_threads)])
        return sum(loss * n for loss, n in zip(losses, counts)) / total, self.grads

    def _loss_and_grads_part(self, idx, targets, grads, accumulate, loss_scale, ignore_index, dropout_rng):
        """Forward and backward of one batch slice into ``grads`` = (flat buffer, dict of its views).

        Returns the slice's mean loss.
        """
        c = self.config
        P = self.params
        flat, G = grads
        if not accumulate:
            flat[...] = 0.0
        x, caches = self._forward(idx, dropout_rng, keep_cache=True)
        logits, head_cache = L.linear_forward(x, P["wte"].T)                        # (B, T, V)
        # The logits, then the probabilities, then dlogits share one buffer: at GPT-2's
        # vocabulary that is 2 fewer arrays of (B*T, 50257).
        loss, ce_cache = L.softmax_cross_entropy_forward(logits, targets, ignore_index, overwrite_logits=True)
        del logits

        # Backward, in exact reverse order of _forward; every gradient is added into its slot.
        drop = c.dropout if dropout_rng is not None else 0.0
        dlogits = L.softmax_cross_entropy_backward(loss_scale, ce_cache, overwrite_cache=True)   # (B, T, V)
        dx, dwte_t, _ = L.linear_backward(dlogits, head_cache)                      # dwte_t: (C, V)
        del dlogits
        G["wte"] += dwte_t.T                                                        # lm-head path of the tie
        dx, dw, db = L.layernorm_backward(dx, caches.pop())
        G["ln_f.weight"] += dw
        _add_bias_grad(G, "ln_f.bias", db)
        for i in reversed(range(c.n_layer)):
            h = f"h.{i}."
            dm = dx                                                                 # residual: both branches get dx
            if drop:
                dm = L.dropout_backward(dm, caches.pop())
            dm = _linear_back(G, dm, caches.pop(), h + "mlp.c_proj")
            dm = L.gelu_backward(dm, caches.pop())
            dm = _linear_back(G, dm, caches.pop(), h + "mlp.c_fc")
            dm, dw, db = L.layernorm_backward(dm, caches.pop())
            G[h + "ln_2.weight"] += dw
            _add_bias_grad(G, h + "ln_2.bias", db)
            dx = dx + dm
            da = dx
            if drop:
                da = L.dropout_backward(da, caches.pop())
            da = _linear_back(G, da, caches.pop(), h + "attn.c_proj")
            da = L.attention_backward(da, caches.pop())
            da = _linear_back(G, da, caches.pop(), h + "attn.c_attn")
            da, dw, db = L.layernorm_backward(da, caches.pop())
            G[h + "ln_1.weight"] += dw
            _add_bias_grad(G, h + "ln_1.bias", db)
            dx = dx + da
        if drop:
            dx = L.dropout_backward(dx, caches.pop())
        dwte, dwpe = L.embedding_backward(dx, caches.pop())
        G["wte"] += dwte                                                            # embedding path of the tie
        G["wpe"] += dwpe
        assert not caches
        return float(loss)

    # --- threads ---------------------------------------------------------------------------

    def set_threads(self, n_threads):
        """Use ``n_threads`` worker threads per step (1 disables the batch-parallel fast path)."""
        if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
        self.n_threads = int(n_threads)
        self._aux = []

    def _batch_parts(self, B):
        return [slice(lo, hi) for lo, hi in split(B, self.n_threads)]

    def _aux_grads(self, n):
        """``n`` spare (flat, named views) gradient buffers for worker threads, allocated once."""
        while len(self._aux) < n:
            flat = np.zeros(self.num_params, dtype=self.dtype)
            self._aux.append((flat, _views(flat, self.layout)))
        return self._aux[:n]

    def attention_maps(self, idx):
        """Attention probabilities of every layer, ``(n_layer, B, H, T, T)``, evaluation mode."""
        self._check_idx(idx)
        _, caches = self._forward(idx, keep_cache=True)
        # the attention cache is (q, k, v, att_probs, scale); it is the only cache holding 5 items
        return np.stack([c[3] for c in caches if isinstance(c, tuple) and len(c) == 5])

    # --- inference with a key/value cache --------------------------------------------

    def new_kv_cache(self, batch_size):
        """Zeroed key and value buffers, ``(n_layer, B, H, block_size, D)`` each."""
        c = self.config
        shape = (c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head)
        return {"k": np.zeros(shape, self.dtype), "v": np.zeros(shape, self.dtype), "pos": 0}

    def forward_step(self, idx, kv_cache):
        """Logits ``(B, t, V)`` for ``t`` new ids that follow the ``kv_cache["pos"]`` cached positions.

        Keys and values of the new positions are written into the cache and
        ``kv_cache["pos"]`` advances by ``t``. Equal to the matching rows of
        :meth:`forward` over the whole sequence.
        """
        self._check_idx(idx)
        c, P = self.config, self.params
        pos = kv_cache["pos"]
        B, t = idx.shape
        if pos + t > c.block_size:
            raise ValueError(f"the KV cache holds {pos} positions; {t} more exceed block_size {c.block_size}")
        x = P["wte"][idx] + P["wpe"][pos:pos + t]                                     # (B, t, C)
        for i in range(c.n_layer):
            h = f"h.{i}."
            a, _ = L.layernorm_forward(x, P[h + "ln_1.weight"], self._ln_bias(h + "ln_1.bias"))
            a, _ = L.linear_forward(a, P[h + "attn.c_attn.weight"], self._p(h + "attn.c_attn.bias"))
            a = L.attention_step_forward(a, kv_cache["k"][i], kv_cache["v"][i], pos, c.n_head)
            a, _ = L.linear_forward(a, P[h + "attn.c_proj.weight"], self._p(h + "attn.c_proj.bias"))
            x = x + a
            m, _ = L.layernorm_forward(x, P[h + "ln_2.weight"], self._ln_bias(h + "ln_2.bias"))
            m, _ = L.linear_forward(m, P[h + "mlp.c_fc.weight"], self._p(h + "mlp.c_fc.bias"))
            m, _ = L.gelu_forward(m)
            m, _ = L.linear_forward(m, P[h + "mlp.c_proj.weight"], self._p(h + "mlp.c_proj.bias"))
            x = x + m
        x, _ = L.layernorm_forward(x, P["ln_f.weight"], self._ln_bias("ln_f.bias"))
        kv_cache["pos"] = pos + t
        logits, _ = L.linear_forward(x, P["wte"].T)
        return logits

    # --- state -------------------------------------------------------------------------

    def state_dict(self):
        """Name -> a copy of each parameter."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the parameters (cast to the model's dtype), checking names and shapes."""
        missing = [k for k in self.params if k not in state]
        unexpected = [k for k in state if k not in self.params]
        if strict and (missing or unexpected):
            raise ValueError(f"parameter names do not match: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, p in self.params.items():
            if name in state:
                value = np.asarray(state[name])
                if value.shape != p.shape:
                    raise ValueError(f"parameter {name} must have shape {p.shape}, got {value.shape}")
                p[...] = value


def _linear_back(G, dout, cache, prefix):
    """Backward of a linear layer, adding its weight and bias gradients into ``G``."""
    dx, dw, db = L.linear_backward(dout, cache)
    G[prefix + ".weight"] += dw
    _add_bias_grad(G, prefix + ".bias", db)
    return dx


def _add_bias_grad(G, name, db):
    if name in G:             # absent when bias=False
        G[name] += db


def _add_flat(dst, sources, lo, hi):
    for src in sources:
        dst[lo:hi] += src[lo:hi]
