"""Layer outputs over a dataset, and the per-unit numbers read from them (unit counts, means, stds, activities).

Offers:

- :func:`layer_outputs` -- THE loop over a dataset's layer outputs: each batch moved to the model's device
  (and floating dtype), one forward pass with :func:`~.hooks.record`, every output checked (called at all,
  a unit dimension, finite); yields :class:`LayerOutputs` ``(x, y, outputs, logits)``. Used by the unit
  statistics below, by :func:`~.common.prepare` and by :func:`~.selectivity.class_selectivity`.
- :func:`space_mean` -- (N, C, *S) -> (N, C): conv maps averaged over space.
- :func:`layer_units` -- number of units of layers (one forward pass on one example).
- :func:`unit_stats` / :class:`UnitStats` -- per-unit mean and std (conv maps: over N and all positions).
- :func:`unit_activations` -- per-example unit activations (N, C), conv maps averaged over space.

Every function reads ``data`` exactly once (a shuffled DataLoader gives a new order on every pass).

Example::

    from singledir.reliance.units import layer_outputs
    for out in layer_outputs(model, batches, ["hidden.0"]):
        out.outputs["hidden.0"]          # (n, 128), on the model's device
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from singledir.errors import SingledirError
from singledir.reliance.hooks import model_guard, record
from singledir.reliance.inputs import ModelInput, as_batches, check_finite, check_unit_output, validate_layers

__all__ = ["LayerOutputs", "UnitStats", "layer_outputs", "layer_units", "space_mean", "unit_activations", "unit_stats"]


@dataclass
class LayerOutputs:
    """One batch of :func:`layer_outputs`: inputs and labels on the model's device, the checked outputs
    ``{layer: tensor}`` and the model's output."""

    x: torch.Tensor
    y: torch.Tensor
    outputs: dict
    logits: object


def layer_outputs(model: nn.Module, batches, layers, *, progress: bool = False, desc: str = "layer outputs"
                  ) -> Iterator[LayerOutputs]:
    """Run ``model`` (eval mode, no_grad) on each ``(x, y)`` batch of ``batches`` and yield its layers' outputs.

    Raises :class:`~singledir.errors.SingledirError` when a layer is never called, has no unit dimension or
    outputs NaN / inf. The model is handed back as it came when the loop ends or is left early.
    """
    from tqdm.auto import tqdm

    names = validate_layers(model, layers)
    feed = ModelInput(model)
    with model_guard(model), torch.no_grad(), record(model, names) as rec:
        for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
            rec.clear()
            x, y = feed(x), y.to(feed.device)
            logits = model(x)
            outs = {}
            for n in names:
                if n not in rec:
                    raise SingledirError(
                        f"layer {n!r} is never called in the model's forward pass; pick another layer"
                    )
                h = check_unit_output(rec[n], n)
                check_finite(h, f"the output of layer {n!r}")
                outs[n] = h
            yield LayerOutputs(x, y, outs, logits)


def space_mean(h: torch.Tensor) -> torch.Tensor:
    """(N, C, *S) -> (N, C): average over all dims >= 2 (conv maps); (N, C) is returned as is."""
    return h if h.ndim == 2 else h.flatten(2).mean(2)


def layer_units(model: nn.Module, data, layers) -> dict[str, int]:
    """``{layer: number of units}`` from one forward pass on the first example of ``data`` (eval mode)."""
    x, y = as_batches(data)[0]
    gen = layer_outputs(model, [(x[:1], y[:1])], layers)
    try:
        outs = next(gen).outputs
    finally:
        gen.close()
    return {n: int(h.shape[1]) for n, h in outs.items()}


@dataclass
class UnitStats:
    """Per-unit statistics of one layer (float64 tensors of length C) over ``count`` values per unit."""

    mean: torch.Tensor
    std: torch.Tensor
    count: int


def unit_stats(model: nn.Module, data, layers, *, progress: bool = False) -> dict[str, UnitStats]:
    """Mean and (population, ddof=0) std of every unit over ``data``, in float64.

    Conv maps (N, C, H, W): statistics over N and all spatial positions (the unit's mean is the constant
    a mean-clamped map is set to; sigma_j for noise is over N*H*W, as in the paper). Eval mode.
    """
    names = validate_layers(model, layers)
    acc: dict[str, list] = {}
    for out in layer_outputs(model, as_batches(data), names, progress=progress, desc="unit stats"):
        for n, h in out.outputs.items():
            v = h.detach().double().transpose(0, 1).reshape(h.shape[1], -1)  # (C, N*S)
            cnt = v.shape[1]
            mean = v.mean(1)
            m2 = ((v - mean[:, None]) ** 2).sum(1)
            if n not in acc:
                acc[n] = [cnt, mean, m2]
            else:  # Chan et al. parallel merge of (count, mean, M2)
                c0, mu0, m20 = acc[n]
                tot = c0 + cnt
                delta = mean - mu0
                acc[n] = [tot, mu0 + delta * (cnt / tot), m20 + m2 + delta**2 * (c0 * cnt / tot)]
    return {
        n: UnitStats(mean=acc[n][1].cpu(), std=(acc[n][2] / acc[n][0]).sqrt().cpu(), count=int(acc[n][0]))
        for n in names
    }


def unit_activations(model: nn.Module, data, layers, *, progress: bool = False) -> dict[str, torch.Tensor]:
    """``{layer: (N, C) float32}`` per-example unit activations (on the CPU); conv maps averaged over space."""
    names = validate_layers(model, layers)
    parts: dict[str, list] = {n: [] for n in names}
    for out in layer_outputs(model, as_batches(data), names, progress=progress, desc="activations"):
        for n, h in out.outputs.items():
            parts[n].append(space_mean(h.detach()).float().cpu())
    return {n: torch.cat(p) for n, p in parts.items()}
