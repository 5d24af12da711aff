"""A small transformer encoder for sequences of scalars: MNIST-1D read as 40 tokens.

Each of the ``seq_len`` scalars of an example is one token: a linear embedding of the scalar plus a
learned position embedding, ``depth`` pre-norm blocks (multi-head self-attention, then an MLP
``fc -> GELU -> proj``), a final layer norm, the mean over tokens and a linear head.

The *neurons* are the MLPs' GELU outputs ``blocks.{i}.mlp.act``: shape (N, tokens, ``mlp_ratio * width``),
units on the **last** axis (the engine infers it: a GELU fed by a Linear), one value per token.
``model.unit_layers`` lists them; ``model.config`` rebuilds the architecture.

Example::

    from singledir.models.transformer import SeqTransformer
    model = SeqTransformer(seq_len=40, num_classes=10, width=32, depth=2)
    logits = model(x)        # x: (N, 40) or (N, 1, 40) floats
    sd.ablation_curves(model, (x, y), model.unit_layers)     # units: 128 neurons per block
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SeqTransformer"]


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.proj = nn.Linear(hidden, width)

    def forward(self, x):
        return self.proj(self.act(self.fc(x)))


class _Block(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = _MLP(width, hidden)

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class SeqTransformer(nn.Module):
    """Tokens = the scalars of a 1-D signal; ``depth`` pre-norm blocks; mean over tokens; linear head."""

    def __init__(self, seq_len: int = 40, num_classes: int = 10, *, width: int = 32, depth: int = 2,
                 heads: int = 2, mlp_ratio: int = 4):
        super().__init__()
        self.embed = nn.Linear(1, width)
        self.pos = nn.Parameter(torch.randn(seq_len, width) * 0.02)
        self.blocks = nn.ModuleList(_Block(width, heads, mlp_ratio * width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.unit_layers = [f"blocks.{i}.mlp.act" for i in range(depth)]
        self.config = {"seq_len": seq_len, "num_classes": num_classes, "width": width, "depth": depth,
                       "heads": heads, "mlp_ratio": mlp_ratio}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], -1, 1)  # (N, 1, L) or (N, L) -> (N, L, 1): one scalar per token
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))
