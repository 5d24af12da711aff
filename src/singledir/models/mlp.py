"""Multilayer perceptron: flatten -> N -> ... -> N -> classes, ReLU (the paper's MNIST MLP, 784-N-N-10).

Structure (so that unit layers are stable dotted names)::

    hidden = ModuleList([Sequential(Linear, [BatchNorm1d], ReLU, [Dropout]), ...])   # depth blocks
    out    = Linear(N, num_classes)

Unit layers are ``hidden.0``, ``hidden.1``, ...: each block's output is the post-ReLU activation
(in eval mode dropout is the identity; in train mode the output is the dropped-out activation), with the
unit on dim 1. Weights use PyTorch's default Linear init.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from singledir.models._common import (
    check_batchnorm,
    check_depth,
    check_dropout,
    check_input_shape,
    check_num_classes,
    check_width,
)


class MLP(nn.Module):
    """``depth`` hidden layers of ``width`` ReLU units on the flattened input, then a linear readout."""

    def __init__(
        self,
        input_shape,
        num_classes: int,
        *,
        width: int = 128,
        depth: int = 2,
        dropout: float = 0.0,
        batchnorm: bool | None = None,
    ) -> None:
        super().__init__()
        input_shape = check_input_shape(input_shape)
        num_classes = check_num_classes(num_classes)
        width = check_width(width)
        depth = check_depth(depth)
        dropout = check_dropout(dropout)
        batchnorm = check_batchnorm(batchnorm, default=False)

        in_features = math.prod(input_shape)
        blocks = []
        for i in range(depth):
            layers: list[nn.Module] = [nn.Linear(in_features if i == 0 else width, width)]
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            blocks.append(nn.Sequential(*layers))
        self.hidden = nn.ModuleList(blocks)
        self.out = nn.Linear(width, num_classes)

        self.unit_layers: list[str] = [f"hidden.{i}" for i in range(depth)]
        self.config: dict = {
            "name": "mlp",
            "input_shape": list(input_shape),
            "num_classes": num_classes,
            "width": width,
            "depth": depth,
            "dropout": dropout,
            "batchnorm": batchnorm,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for block in self.hidden:
            x = block(x)
        return self.out(x)
