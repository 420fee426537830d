"""A float64 PyTorch reference of numgpt's GPT with every architecture choice of :class:`GPTConfig`.

Written from torch primitives (explicit matmuls, ``torch.nn.functional``), not
from numgpt's layers, so that the parity tests compare two independent
implementations: the logits, the loss and, through ``torch.autograd``, the
gradient of every parameter. It loads numgpt's parameters by name; numgpt
stores weights (in, out), so a linear layer is ``x @ W + b``.

The conventions it fixes on its own (numgpt must agree with them):

* layer norm with eps 1e-5; RMSNorm ``x * rsqrt(mean(x^2) + 1e-6) * w``;
* RoPE in the "rotate half" layout, base 10000, the angles formed in float64;
* QK-norm: RMSNorm without weight of each head's q and k, before RoPE;
* MLPs: GPT-2's tanh GELU, squared ReLU, and SwiGLU with ``c_fc``'s output
  split as ``[gate | up]`` and ``silu(gate) * up``;
* the head: ``wte`` when tied, else ``lm_head.weight`` (V, C); logits ``x @ W.T``;
* the loss: mean cross-entropy over the targets that are not ``ignore_index``.

Not a test module (no ``test_`` prefix): tests import it after
``pytest.importorskip("torch")``.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

LAYERNORM_EPS = 1e-5
RMSNORM_EPS = 1e-6
ROPE_BASE = 10000.0


def rms_norm(x, weight=None):
    y = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + RMSNORM_EPS)
    return y if weight is None else y * weight


def rotate_half(x):
    """``(x1, x2) -> (-x2, x1)`` over the halves of the last axis."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x, positions):
    """Rotate ``x`` (B, H, T, D) by the angles ``t * base**(-2i/D)`` of ``positions`` (T,)."""
    D = x.shape[-1]
    omega = ROPE_BASE ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)       # (D/2,)
    angle = positions.to(torch.float64)[:, None] * omega[None, :]                 # (T, D/2)
    angle = torch.cat((angle, angle), dim=-1)                                     # (T, D), both halves
    return x * angle.cos().to(x.dtype) + rotate_half(x) * angle.sin().to(x.dtype)


class Reference:
    """The forward of a numgpt model's architecture on torch tensors ``params`` (name -> tensor)."""

    def __init__(self, config, params):
        self.config = config
        self.params = params

    def linear(self, x, prefix):
        y = x @ self.params[prefix + ".weight"]
        bias = self.params.get(prefix + ".bias")
        return y if bias is None else y + bias

    def norm(self, x, prefix):
        weight = self.params[prefix + ".weight"]
        if self.config.norm == "rmsnorm":
            return rms_norm(x, weight)
        return F.layer_norm(x, (x.shape[-1],), weight, self.params.get(prefix + ".bias"), eps=LAYERNORM_EPS)

    def attention(self, qkv):
        c = self.config
        B, T, C3 = qkv.shape
        C = C3 // 3
        H, D = c.n_head, C // c.n_head
        q, k, v = (part.reshape(B, T, H, D).transpose(1, 2) for part in qkv.split(C, dim=-1))   # (B, H, T, D)
        if c.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        if c.position == "rope":
            positions = torch.arange(T)
            q, k = rope(q, positions), rope(k, positions)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)                                          # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
        probs = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        return (probs @ v).transpose(1, 2).reshape(B, T, C)

    def mlp(self, x, prefix):
        a = self.linear(x, prefix + "c_fc")
        if self.config.mlp == "gelu":
            a = F.gelu(a, approximate="tanh")
        elif self.config.mlp == "relu2":
            a = F.relu(a).square()
        else:
            gate, up = a.chunk(2, dim=-1)
            a = F.silu(gate) * up
        return self.linear(a, prefix + "c_proj")

    def logits(self, idx):
        c, P = self.config, self.params
        idx = torch.as_tensor(idx)
        x = P["wte"][idx]                                                          # (B, T, C)
        if c.position == "learned":
            x = x + P["wpe"][:idx.shape[1]]
        for i in range(c.n_layer):
            h = f"h.{i}."
            x = x + self.linear(self.attention(self.linear(self.norm(x, h + "ln_1"), h + "attn.c_attn")),
                                h + "attn.c_proj")
            x = x + self.mlp(self.norm(x, h + "ln_2"), h + "mlp.")
        x = self.norm(x, "ln_f")
        head = P["wte"] if c.tie_head else P["lm_head.weight"]
        return x @ head.T                                                          # (B, T, V)


def logits_loss_and_grads(model, idx, targets, ignore_index=-1):
    """The reference's ``(logits, loss, grads)`` for numgpt ``model``'s parameters, in float64 NumPy."""
    params = {name: torch.tensor(np.asarray(p, dtype=np.float64), requires_grad=True)
              for name, p in model.params.items()}
    logits = Reference(model.config, params).logits(idx)
    V = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, V), torch.as_tensor(targets).reshape(-1), ignore_index=ignore_index)
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in params.items()}
    return logits.detach().numpy(), float(loss.detach()), grads
