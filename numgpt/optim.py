r"""AdamW, global-norm gradient clipping and the warmup + cosine learning-rate schedule.

AdamW (Loshchilov & Hutter), as PyTorch implements it, for step t = 1, 2, ...:

.. math::
    \theta \leftarrow \theta (1 - \eta \lambda) \quad \text{(decoupled weight decay, matrices only)}

    m \leftarrow \beta_1 m + (1-\beta_1) g, \qquad v \leftarrow \beta_2 v + (1-\beta_2) g^2

    \theta \leftarrow \theta - \eta\, \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}

Weight decay applies only to tensors of two or more dimensions (embeddings and
weight matrices), not to biases and layer-norm gains, as in nanoGPT.

The optimizer works on the model's flat parameter and gradient buffers, so a
step is a handful of in-place vector operations over all parameters at once.
Under ``--optimizer muon`` it owns only some ranges of them (``ranges``: the
embeddings, head, norm weights and biases) and Muon (:mod:`numgpt.muon`) the rest.
"""

import math
import numbers

import numpy as np

from .parallel.threads import default_threads, run_parallel

# Elements per block of the fused update: its arrays stay in L2 or L3 cache between the update's dozen
# passes, and each block costs 13 NumPy calls whatever its size. Measured (AVX2 host, 2 threads, float32,
# with 14 calls a block then): 2^17 took 0.83-0.89 of 2^16's time at 0.8M, 10.6M and 124M parameters;
# 2^15 and below were slower still, 2^18 no faster.
_BLOCK = 1 << 17


class AdamW:
    """AdamW over flat buffers.

    ``params`` and ``grads`` are 1-D arrays of one dtype (a model's
    ``flat_params`` / ``flat_grads``), updated in place. ``decay_mask`` is a
    boolean array of the same length, True where weight decay applies; build it
    with :func:`decay_mask_from_layout`. ``ranges`` is a list of ``(start, stop)``
    element ranges this optimizer updates (default: the whole buffer); the
    rest belongs to another optimizer (Muon's matrices) and is left alone,
    its ``m`` and ``v`` staying zero.
    """

    def __init__(self, params, grads, decay_mask=None, lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                 weight_decay=0.1, n_threads=None, ranges=None):
        if not all(isinstance(a, np.ndarray) and a.dtype.kind == "f" for a in (params, grads)) \
                or params.ndim != 1 or grads.shape != params.shape or grads.dtype != params.dtype:
            raise ValueError(f"params and grads must be 1-D floating-point numpy buffers of one shape and dtype, "
                             f"got {_describe(params)} and {_describe(grads)}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        b1, b2 = betas
        for name, value in (("beta1", b1), ("beta2", b2)):
            if not (_is_real(value) and 0.0 <= value < 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not (_is_real(eps) and 0 < eps < math.inf):
            raise ValueError(f"eps must be a finite positive number, got {eps!r}")
        check_lr(weight_decay, "weight_decay")
        check_lr(lr)
        self.params, self.grads = params, grads
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, b1, b2, eps, weight_decay
        if decay_mask is None:
            decay_mask = np.ones(params.shape, dtype=bool)
        if np.shape(decay_mask) != params.shape:
            raise ValueError(f"decay_mask must have shape {params.shape}, got {np.shape(decay_mask)}")
        decay_mask = np.asarray(decay_mask)
        self.decay_mask = decay_mask.astype(bool)
        self.ranges = _check_ranges([(0, params.size)] if ranges is None else ranges, params.size)
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0
        self.n_threads = default_threads() if n_threads is None else int(n_threads)
        if self.n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads!r}")
        # The owned ranges cut into cache-sized chunks (the whole buffer: blocks 0..n of _BLOCK, as
        # before ranges existed), each with its weight decay: all (one scalar multiply), none, or mixed.
        # Skipping Muon's ranges, rather than updating everything under an element mask, is what keeps
        # AdamW's share of a Muon step small: measured (2 threads, float32) on 6 x 6 x 384 with vocabulary
        # 65, AdamW over its 1.4% of the buffer took 1.3 ms a step against 41-44 ms for the whole buffer
        # (4 x 4 x 128: 0.4-0.7 ms against 3.2-4.5 ms).
        self._chunks = []
        for lo, hi in self.ranges:
            for start in range(lo, hi, _BLOCK):
                stop = min(start + _BLOCK, hi)
                mask = self.decay_mask[start:stop]
                decay = True if mask.all() else False if not mask.any() else None
                self._chunks.append((start, stop, decay))
        self._groups = _split_chunks(self._chunks, self.n_threads)

    def step(self, lr=None, grad_scale=1.0):
        """One update with learning rate ``lr`` (default ``self.lr``) on the gradient ``grad_scale * grads``.

        ``grad_scale`` is how the trainer clips: it passes :func:`clip_scale` of the gradient's
        norm here instead of scaling the buffer in place first (as llm.c's update takes a
        ``grad_scale``), which saves a read and a write of the whole gradient buffer. ``grads``
        itself is left as it is.
        """
        lr = self.lr if lr is None else lr
        check_lr(lr)
        check_grad_scale(grad_scale)
        self.t += 1
        run_parallel(self._step_chunks, [(group, lr, grad_scale) for group in self._groups])

    def _step_chunks(self, chunks, lr, grad_scale=1.0):
        """The update on each ``(start, stop, decay)`` chunk of ``chunks``, one cache-sized chunk at a time.

        Fast path: every pass of the update below touches a chunk that still
        sits in cache, instead of streaming the whole buffer through memory a
        dozen times (the plain formula in the module docstring; tests/test_optim.py
        compares against it). Two scalars are folded to save passes: the gradient's
        scale s goes into the moments' coefficients, (1 - b1) s g and (1 - b2) s^2 g^2,
        and the bias corrections into one step size, since
        m / bias1 / (sqrt(v / bias2) + eps) = (sqrt(bias2) / bias1) m / (sqrt(v) + eps sqrt(bias2)):
        13 passes per chunk where the formula as written takes 14, and no clipping pass.
        """
        if not chunks:
            return
        b1, b2 = self.beta1, self.beta2
        sqrt_bias2 = math.sqrt(1.0 - b2 ** self.t)
        step_size = lr * sqrt_bias2 / (1.0 - b1 ** self.t)
        eps = self.eps * sqrt_bias2
        m_coef = (1.0 - b1) * grad_scale
        v_coef = (1.0 - b2) * grad_scale * grad_scale
        decay = 1.0 - lr * self.weight_decay
        tmp_full = np.empty(max(stop - start for start, stop, _ in chunks), dtype=self.params.dtype)
        for start, stop, decays in chunks:
            p, g = self.params[start:stop], self.grads[start:stop]
            m, v = self.m[start:stop], self.v[start:stop]
            tmp = tmp_full[:stop - start]
            if self.weight_decay and decays is not False:
                if decays:
                    p *= decay
                else:
                    np.multiply(p, decay, out=p, where=self.decay_mask[start:stop])
            m *= b1                                    # m = b1 m + (1 - b1) s g
            np.multiply(g, m_coef, out=tmp)
            m += tmp
            v *= b2                                    # v = b2 v + (1 - b2) s^2 g^2
            np.multiply(g, g, out=tmp)
            tmp *= v_coef
            v += tmp
            np.sqrt(v, out=tmp)                        # sqrt(v) + eps sqrt(bias2)
            tmp += eps
            np.divide(m, tmp, out=tmp)                 # p -= lr sqrt(bias2) / bias1 * m / (...)
            tmp *= step_size
            p -= tmp

    def state_dict(self):
        return {"m": self.m.copy(), "v": self.v.copy(), "t": int(self.t)}

    def load_state_dict(self, state):
        check_state_keys(state, ("m", "v", "t"))
        for key in ("m", "v"):
            if state[key].shape != self.params.shape:
                raise ValueError(f"optimizer state {key} has shape {state[key].shape}, "
                                 f"expected {self.params.shape}")
        self.m[...] = state["m"]
        self.v[...] = state["v"]
        self.t = int(state["t"])


def check_state_keys(state, keys):
    """An optimizer state dict must hold ``keys`` and a step count ``t`` >= 0; checked before anything is copied."""
    if not isinstance(state, dict):
        raise TypeError(f"optimizer state must be a dict (from state_dict()), got {type(state).__name__}")
    missing = [k for k in keys if k not in state]
    if missing:
        raise ValueError(f"optimizer state lacks {missing}: expected the keys {list(keys)} of state_dict(), "
                         f"got {sorted(map(str, state))}")
    t = np.asarray(state["t"])                  # an int, a NumPy integer or a 0-d array of one
    if t.ndim or t.dtype.kind not in "iu" or t < 0:     # bools ("b"), floats, strings, objects refused
        raise ValueError(f"optimizer state t (the step count) must be an integer >= 0, got {state['t']!r}")


def _check_ranges(ranges, size):
    """``ranges`` as sorted, non-overlapping ``(start, stop)`` integer pairs within ``[0, size]``."""
    checked = []
    for item in ranges:
        try:
            start, stop = (int(x) for x in item)
        except (TypeError, ValueError):
            raise ValueError(f"ranges must be (start, stop) pairs of integers, got {item!r}") from None
        if not 0 <= start <= stop <= size:
            raise ValueError(f"ranges must lie within [0, {size}] with start <= stop, got ({start}, {stop})")
        if checked and start < checked[-1][1]:
            raise ValueError(f"ranges must be sorted and not overlap, got ({start}, {stop}) after {checked[-1]}")
        if stop > start:
            checked.append((start, stop))
    return checked


def _split_chunks(chunks, parts):
    """``chunks`` cut into at most ``parts`` contiguous groups of about equal element counts."""
    total = sum(stop - start for start, stop, _ in chunks)
    parts = max(1, min(parts, len(chunks)))
    groups = [[] for _ in range(parts)]
    done = 0
    for chunk in chunks:
        middle = done + (chunk[1] - chunk[0]) / 2
        groups[min(parts - 1, int(middle * parts / total))].append(chunk)
        done += chunk[1] - chunk[0]
    return [g for g in groups if g] or [[]]


def ranges_outside(size, taken):
    """The ``(start, stop)`` ranges of ``range(size)`` that no range of ``taken`` covers (sorted output)."""
    free, position = [], 0
    for start, stop in sorted(taken):
        if start > position:
            free.append((position, start))
        position = max(position, stop)
    if position < size:
        free.append((position, size))
    return free


def decay_mask_from_layout(layout):
    """Boolean flat mask: True for tensors of two or more dimensions (weight decay applies)."""
    parts = [np.full(math.prod(shape), len(shape) >= 2, dtype=bool) for _, shape in layout]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


_NORM_BLOCK = 1 << 20


def grad_norm(grads, n_threads=None):
    """Global L2 norm of a flat gradient buffer.

    Sums of squares are taken per block of 2^20 elements (BLAS dot, no float64
    copy of the buffer) and the blocks are added in double precision, in block
    order. The blocks' dot products run on ``n_threads`` threads (default: the
    trainer's thread count; NumPy releases the interpreter lock in them), and
    the result does not depend on how many: the additions happen here, in order.
    """
    if not (isinstance(grads, np.ndarray) and grads.ndim == 1 and grads.dtype.kind == "f"):
        raise TypeError(f"grads must be a 1-D floating-point array (the flat gradient buffer), got "
                        f"{type(grads).__name__} {getattr(grads, 'shape', '')} {getattr(grads, 'dtype', '')}")
    groups = _block_groups(grads.size, default_threads() if n_threads is None else n_threads)
    total = 0.0
    for sums in run_parallel(_sums_of_squares, [(grads, group) for group in groups]):
        for value in sums:
            total += value
    return math.sqrt(total)


def _sums_of_squares(grads, blocks):
    return [float(np.dot(grads[a:b], grads[a:b])) for a, b in blocks]


def _scale(grads, blocks, factor):
    for a, b in blocks:
        grads[a:b] *= factor


def _block_groups(size, parts):
    """The blocks of ``_NORM_BLOCK`` elements covering ``range(size)``, in at most ``parts`` contiguous groups."""
    blocks = [(start, min(start + _NORM_BLOCK, size), None) for start in range(0, size, _NORM_BLOCK)]
    return [[(a, b) for a, b, _ in group] for group in _split_chunks(blocks, parts)]


def _is_real(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _describe(a):
    return f"{a.shape} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__


def check_lr(lr, name="lr"):
    """Raise unless ``lr`` is a finite real number >= 0 (a NaN would make every parameter NaN)."""
    if not (_is_real(lr) and lr >= 0 and math.isfinite(lr)):
        raise ValueError(f"{name} must be a finite number >= 0, got {lr!r}")


def check_grad_scale(grad_scale):
    """Raise unless ``grad_scale`` is a positive, finite real number (an optimizer step's gradient scale)."""
    if isinstance(grad_scale, bool) or not isinstance(grad_scale, numbers.Real):
        raise TypeError(f"grad_scale must be a real number, got {type(grad_scale).__name__} {grad_scale!r}")
    if not (grad_scale > 0 and math.isfinite(grad_scale)):
        raise ValueError(f"grad_scale must be positive and finite, got {grad_scale}")


def clip_scale(norm, max_norm):
    """The factor that brings a gradient of global norm ``norm`` to at most ``max_norm``.

    ``max_norm / (norm + 1e-6)`` when the norm is finite and above ``max_norm`` (the
    1e-6 as in ``torch.nn.utils.clip_grad_norm_``), else 1.0; ``max_norm <= 0``
    disables clipping.
    """
    if max_norm > 0 and norm > max_norm and math.isfinite(norm):
        return max_norm / (norm + 1e-6)
    return 1.0


def clip_grad_norm(grads, max_norm, n_threads=None):
    """Scale the flat ``grads`` in place so their global norm is at most ``max_norm``.

    Returns the norm before clipping (as ``torch.nn.utils.clip_grad_norm_`` does).
    ``max_norm <= 0`` disables clipping. Both passes run on ``n_threads`` threads, as
    :func:`grad_norm`; the result does not depend on how many. The trainer does not
    call this: it hands :func:`clip_scale` to the optimizer's step instead (one pass
    over the buffer less), with the same update.
    """
    n_threads = default_threads() if n_threads is None else n_threads
    norm = grad_norm(grads, n_threads)
    factor = clip_scale(norm, max_norm)
    if factor != 1.0:
        run_parallel(_scale, [(grads, group, factor) for group in _block_groups(grads.size, n_threads)])
    return norm


def cosine_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """Learning rate at iteration ``it`` (0-based): linear warmup, cosine decay, then ``min_lr``.

    Warmup is ``learning_rate * (it + 1) / (warmup_iters + 1)``, so the first
    step never has a zero learning rate. ``lr_decay_iters`` is where the cosine
    reaches ``min_lr`` (nanoGPT's schedule, ``get_lr``): from ``warmup_iters`` to
    ``lr_decay_iters`` the rate falls from ``learning_rate`` along half a cosine,
    and from ``lr_decay_iters`` on it is ``min_lr``.

    If ``lr_decay_iters <= warmup_iters`` there is no cosine phase: the warmup
    is followed directly by ``min_lr``, from ``it == warmup_iters`` on. nanoGPT
    gives the same rates, except at ``it == warmup_iters == lr_decay_iters``,
    where its ``get_lr`` divides by zero; here that step gets ``min_lr``, the
    value every cosine phase ends on.
    """
    check_lr(it, "it")               # a float too: with max_time the schedule runs on the time spent
    for name, value in (("warmup_iters", warmup_iters), ("lr_decay_iters", lr_decay_iters)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    check_lr(learning_rate, "learning_rate")
    check_lr(min_lr, "min_lr")
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:          # also every it >= warmup_iters when lr_decay_iters <= warmup_iters
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)     # here warmup_iters <= it < lr_decay_iters
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (learning_rate - min_lr)
