"""Helpers for testing code that uses the reliance engine: toy models, small data, "model unchanged" checks.

Offers:

- :func:`snapshot` / :func:`assert_unchanged` -- record a model's training flags, weights and hooks, and
  assert later that all three are exactly as before.
- :class:`UserNet` -- a user-style model: non-Sequential forward with two branches from a hidden layer,
  functional ops (``torch.relu``, ``+``, ``torch.cat``) and a skip connection.
- :class:`ControlFlowNet` -- a model whose forward has data-dependent Python control flow (torch.fx cannot
  trace it: the engine's fallback path handles it).
- :func:`digits` -- sklearn's 8x8 digits as ``(N, 1, 8, 8)`` float tensors and int64 labels.
- :func:`train_quick` -- a few epochs of Adam, seeded.
- :func:`randomize_batchnorm` -- give every batch norm layer non-trivial running statistics and affine
  parameters (so eval-mode batch norm is not the identity in tests).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ControlFlowNet",
    "UserNet",
    "assert_unchanged",
    "digits",
    "hook_count",
    "randomize_batchnorm",
    "snapshot",
    "train_quick",
]


def hook_count(model: nn.Module) -> int:
    """Total forward and pre-forward hooks on all submodules."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def snapshot(model: nn.Module) -> dict:
    """Training flag of every submodule, a copy of the state dict, and the hook count."""
    return {
        "modes": {name: m.training for name, m in model.named_modules()},
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": hook_count(model),
    }


def assert_unchanged(model: nn.Module, snap: dict) -> None:
    """Assert the model has the same modes, exactly the same weights/buffers and no extra hooks."""
    modes = {name: m.training for name, m in model.named_modules()}
    assert modes == snap["modes"], "training flags changed"
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    for k, v in snap["state"].items():
        assert torch.equal(state[k], v), f"{k} changed"
    assert hook_count(model) == snap["hooks"], "hooks left behind"
    if snap["hooks"] == 0:
        for m in model.modules():
            assert not m._forward_hooks and not m._forward_pre_hooks, "hooks left behind"


class UserNet(nn.Module):
    """hidden -> two branches (ReLU, Tanh) added, concatenated with the hidden layer (skip), linear head.

    Unit layers: ``hid`` (64 -> ``width``), ``br1``, ``br2`` (``width`` -> ``width // 2``), ``mix``
    (a ReLU on the concatenation, called as a module).
    """

    def __init__(self, in_features: int = 64, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.hid = nn.Sequential(nn.Linear(in_features, width), nn.ReLU())
        self.br1 = nn.Sequential(nn.Linear(width, width // 2), nn.ReLU())
        self.br2 = nn.Sequential(nn.Linear(width, width // 2), nn.Tanh())
        self.mix = nn.ReLU()
        self.head = nn.Linear(width + width // 2, num_classes)
        self.unit_layers = ["hid", "br1", "br2", "mix"]

    def forward(self, x):
        h = self.hid(x.flatten(1))
        s = self.br1(h) + 0.5 * self.br2(h)
        c = torch.cat([s, torch.relu(h) * 0.9], dim=1)
        return self.head(self.mix(c))


class ControlFlowNet(nn.Module):
    """An MLP whose forward branches on the data (``if x.mean() > 0``): not traceable by torch.fx."""

    def __init__(self, in_features: int = 64, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.l1 = nn.Sequential(nn.Linear(in_features, width), nn.ReLU())
        self.l2 = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.l1(x.flatten(1))
        if h.mean() > 0:  # data-dependent Python control flow
            h = self.l2(h)
        return self.out(h)


def digits(n: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits (1797 8x8 images), standardized, shuffled with ``seed``, first ``n``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - 0.3) / 0.4
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    return (x, y) if n is None else (x[:n], y[:n])


def train_quick(model: nn.Module, x, y, epochs: int = 20, lr: float = 3e-3, batch: int = 64, seed: int = 0):
    """Train ``model`` with Adam on (x, y) for a few epochs (seeded); returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running means/vars and affine parameters for every batch norm layer."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            if m.affine:
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)
    return model
