"""The PyTorch reference model for the speed benchmarks (imported only by their --vs-torch workers).

The same GPT-2 architecture as numgpt: pre-LN blocks, fused c_attn, causal softmax attention, tanh
GELU, 4x MLP, final layer norm, lm head tied to wte. ``attention="fused"`` computes attention as
nanoGPT's model.py does on a CPU, with ``F.scaled_dot_product_attention(..., is_causal=True)``
(PyTorch's fused kernel: what a nanoGPT user runs); ``"explicit"`` with two matmuls and a masked
softmax, as numgpt does.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def make_gpt(n_layer, n_head, n_embd, block_size, vocab_size, attention="explicit"):
    if attention not in ("explicit", "fused"):
        raise ValueError(f"attention must be 'explicit' or 'fused', got {attention!r}")
    H, C, T, V = n_head, n_embd, block_size, vocab_size

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)
            self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)))

        def forward(self, x):
            b, t, c = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (z.view(b, t, H, c // H).transpose(1, 2) for z in (q, k, v))
            if attention == "fused":
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(c // H))
                att = att.masked_fill(~self.mask[:t, :t], float("-inf")).softmax(dim=-1)
                y = att @ v
            y = y.transpose(1, 2).contiguous().view(b, t, c)
            x = x + self.c_proj(y)
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(n_layer))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, targets=None):
            """The mean cross-entropy with ``targets``; without them, the last position's logits."""
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            if targets is None:
                return self.ln_f(x[:, -1]) @ self.wte.weight.T
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    return GPT()
