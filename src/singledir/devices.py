"""Which device a model lives on, and the ``--device`` name a user asked for, checked once.

Offers:

- :func:`model_device` -- the device of a module's first parameter (or buffer); CPU for a module with
  neither. Every path that feeds a model moves its inputs there.
- :func:`resolve_device` -- ``"cpu"`` / ``"cuda"`` / ``"cuda:N"`` to a :class:`torch.device`, with a
  one-line error when CUDA is asked for and not available (or N is not one of its devices).
- :func:`check_device_name` -- the same spelling check without looking for a GPU (for configs written
  on one machine and run on another); every ``--device`` flag and ``TrainConfig.device`` use these two.

Example::

    from singledir.devices import model_device
    logits = model(x.to(model_device(model)))
"""

from __future__ import annotations

import torch
from torch import nn

from singledir.errors import SingledirError

__all__ = ["check_device_name", "model_device", "resolve_device"]


def model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_device_name(name) -> str:
    """``name`` normalized (``"cpu"``, ``"cuda"``, ``"cuda:N"``); :class:`SingledirError` for anything else."""
    try:
        dev = torch.device(str(name).strip().lower())
    except (RuntimeError, TypeError):
        raise SingledirError(f"unknown device {name!r}: use 'cpu' or 'cuda' (optionally 'cuda:N')") from None
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise SingledirError(f"unsupported device {name!r}: use 'cpu' or 'cuda' (optionally 'cuda:N')")
    return "cpu" if dev.type == "cpu" else str(dev)


def resolve_device(name) -> torch.device:
    """The :class:`torch.device` for ``name``; raises :class:`SingledirError` if it cannot be used here."""
    dev = torch.device(check_device_name(name)) if not isinstance(name, torch.device) else name
    if dev.type not in ("cpu", "cuda"):
        raise SingledirError(f"unsupported device {name!r}: use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SingledirError(f"device {name!r} asked for but CUDA is not available here: use 'cpu'") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise SingledirError(
            f"device {name!r} asked for but this machine has {torch.cuda.device_count()} CUDA device(s): "
            f"use 'cuda:0' .. 'cuda:{torch.cuda.device_count() - 1}'"
        )
    return dev
