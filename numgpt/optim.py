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
"""

import math

import numpy as np


class AdamW:
    """AdamW over flat buffers.

    ``params`` and ``grads`` are 1-D arrays of one dtype (a model's
    ``flat_params`` / ``flat_grads``), updated in place. ``decay_mask`` is a
    boolean array of the same length, True where weight decay applies; build it
    with :func:`decay_mask_from_layout`.
    """

    def __init__(self, params, grads, decay_mask=None, lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                 weight_decay=0.1):
        if params.ndim != 1 or grads.shape != params.shape or grads.dtype != params.dtype:
            raise ValueError(f"params and grads must be 1-D buffers of one shape and dtype, got "
                             f"{params.shape} {params.dtype} and {grads.shape} {grads.dtype}")
        b1, b2 = betas
        for name, value, lo, hi in (("beta1", b1, 0.0, 1.0), ("beta2", b2, 0.0, 1.0)):
            if not lo <= value < hi:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        self.params, self.grads = params, grads
        self.lr, self.beta1, self.beta2, self.eps, self.weight_decay = lr, b1, b2, eps, weight_decay
        if decay_mask is None:
            decay_mask = np.ones(params.shape, dtype=bool)
        if decay_mask.shape != params.shape:
            raise ValueError(f"decay_mask must have shape {params.shape}, got {decay_mask.shape}")
        self.decay_mask = decay_mask.astype(bool)
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self.t = 0
        self._tmp = np.empty_like(params)   # reused every step: no allocation in the update

    def step(self, lr=None):
        """One update with learning rate ``lr`` (default ``self.lr``)."""
        lr = self.lr if lr is None else lr
        self.t += 1
        p, g, m, v, tmp = self.params, self.grads, self.m, self.v, self._tmp
        if self.weight_decay:
            # p *= 1 - lr*wd where the mask is True, and *= 1 elsewhere, in one multiply.
            np.multiply(self.decay_mask, -lr * self.weight_decay, out=tmp)
            tmp += 1.0
            p *= tmp
        m *= self.beta1
        np.multiply(g, 1.0 - self.beta1, out=tmp)
        m += tmp
        v *= self.beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.beta2
        v += tmp
        bias1 = 1.0 - self.beta1 ** self.t
        bias2 = 1.0 - self.beta2 ** self.t
        # denominator sqrt(v / bias2) + eps, then p -= (lr / bias1) * m / denominator
        np.multiply(v, 1.0 / bias2, out=tmp)
        np.sqrt(tmp, out=tmp)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / bias1
        p -= tmp

    def state_dict(self):
        return {"m": self.m.copy(), "v": self.v.copy(), "t": int(self.t)}

    def load_state_dict(self, state):
        for key in ("m", "v"):
            if state[key].shape != self.params.shape:
                raise ValueError(f"optimizer state {key} has shape {state[key].shape}, "
                                 f"expected {self.params.shape}")
        self.m[...] = state["m"]
        self.v[...] = state["v"]
        self.t = int(state["t"])


def decay_mask_from_layout(layout):
    """Boolean flat mask: True for tensors of two or more dimensions (weight decay applies)."""
    parts = [np.full(math.prod(shape), len(shape) >= 2, dtype=bool) for _, shape in layout]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def grad_norm(grads):
    """Global L2 norm of a flat gradient buffer, accumulated in float64."""
    g = grads.astype(np.float64, copy=False) if grads.dtype != np.float64 else grads
    return math.sqrt(float(np.dot(g, g)))


def clip_grad_norm(grads, max_norm):
    """Scale the flat ``grads`` in place so their global norm is at most ``max_norm``.

    Returns the norm before clipping (as ``torch.nn.utils.clip_grad_norm_`` does).
    ``max_norm <= 0`` disables clipping.
    """
    norm = grad_norm(grads)
    if max_norm > 0 and norm > max_norm and math.isfinite(norm):
        grads *= max_norm / (norm + 1e-6)
    return norm


def cosine_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """Learning rate at iteration ``it`` (0-based): linear warmup, cosine decay, then ``min_lr``.

    Warmup is ``learning_rate * (it + 1) / (warmup_iters + 1)``, so the first
    step never has a zero learning rate. ``lr_decay_iters`` is where the cosine
    reaches ``min_lr`` (nanoGPT's schedule).
    """
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (learning_rate - min_lr)
