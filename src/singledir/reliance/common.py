"""Set-up shared by the public measurements: argument checks, unit counts, clamp values.

Offers:

- :func:`prepare` -- batches + validated layers + unit axis and units per layer + number of classes, with
  the checks every measurement needs (unit axis given or unambiguous, labels in range, finite
  activations, logits that the labels can score).
- :func:`layer_plans` -- :class:`~.plan.LayerPlan` per layer for ``clamp`` "zero" / "mean".
- :func:`check_method`, :func:`check_budget`, :data:`CLAMPS`, :data:`BASES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from singledir.errors import SingledirError
from singledir.reliance.evaluators import METHODS
from singledir.reliance.axes import check_unit_dim, resolve_unit_dims
from singledir.reliance.units import layer_outputs, unit_stats
from singledir.reliance.inputs import (
    ModelInput,
    as_batches,
    check_choice,
    check_labels,
    num_scored,
    take,
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
    "probe_layers",
]


@dataclass
class Prepared:
    """Checked inputs of a measurement: ``n_examples`` counts the scored labels (examples, or tokens for
    per-token labels), ``n_sequences`` the examples; ``unit_dims`` the unit axis of each layer."""

    batches: list
    layers: list
    units: dict
    num_classes: int
    n_examples: int
    unit_dims: dict = field(default_factory=dict)
    output_fn: object = None
    n_sequences: int = 0
    token_level: bool = False

    def meta(self) -> dict:
        """The settings every result records about its inputs."""
        return {"unit_dims": dict(self.unit_dims), "token_level": self.token_level,
                "n_sequences": self.n_sequences}


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
def probe_layers(model, batches, names, unit_dim, output_fn=None, raw: bool = False):
    """One forward pass on two examples: ``(LayerOutputs with outputs as recorded, {layer: unit axis})``.

    The unit axes come from ``unit_dim`` or are inferred (:func:`~.axes.resolve_unit_dims`).
    """
    unit_dim = check_unit_dim(unit_dim)
    x0, y0 = batches[0]
    small = [(take(x0, 0, 2), y0[:2])]
    probe = layer_outputs(model, small, names, output_fn=output_fn, raw=raw)
    try:
        first = next(probe)
    finally:
        probe.close()
    feed = ModelInput(model, output_fn)

    def run():
        feed.call(model, feed(small[0][0]))

    return first, resolve_unit_dims(model, names, first.outputs, unit_dim, run)


@torch.no_grad()
def prepare(model, data, layers, batch_size=None, *, unit_dim=None, output_fn=None) -> Prepared:
    """Batches, layers, unit axes and unit counts; raises a one-line :class:`SingledirError` on bad input.

    Must run inside :func:`~.hooks.model_guard` (eval mode). Checks: known layers whose output is a
    tensor with a unit axis (``unit_dim``, or inferred where unambiguous: :mod:`.axes`), logits the labels
    can score, labels within the model's classes.
    """
    batches = as_batches(data, batch_size)
    names = validate_layers(model, layers)
    first, dims = probe_layers(model, batches, names, unit_dim, output_fn=output_fn)
    y0 = batches[0][1]
    logits = check_logits(first.logits, first.y)
    units = {n: int(h.shape[dims[n]]) for n, h in first.outputs.items()}
    num_classes = int(logits.shape[-1])
    for i, (_x, y) in enumerate(batches):
        check_labels(y, num_classes, "data" if len(batches) == 1 else f"batch {i} of data")
    scored = num_scored(batches)
    if scored == 0:
        raise SingledirError("every label is -100 (not scored); pass data with at least one scored label")
    return Prepared(batches, names, units, num_classes, scored, dims, output_fn,
                    int(sum(b[1].shape[0] for b in batches)), bool(y0.ndim == 2))


def unit_means(model, prepared: Prepared, stats_data, batch_size=None) -> dict:
    """Per-unit means (float64) over ``stats_data`` (or the data) for the mean clamp (positions pooled,
    padding left out)."""
    src = prepared.batches if stats_data is None else as_batches(stats_data, batch_size)
    return {n: s.mean for n, s in unit_stats(model, src, prepared.layers, unit_dims=prepared.unit_dims).items()}


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
        plans.append(LayerPlan(n, c, values, unit_dim=prepared.unit_dims.get(n, 1)))
    return plans
