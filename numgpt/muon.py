r"""Muon: momentum, then an approximate orthogonalisation of each weight matrix's update.

Muon (Keller Jordan, 2024; the optimizer of the modded-nanoGPT speedrun) updates a
2-D weight :math:`W` (rows by cols) with gradient :math:`G` as, for step t = 1, 2, ...:

.. math::
    M \leftarrow \beta M + (1 - \beta) G \qquad \text{(momentum, an exponential average)}

    U = (1 - \beta) G + \beta M \qquad \text{(Nesterov; } U = M \text{ without it)}

    O = \mathrm{NS}_5(U) \approx \text{the polar factor of } U

    W \leftarrow W (1 - \eta \lambda) - \eta \sqrt{\max(1, \text{fan\_out}/\text{fan\_in})}\; O

:math:`\mathrm{NS}_5` is five steps of the quintic Newton-Schulz iteration
:math:`X \leftarrow a X + b (X X^\top) X + c (X X^\top)^2 X` with
:math:`(a, b, c) = (3.4445, -4.7750, 2.0315)`, started from
:math:`X_0 = U / (\lVert U \rVert_F + 10^{-7})`, run on the wide orientation
(a tall matrix is transposed first and back at the end). If :math:`U = P S Q^\top`
(singular value decomposition), every step keeps :math:`P` and :math:`Q` and maps
each singular value :math:`s` to :math:`a s + b s^3 + c s^5`. These
coefficients drive every singular value that is not tiny into a band around 1
rather than onto 1: after five steps, every singular value at least 2e-3 of
the Frobenius norm ends in [0.68, 1.21] (at least 1e-2: [0.68, 1.14]), so
:math:`O \approx P Q^\top`, every direction of the update given a step of
about the same size. Smaller ones are multiplied by at most :math:`a^5 \approx 485`.

This is the reference's arithmetic (Keller Jordan's ``Muon`` repository:
``muon_update`` and ``zeropower_via_newtonschulz5``), whose scale is
``max(1, rows/cols)**0.5`` of a PyTorch weight, stored (fan_out, fan_in). numgpt
stores its linear weights the other way round, (fan_in, fan_out), as GPT-2 does;
``layout`` says which one a matrix uses (default ``"in_out"``, numgpt's), so
that the scale is the reference's for either. Two more differences. The
reference runs the iteration in bfloat16, which NumPy does not have; here it
runs in the dtype of the update (float32 in training, float64 in the tests).
And the reference's ``grad.lerp_`` overwrites the gradient with U; here the
gradient is left alone. Muon is meant for the 2-D weight matrices of the hidden
layers; embeddings, the output head, gains and biases stay with AdamW, as in
the reference. A fused projection is orthogonalised block by block
(``parts``): numgpt's ``c_attn`` holds the query, key and value matrices side by
side, and the reference orthogonalises those three apart (modded-nanoGPT keeps
them as separate weights, or merged but viewed as a stack of matrices), so each
gets its own polar factor and its own scale. Derivation and why it works:
docs/derivations/optim/muon.md.
"""

import math

import numpy as np

from .optim import check_grad_scale, check_lr, check_state_keys
from .parallel.threads import default_threads, run_parallel

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
LAYOUTS = ("in_out", "out_in")      # numgpt's (fan_in, fan_out) weights; PyTorch's (fan_out, fan_in)


# numgpt's parameters Muon trains (under numgpt train --optimizer muon): every block's attention and MLP
# matrices. Embeddings, the output head, norm weights and biases stay with AdamW.
HIDDEN_MATRIX_SUFFIXES = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")


# The hidden matrices that are several matrices side by side along their fan_out axis: c_attn's q, k, v.
FUSED_PARTS = {".attn.c_attn.weight": 3}


def fused_parts(name):
    """How many matrices the hidden weight ``name`` fuses along its fan_out axis (q, k, v in ``c_attn``: 3)."""
    return next((n for suffix, n in FUSED_PARTS.items() if name.endswith(suffix)), 1)


def hidden_matrices(layout):
    """``[(name, start, stop)]``: where each hidden 2-D weight of a model's ``layout`` lies in its flat buffer."""
    found, offset = [], 0
    for name, shape in layout:
        size = math.prod(shape)
        if name.startswith("h.") and name.endswith(HIDDEN_MATRIX_SUFFIXES) and len(shape) == 2:
            found.append((name, offset, offset + size))
        offset += size
    return found


def _check_matrix(name, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {x.shape}")


def newton_schulz(G, steps=NS_STEPS, coefficients=NS_COEFFICIENTS, eps=NS_EPS):
    """Approximate polar factor of the 2-D ``G``: ``P Q^T`` of ``G = P S Q^T``, in ``G``'s dtype.

    Each singular value of ``G / (||G||_F + eps)`` goes through the scalar map
    ``s -> a s + b s^3 + c s^5`` ``steps`` times; the singular vectors are kept.
    A zero matrix maps to zeros.
    """
    _check_matrix("G", G)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    a, b, c = (float(k) for k in coefficients)
    tall = G.shape[0] > G.shape[1]
    X = G.T if tall else G                         # (m, n) with m <= n: X X^T is the smaller Gram matrix
    # The norm as a Python float, so that the division keeps G's dtype (NEP 50).
    X = X * (1.0 / (math.sqrt(float(np.vdot(X, X))) + eps))
    for _ in range(steps):
        A = X @ X.T                                # (m, m), X X^T
        B = b * A + c * (A @ A)                    # (m, m), b A + c A^2
        X = a * X + B @ X                          # (m, n), a X + b A X + c A^2 X
    return np.ascontiguousarray(X.T) if tall else X


def _ns_cost(shape, parts=1, layout="in_out"):
    rows, cols = shape
    if layout == "in_out":
        cols //= parts
    else:
        rows //= parts
    return parts * rows * cols * min(rows, cols)


def _part_views(x, parts, layout):
    """The ``parts`` equal blocks of the 2-D ``x`` along its fan_out axis (columns in ``in_out``), as views."""
    return np.split(x, parts, axis=1 if layout == "in_out" else 0)


def _check_parts(name, parts, shape, layout):
    if isinstance(parts, bool) or not isinstance(parts, (int, np.integer)) or parts < 1:
        raise ValueError(f"{name} must be a positive integer, got {parts!r}")
    fan_out = shape[1] if layout == "in_out" else shape[0]
    if fan_out % parts:
        raise ValueError(f"{name}={parts} does not divide the fan_out axis of a matrix of shape {shape} "
                         f"stored {layout} (fan_out {fan_out})")


def update_scale(shape, layout="in_out"):
    """``sqrt(max(1, fan_out / fan_in))`` of a weight of ``shape`` stored in ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    fan_in, fan_out = shape if layout == "in_out" else shape[::-1]
    return math.sqrt(max(1.0, fan_out / fan_in))


def muon_update(grad, momentum, beta=0.95, nesterov=True, steps=NS_STEPS, layout="in_out", parts=1):
    """One Muon direction for the 2-D ``grad``; updates the ``momentum`` buffer in place.

    Returns ``update_scale(grad.shape, layout) * newton_schulz(U)`` with ``U``
    the Nesterov (or plain) momentum of the module docstring. The parameter
    moves by ``-lr`` times it. With ``parts`` > 1 the matrix is that many
    matrices side by side along its fan_out axis (a fused q, k, v projection:
    3): the momentum is the same element by element, and each block of ``U``
    is orthogonalised and scaled on its own.
    """
    _check_matrix("grad", grad)
    _check_matrix("momentum", momentum)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    _check_parts("parts", parts, grad.shape, layout)
    if momentum.shape != grad.shape or momentum.dtype != grad.dtype:
        raise ValueError(f"momentum must match grad's shape {grad.shape} and dtype {grad.dtype}, "
                         f"got {momentum.shape} {momentum.dtype}")
    momentum *= beta
    momentum += (1.0 - beta) * grad                # M = beta M + (1 - beta) G
    if nesterov:
        update = (1.0 - beta) * grad + beta * momentum   # U = (1 - beta) G + beta M
    else:
        update = momentum
    ortho = np.empty_like(grad)
    for block, out in zip(_part_views(update, parts, layout), _part_views(ortho, parts, layout)):
        out[...] = newton_schulz(block, steps)          # one block (the whole matrix when parts == 1)
        out *= update_scale(block.shape, layout)
    return ortho


class Muon:
    """Muon over a list of 2-D parameters, each updated in place from its gradient.

    ``params`` and ``grads`` are lists of 2-D arrays of matching shapes and
    dtypes (views into a model's flat buffers work: they are updated in place).
    Defaults are the reference's: ``lr`` 0.02, ``momentum`` 0.95, Nesterov,
    five Newton-Schulz steps, no weight decay. ``layout`` is how every matrix
    is stored: ``"in_out"`` (numgpt's linear weights) or ``"out_in"`` (PyTorch's).
    ``parts`` (default all 1) gives, per matrix, how many matrices it fuses
    along its fan_out axis (see :func:`muon_update`; :func:`fused_parts` says it
    for numgpt's parameter names).
    ``n_threads`` (default: the cores, at most 4) threads share the matrices,
    each running its own with one BLAS thread; the result does not depend on it.
    """

    def __init__(self, params, grads, lr=0.02, momentum=0.95, nesterov=True, steps=NS_STEPS,
                 weight_decay=0.0, layout="in_out", n_threads=None, parts=None):
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"params and grads must pair up, got {len(params)} params and {len(grads)} grads")
        for i, (p, g) in enumerate(zip(params, grads)):
            _check_matrix(f"params[{i}]", p)
            _check_matrix(f"grads[{i}]", g)
            if p.shape != g.shape or p.dtype != g.dtype:
                raise ValueError(f"params[{i}] {p.shape} {p.dtype} and grads[{i}] {g.shape} {g.dtype} "
                                 "must share shape and dtype")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        check_lr(lr)
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not isinstance(nesterov, (bool, np.bool_)):      # bool("no") would be True
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        parts = [1] * len(params) if parts is None else list(parts)
        if len(parts) != len(params):
            raise ValueError(f"parts must give one count per matrix: {len(params)} matrices, got {len(parts)} counts")
        for i, (p, n) in enumerate(zip(params, parts)):
            _check_parts(f"parts[{i}]", n, p.shape, layout)
        self.layout, self.parts = layout, [int(n) for n in parts]
        self.params, self.grads = params, grads
        self.lr, self.momentum, self.nesterov = lr, momentum, bool(nesterov)
        self.steps, self.weight_decay = steps, weight_decay
        self.buffers = [np.zeros_like(p) for p in params]
        self.t = 0
        self.n_threads = default_threads() if n_threads is None else int(n_threads)
        if self.n_threads < 1:
            raise ValueError(f"n_threads must be >= 1, got {n_threads!r}")
        # The matrices dealt to the threads, largest first to the least loaded (the cost of a Newton-Schulz
        # step is about rows * cols * min(rows, cols)), each thread with one BLAS thread, since BLAS's own
        # threads wait on each other badly when other jobs share the cores. Measured on this 2-core
        # machine, Muon's step on the hidden matrices of 4 x 4 x 128 (16) and 6 x 6 x 384 (24):
        #   load average 2.3:      two BLAS threads 39-41 ms and 0.87-0.97 s; two threads of one 26-27 ms and 1.5-1.75 s
        #   load average 3.4-3.6:  two BLAS threads 0.14-2.6 s and 3.7-9.7 s; two threads of one 48-101 ms and 1.5-2.4 s
        # so this loses up to about 1.8x on large matrices on a quiet host and wins 1.4x to 50x on a busy one.
        loads = [0] * min(self.n_threads, max(1, len(params)))
        groups = [[] for _ in loads]
        costs = [_ns_cost(p.shape, n, layout) for p, n in zip(params, self.parts)]
        for i in sorted(range(len(params)), key=lambda i: -costs[i]):
            k = loads.index(min(loads))
            groups[k].append(i)
            loads[k] += costs[i]
        self._groups = [sorted(g) for g in groups if g] or [[]]

    def step(self, lr=None, grad_scale=1.0):
        """One update of every parameter with learning rate ``lr`` (default ``self.lr``), on the
        gradients ``grad_scale * grads`` (the trainer's clipping, as in :meth:`numgpt.optim.AdamW.step`)."""
        lr = self.lr if lr is None else lr
        check_lr(lr)
        check_grad_scale(grad_scale)
        self.t += 1
        run_parallel(self._step_matrices, [(group, lr, grad_scale) for group in self._groups])

    def _step_matrices(self, indices, lr, grad_scale=1.0):
        for i in indices:
            p, g, m = self.params[i], self.grads[i], self.buffers[i]
            if grad_scale != 1.0:
                g = g * grad_scale                 # a copy: the caller's gradient stays as it is
            update = muon_update(g, m, self.momentum, self.nesterov, self.steps, self.layout, self.parts[i])
            if self.weight_decay:
                p *= 1.0 - lr * self.weight_decay
            update *= lr
            p -= update

    def state_dict(self):
        return {"buffers": [m.copy() for m in self.buffers], "t": int(self.t)}

    def load_state_dict(self, state):
        check_state_keys(state, ("buffers", "t"))
        buffers = state["buffers"]
        if len(buffers) != len(self.buffers) or any(a.shape != m.shape for a, m in zip(buffers, self.buffers)):
            raise ValueError("optimizer state does not match the parameters' shapes: "
                             f"{[a.shape for a in buffers]} vs {[m.shape for m in self.buffers]}")
        for m, a in zip(self.buffers, buffers):
            m[...] = a
        self.t = int(state["t"])
