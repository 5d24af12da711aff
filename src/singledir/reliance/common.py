"""Set-up shared by the public measurements: argument checks, unit counts, clamp values.

Offers:

- :func:`prepare` -- batches + validated layers + units per layer + number of classes, with the checks
  every measurement needs (unit dimension, labels in range, finite activations, logits output).
- :func:`layer_plans` -- :class:`~.plan.LayerPlan` per layer for ``clamp`` "zero" / "mean".
- :func:`check_method`, :func:`check_budget`, :data:`CLAMPS`, :data:`BASES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from singledir.errors import SingledirError
from singledir.reliance.evaluators import METHODS
from singledir.reliance.units import layer_outputs, unit_stats
from singledir.reliance.inputs import (
    as_batches,
    check_choice,
    check_labels,
    validate_layers,
)
from singledir.reliance.plan import LayerPlan, check_logits

CLAMPS = ("zero", "mean")
BASES = ("units", "random")

__all__ = [
    "BASES",
    "CLAMPS",
    "Prepared",
    "check_budget",
    "check_method",
    "layer_plans",
    "prepare",
]


@dataclass
class Prepared:
    """Checked inputs of a measurement."""

    batches: list
    layers: list
    units: dict
    num_classes: int
    n_examples: int


def check_method(method) -> str:
    return check_choice(method, METHODS, "method")


def check_budget(memory_budget):
    """``memory_budget`` in bytes (None = the engine's default), else raise."""
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)) or not memory_budget > 0:
        raise SingledirError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")
    return int(memory_budget)


@torch.no_grad()
def prepare(model, data, layers, batch_size=None) -> Prepared:
    """Batches, layers and unit counts; raises a one-line :class:`SingledirError` on bad input.

    Must run inside :func:`~.hooks.model_guard` (eval mode). Checks: known layers whose output is a
    tensor with a unit dimension, logits output, labels within the model's classes.
    """
    batches = as_batches(data, batch_size)
    names = validate_layers(model, layers)
    x0, y0 = batches[0]
    probe = layer_outputs(model, [(x0[:2], y0[:2])], names)
    try:
        first = next(probe)
    finally:
        probe.close()
    logits = check_logits(first.logits)
    units = {n: int(h.shape[1]) for n, h in first.outputs.items()}
    num_classes = int(logits.shape[1])
    for i, (_x, y) in enumerate(batches):
        check_labels(y, num_classes, "data" if len(batches) == 1 else f"batch {i} of data")
    return Prepared(batches, names, units, num_classes, int(sum(b[1].shape[0] for b in batches)))


def unit_means(model, prepared: Prepared, stats_data, batch_size=None) -> dict:
    """Per-unit means (float64) over ``stats_data`` (or the data) for the mean clamp."""
    src = prepared.batches if stats_data is None else as_batches(stats_data, batch_size)
    return {n: s.mean for n, s in unit_stats(model, src, prepared.layers).items()}


def layer_plans(model, prepared: Prepared, clamp: str, stats_data=None, batch_size=None) -> list[LayerPlan]:
    """One :class:`LayerPlan` per layer: zero clamp, or each unit's mean over stats_data / data."""
    clamp = check_choice(clamp, CLAMPS, "clamp")
    means = unit_means(model, prepared, stats_data, batch_size) if clamp == "mean" else None
    plans = []
    for n in prepared.layers:
        c = prepared.units[n]
        values = means[n].float() if means is not None else torch.zeros(c)
        if values.shape[0] != c:
            raise SingledirError(f"stats_data gives {values.shape[0]} units for layer {n!r}, data gives {c}")
        plans.append(LayerPlan(n, c, values))
    return plans
