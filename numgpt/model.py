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

import functools
import math
import threading
import time
import weakref
from dataclasses import asdict, dataclass

import numpy as np

from . import layers as L
from ._blas import blas_threads
from ._forked import ForkedWorkers, fork_available, shared_zeros
from ._malloc import tune_malloc
from ._parallel import default_threads, run_parallel, split

# processes="auto" forks workers only while their private gradient buffers stay this small
PROCESS_GRADS_LIMIT = 256 << 20


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
        # Shared memory, so that forked worker processes read the current parameters (numgpt/_forked.py).
        self.flat_params = shared_zeros(self.num_params, dtype)
        self.flat_grads = np.zeros(self.num_params, dtype=dtype)
        self.params = _views(self.flat_params, self.layout)
        self.grads = _views(self.flat_grads, self.layout)
        self._zero_bias = np.zeros(config.n_embd, dtype=dtype)   # stands in for absent ln biases
        self.n_threads = default_threads()
        self.processes = False          # see set_threads
        self._workers = None            # the forked workers, started by the first step that needs them
        self._worker_grads = []         # one flat gradient buffer per worker process, in shared memory
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
        """Rough bytes for parameters, gradients, AdamW moments, worker gradients and one step's activations."""
        c = self.config
        T = c.block_size if block_size is None else block_size
        item = self.dtype.itemsize
        state = 4 * self.num_params * item
        workers = (self.n_threads - 1) * self.num_params * item if self._use_processes() else 0
        per_token_layer = 24 * c.n_embd + 2 * c.n_head * T     # cached activations + attention probs
        acts = batch_size * T * (c.n_layer * per_token_layer + 3 * c.vocab_size) * item
        return {"parameters_and_optimizer": state, "worker_gradients": workers, "activations": acts,
                "total": state + workers + acts}

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
        """Mean cross-entropy of the next-token predictions, evaluation mode.

        With worker processes (see :meth:`set_threads`) the batch's slices are
        evaluated at once, one per worker, and their means weighted by their
        target counts: the whole batch's mean up to rounding.
        """
        self._check_targets(idx, targets)
        parts = self._batch_parts(idx.shape[0])
        if len(parts) > 1 and self._use_processes():
            counts = [int(np.count_nonzero(targets[s] != ignore_index)) for s in parts]
            if min(counts) > 0:          # else the whole batch below (and its error if it has no targets)
                workers = self._start_workers()
                for k in range(1, len(parts)):
                    workers.submit(k - 1, ("loss", idx[parts[k]], targets[parts[k]], ignore_index))
                with blas_threads(1):
                    losses = [self._slice_loss(idx[parts[0]], targets[parts[0]], ignore_index)]
                losses += [workers.result(k - 1) for k in range(1, len(parts))]
                return sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
        return self._slice_loss(idx, targets, ignore_index)

    def _slice_loss(self, idx, targets, ignore_index):
        x, _ = self._forward(idx)
        logits, _ = L.linear_forward(x, self.params["wte"].T)                       # (B, T, V)
        loss, _ = L.softmax_cross_entropy_forward(logits, targets, ignore_index, overwrite_logits=True)
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
        once, each with a single-threaded BLAS: on worker threads (NumPy releases
        the GIL in BLAS and ufuncs), all adding into the one gradient buffer in a
        fixed order (see :class:`GradientSink`), or, after
        ``set_threads(n, processes=True)``, the first slice here and the others
        in forked worker processes whose gradients are added afterwards in worker
        order. Each slice's loss gradient is weighted by its share of the
        targets, so the result is the whole batch's gradient (tests/test_model.py
        and tests/test_forked.py compare with one thread).
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
            # Without accumulation the first addition into each slot is a copy (see GradientSink),
            # so the buffer needs no zeroing pass before the step.
            sink = GradientSink(self.grads, 1, overwrite=not accumulate)
            loss = self._loss_and_grads_part(idx, targets, sink, 0, loss_scale, ignore_index, dropout_rng)
            return loss, self.grads
        # Child generators seeded from the parent's stream (not Generator.spawn, whose
        # counter is not part of the saved state): a resumed run draws the same masks.
        seeds = (dropout_rng.integers(0, 2**63, size=len(parts)).tolist() if dropout_rng is not None
                 else [None] * len(parts))
        scales = [loss_scale * n / total for n in counts]
        if self._use_processes():
            losses = self._forked_step(idx, targets, parts, scales, seeds, ignore_index, accumulate)
        else:
            sink = GradientSink(self.grads, len(parts), overwrite=not accumulate)
            jobs = [(idx[s], targets[s], sink, k, scale, ignore_index, _rng(seed))
                    for k, (s, scale, seed) in enumerate(zip(parts, scales, seeds))]
            losses = run_parallel(self._loss_and_grads_part, jobs, secondary=(WorkerFailed,))
        return sum(loss * n for loss, n in zip(losses, counts)) / total, self.grads

    def _forked_step(self, idx, targets, parts, scales, seeds, ignore_index, accumulate):
        """The slices after the first run in worker processes, the first one here; returns their losses.

        Each worker writes its slice's gradient into its own shared buffer; they
        are added into ``flat_grads`` after this process's own slice, in worker
        order, so the sums are the same on every run.
        """
        workers = self._start_workers()
        for k in range(1, len(parts)):
            s = parts[k]
            workers.submit(k - 1, ("grads", k - 1, idx[s], targets[s], scales[k], ignore_index, seeds[k]))
        sink = GradientSink(self.grads, 1, overwrite=not accumulate)
        with blas_threads(1):           # the other cores run the workers
            losses = [self._slice_backward(idx[parts[0]], targets[parts[0]], sink, 0, scales[0], ignore_index,
                                           _rng(seeds[0]))]
        for k in range(1, len(parts)):
            losses.append(workers.result(k - 1))
            self.flat_grads += self._worker_grads[k - 1]
        return losses

    def _worker_slice(self, k, idx, targets, loss_scale, ignore_index, seed):
        """Runs in worker process ``k``: one slice's loss, its gradient written to that worker's buffer."""
        sink = GradientSink(_views(self._worker_grads[k], self.layout), 1, overwrite=True)
        return self._slice_backward(idx, targets, sink, 0, loss_scale, ignore_index, _rng(seed))

    def _loss_and_grads_part(self, idx, targets, sink, worker, loss_scale, ignore_index, dropout_rng):
        """Forward and backward of one batch slice, adding its gradients through ``sink`` as ``worker``.

        Returns the slice's mean loss.
        """
        try:
            return self._slice_backward(idx, targets, sink, worker, loss_scale, ignore_index, dropout_rng)
        except BaseException:
            sink.fail()           # the other workers must not wait for this one's additions
            raise

    def _slice_backward(self, idx, targets, sink, worker, loss_scale, ignore_index, dropout_rng):
        c = self.config
        P = self.params

        def add(name, value, path=0):
            sink.add(worker, name, value, path)

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
        add("wte", dwte_t.T, path=0)                                                # lm-head path of the tie
        dx, dw, db = L.layernorm_backward(dx, caches.pop())
        add("ln_f.weight", dw)
        add("ln_f.bias", db)
        for i in reversed(range(c.n_layer)):
            h = f"h.{i}."
            dm = dx                                                                 # residual: both branches get dx
            if drop:
                dm = L.dropout_backward(dm, caches.pop())
            dm = _linear_back(add, dm, caches.pop(), h + "mlp.c_proj")
            dm = L.gelu_backward(dm, caches.pop())
            dm = _linear_back(add, dm, caches.pop(), h + "mlp.c_fc")
            dm, dw, db = L.layernorm_backward(dm, caches.pop())
            add(h + "ln_2.weight", dw)
            add(h + "ln_2.bias", db)
            dx = dx + dm
            da = dx
            if drop:
                da = L.dropout_backward(da, caches.pop())
            da = _linear_back(add, da, caches.pop(), h + "attn.c_proj")
            da = L.attention_backward(da, caches.pop())
            da = _linear_back(add, da, caches.pop(), h + "attn.c_attn")
            da, dw, db = L.layernorm_backward(da, caches.pop())
            add(h + "ln_1.weight", dw)
            add(h + "ln_1.bias", db)
            dx = dx + da
        if drop:
            dx = L.dropout_backward(dx, caches.pop())
        dwte, dwpe = L.embedding_backward(dx, caches.pop())
        add("wte", dwte, path=1)                                                    # embedding path of the tie
        add("wpe", dwpe)
        sink.finish(worker)
        assert not caches
        return float(loss)

    # --- threads and worker processes ---------------------------------------------------------

    def set_threads(self, n_threads, processes=None):
        """Use ``n_threads`` workers per step (1 disables the batch-parallel fast path).

        ``processes=True`` runs every slice after the first in a forked worker
        process instead of a thread (Linux only, see numgpt/_forked.py): no
        interpreter lock between the slices, for one private gradient buffer
        (``num_params`` values) per extra worker. ``"auto"`` takes processes where
        they are available and those buffers take at most ``PROCESS_GRADS_LIMIT``
        bytes in all; ``None`` keeps the current choice. The workers are forked by
        the first step that needs them and see later parameter values (shared
        memory) but not other changes made to this object or to the code after
        the fork. :meth:`close` stops them; they also end with this process.
        """
        if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
        if not (processes is None or isinstance(processes, bool) or
                (isinstance(processes, str) and processes == "auto")):
            raise ValueError(f"processes must be True, False, 'auto' or None, got {processes!r}")
        if processes == "auto":
            grads_bytes = (int(n_threads) - 1) * self.num_params * self.dtype.itemsize
            processes = fork_available() and grads_bytes <= PROCESS_GRADS_LIMIT
        if int(n_threads) != self.n_threads or (processes is not None and processes != self.processes):
            self.close()
        self.n_threads = int(n_threads)
        if processes is not None:
            self.processes = bool(processes)

    def _use_processes(self):
        return self.processes and fork_available()

    def _start_workers(self):
        if self._workers is None or self._workers.closed:
            n = self.n_threads - 1
            self._worker_grads = [shared_zeros(self.num_params, self.dtype) for _ in range(n)]
            # A weak reference: the workers must not keep this model alive (its finalizer stops them).
            self._workers = ForkedWorkers(n, functools.partial(_run_worker_job, weakref.ref(self)))
        return self._workers

    def close(self):
        """Stop this model's worker processes, if any (a later step starts new ones)."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None
            self._worker_grads = []

    def _batch_parts(self, B):
        return [slice(lo, hi) for lo, hi in split(B, self.n_threads)]

    def attention_maps(self, idx):
        """Attention probabilities of every layer, ``(n_layer, B, H, T, T)``, evaluation mode."""
        self._check_idx(idx)
        _, caches = self._forward(idx, keep_cache=True)
        # the attention cache is (q, kT, v, att_probs, scale); it is the only cache holding 5 items
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


def _run_worker_job(model_ref, kind, *args):
    """What a worker process runs: a slice's gradient ("grads") or its evaluation loss ("loss")."""
    model = model_ref()
    return model._worker_slice(*args) if kind == "grads" else model._slice_loss(*args)


def _rng(seed):
    return None if seed is None else np.random.default_rng(seed)


def _linear_back(add, dout, cache, prefix):
    """Backward of a linear layer, handing its weight and bias gradients to ``add``."""
    dx, dw, db = L.linear_backward(dout, cache)
    add(prefix + ".weight", dw)
    add(prefix + ".bias", db)
    return dx


class WorkerFailed(RuntimeError):
    """Another worker of the same step raised; its exception is the one reported."""


class GradientOrderError(RuntimeError):
    """A worker's turn to add a gradient can never come (a bug in the order of additions), or no
    addition was made for ``GradientSink.timeout`` seconds while it waited."""


class GradientSink:
    """Adds the gradients of one step's batch slices into the model's gradient buffers.

    With one worker it is a plain ``grads[name] += value``. With several workers
    sharing the buffers, worker k's part of a parameter is added only after
    workers 0..k-1 have added theirs, and a parameter's second path (the tied
    ``wte``: lm head, then embedding) only after every worker's first path. The
    additions thus happen in one fixed order: the sums, and so training runs,
    are the same on every run, and no worker needs its own copy of the
    gradients (497 MB at GPT-2 124M).

    With ``overwrite``, the first addition into each slot (worker 0's first
    path, first in the fixed order) copies instead of adding, which saves
    zeroing the buffer first; every slot receives such a first addition.

    A worker never stops to wait for its turn: an addition that cannot be made
    yet is queued (the gradient array is kept) and made as soon as the worker's
    next :meth:`add` finds it allowed, or in :meth:`finish`, the only call that
    blocks. A worker only ever waits for an addition that comes earlier in the
    fixed order, so no two wait on each other; a worker that fails calls
    :meth:`fail` to release the others.

    Should that order be broken (a path never added, wrong turn arithmetic), the
    step must fail, not hang: once every worker is waiting or finished and no
    waiting worker's turn has come, no addition can ever be made, and the
    worker that sees it raises :class:`GradientOrderError` naming what each
    worker waits for (the others get :class:`WorkerFailed`). As a last resort a
    wait also ends with that error after ``timeout`` seconds without any
    worker's addition (a worker stuck outside the sink).
    """

    timeout = 600.0     # seconds; a slice's slowest stretch between two additions is far shorter

    def __init__(self, grads, n_workers=1, overwrite=False):
        self.grads = grads
        self.n_workers = n_workers
        self.overwrite = overwrite
        self._added = {}               # (name, path) -> how many workers have added
        self._queues = [[] for _ in range(n_workers)]
        self._cond = threading.Condition()
        self._failed = False
        self._waiting = {}             # worker -> the (name, path) it waits to add
        self._finished = set()         # workers whose every addition is made
        self._last_addition = time.monotonic()

    def add(self, worker, name, value, path=0):
        if value is None or name not in self.grads:      # absent biases when bias=False
            return
        if self.n_workers == 1:
            self._put(worker, name, path, value)
            return
        self._queues[worker].append((name, path, value))
        self._drain(worker, block=False)

    def finish(self, worker):
        """Make every queued addition of ``worker``, waiting for its turn where needed."""
        if self.n_workers > 1:
            self._drain(worker, block=True)
            with self._cond:
                self._finished.add(worker)
                self._cond.notify_all()       # the waiting workers re-check whether any can go on

    def _turn(self, worker, name, path):
        return self._added.get((name, path), 0) == worker and \
            (path == 0 or self._added.get((name, path - 1), 0) == self.n_workers)

    def _drain(self, worker, block):
        queue = self._queues[worker]
        while queue:
            name, path, value = queue[0]
            with self._cond:
                if block:
                    self._wait_for_turn(worker, name, path)
                if self._failed:
                    raise WorkerFailed("another worker of this step failed")
                if not self._turn(worker, name, path):
                    return
            self._put(worker, name, path, value)   # outside the lock: no other worker may touch this slot now
            queue.pop(0)
            with self._cond:
                self._added[(name, path)] = worker + 1
                self._last_addition = time.monotonic()
                self._cond.notify_all()

    def _wait_for_turn(self, worker, name, path):
        """Wait (holding ``self._cond``) until ``worker`` may add ``(name, path)`` or the step failed."""
        self._waiting[worker] = (name, path)
        try:
            while not (self._failed or self._turn(worker, name, path)):
                if len(self._waiting) + len(self._finished) == self.n_workers and \
                        not any(self._turn(w, *item) for w, item in self._waiting.items()):
                    self._give_up("no worker can ever add again")
                remaining = self._last_addition + self.timeout - time.monotonic()
                if remaining <= 0:
                    self._give_up(f"no worker added a gradient for {self.timeout:g} s")
                self._cond.wait(remaining)
        finally:
            del self._waiting[worker]

    def _give_up(self, why):
        self._failed = True
        self._cond.notify_all()
        waits = "; ".join(f"worker {w} waits to add {name!r} (path {path}), which needs "
                          + self._needs(w, name, path) for w, (name, path) in sorted(self._waiting.items()))
        finished = f"; finished: workers {sorted(self._finished)}" if self._finished else ""
        raise GradientOrderError(f"gradient additions out of order, {why}: {waits}{finished}")

    def _needs(self, worker, name, path):
        text = f"{worker} earlier worker(s) to have added it ({self._added.get((name, path), 0)} have)"
        if path:
            text += (f" and all {self.n_workers} workers to have added path {path - 1} "
                     f"({self._added.get((name, path - 1), 0)} have)")
        return text

    def _put(self, worker, name, path, value):
        if self.overwrite and worker == 0 and path == 0:
            np.copyto(self.grads[name], value)
        else:
            self.grads[name] += value

    def fail(self):
        with self._cond:
            self._failed = True
            self._cond.notify_all()
