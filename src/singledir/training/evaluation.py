"""Loss and accuracy of a model on a dataset, in eval mode under inference_mode: :func:`evaluate`.

The reference loop (:mod:`.loop`) evaluates the training set every epoch (the stopping rule reads it) and
the test set with :func:`_eval_stats`; :func:`_default_eval_batch` is both engines' evaluation batch size
when the config names none (the stacked engine's batched evaluation is :func:`.stack.eval_group`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from singledir.devices import model_device
from singledir.errors import SingledirError

__all__ = ["evaluate"]


def _default_eval_batch(model_name: str) -> int:
    return 2048 if model_name == "mlp" else 500


def _eval_stats(model: nn.Module, x: torch.Tensor, ys: list[torch.Tensor], batch_size: int):
    """[(mean cross-entropy, accuracy)] of ``model`` on ``x`` for each label vector in ``ys`` (eval mode)."""
    n = len(x)
    if n == 0:
        return [(float("nan"), float("nan")) for _ in ys]
    device = model_device(model)
    was_training = model.training
    model.eval()
    loss = [torch.zeros((), dtype=torch.float64, device=device) for _ in ys]
    hits = [torch.zeros((), dtype=torch.int64, device=device) for _ in ys]
    try:
        with torch.inference_mode():
            for i in range(0, n, batch_size):
                logits = model(x[i : i + batch_size].to(device, non_blocking=True))
                pred = logits.argmax(1)
                for k, y in enumerate(ys):
                    yb = y[i : i + batch_size].to(device, non_blocking=True)
                    loss[k] += F.cross_entropy(logits, yb, reduction="sum").double()
                    hits[k] += (pred == yb).sum()
    finally:
        model.train(was_training)
    return [(lo.item() / n, h.item() / n) for lo, h in zip(loss, hits)]


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of ``model`` on ``(x, y)``, in eval mode, under inference_mode.

    Batches are moved to the model's device; the model's train/eval mode is restored afterwards.
    """
    if len(x) != len(y):
        raise SingledirError(f"x and y differ in length ({len(x)} vs {len(y)}); pass matching tensors")
    if int(batch_size) < 1:
        raise SingledirError(f"batch_size must be >= 1, got {batch_size}")
    return _eval_stats(model, x, [y], int(batch_size))[0]
