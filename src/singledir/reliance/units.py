"""Layer outputs over a dataset, and the per-unit numbers read from them (unit counts, means, stds, activities).

Offers:

- :func:`layer_outputs` -- THE loop over a dataset's layer outputs: each batch moved to the model's device
  (and floating dtype), one forward pass with :func:`~.hooks.record`, every output checked (called at all,
  a unit dimension, a batch axis 0, finite) and given in the canonical layout (N, units, *positions) for
  the layers' ``unit_dims`` (:mod:`.axes`); yields :class:`LayerOutputs` ``(x, y, outputs, logits,
  masks)``. Used by the unit statistics below, by :func:`~.common.prepare` and by
  :func:`~.selectivity.class_selectivity`.
- :func:`space_mean` -- (N, C, *P) -> (N, C): positions averaged (conv maps over space, a sequence over
  its non-padding tokens).
- :func:`layer_units` -- number of units of layers (one forward pass on one example).
- :func:`unit_stats` / :class:`UnitStats` -- per-unit mean and std (over N and all non-padding positions).
- :func:`unit_activations` -- per-example unit activations (N, C), positions averaged.

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
from singledir.reliance.axes import position_mask, to_canonical
from singledir.reliance.hooks import model_guard, record
from singledir.reliance.inputs import (
    ModelInput,
    as_batches,
    batch_len,
    check_finite,
    check_unit_output,
    validate_layers,
)

__all__ = ["LayerOutputs", "UnitStats", "layer_outputs", "layer_units", "space_mean", "unit_activations", "unit_stats",
           "unit_values"]


@dataclass
class LayerOutputs:
    """One batch of :func:`layer_outputs`: inputs and labels on the model's device, the checked outputs
    ``{layer: tensor}`` in the canonical layout (N, units, *positions), the model's logits (its raw output
    when ``raw``), and ``masks`` ``{layer: (N, *positions) bool or None}`` of non-padding positions."""

    x: object
    y: torch.Tensor
    outputs: dict
    logits: object
    masks: dict


def layer_outputs(model: nn.Module, batches, layers, *, unit_dims=None, output_fn=None, raw: bool = False,
                  progress: bool = False, desc: str = "layer outputs") -> Iterator[LayerOutputs]:
    """Run ``model`` (eval mode, no_grad) on each ``(x, y)`` batch of ``batches`` and yield its layers' outputs.

    ``unit_dims``: ``{layer: unit axis}`` (default 1 for every layer); outputs come with the unit axis
    moved to 1. ``output_fn`` picks the logits (:func:`~.inputs.logits_of`); with ``raw`` the model's raw
    output is yielded instead. Raises :class:`~singledir.errors.SingledirError` when a layer is never
    called, has no unit dimension, no batch axis 0, or outputs NaN / inf. The model is handed back as it
    came when the loop ends or is left early.
    """
    from tqdm.auto import tqdm

    names = validate_layers(model, layers)
    dims = unit_dims or {}
    feed = ModelInput(model, output_fn)
    with model_guard(model), torch.no_grad(), record(model, names) as rec:
        for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
            rec.clear()
            x, y = feed(x), y.to(feed.device)
            out = feed.call(model, x)
            logits = out if raw else feed.logits_from(out)
            outs, masks = {}, {}
            for n in names:
                if n not in rec:
                    raise SingledirError(
                        f"layer {n!r} is never called in the model's forward pass; pick another layer"
                    )
                h = check_unit_output(rec[n], n)
                if h.shape[0] != batch_len(x):
                    raise SingledirError(
                        f"layer {n!r} outputs shape {tuple(h.shape)} for a batch of {batch_len(x)}: axis 0 must "
                        f"be the batch (e.g. build nn.TransformerEncoderLayer with batch_first=True)"
                    )
                check_finite(h, f"the output of layer {n!r}")
                h = to_canonical(h, dims.get(n, 1))
                outs[n] = h
                masks[n] = position_mask(x, h)
            yield LayerOutputs(x, y, outs, logits, masks)


def space_mean(h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, *P) -> (N, C): average over all dims >= 2 (conv maps, token positions); (N, C) is returned as
    is. With ``mask`` (N, *P) only the True positions are averaged (an example with none gives 0)."""
    if h.ndim == 2:
        return h
    if mask is None:
        return h.flatten(2).mean(2)
    m = mask.flatten(1).to(h.dtype)[:, None, :]  # (N, 1, P)
    return (h.flatten(2) * m).sum(2) / m.sum(2).clamp_min(1)


def unit_values(h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(C, M) values of every unit over the examples and their (non-padding) positions of canonical ``h``."""
    v = h.transpose(0, 1).reshape(h.shape[1], -1)  # (C, N*P)
    if mask is not None and h.ndim > 2:
        v = v[:, mask.reshape(-1)]
    return v


def layer_units(model: nn.Module, data, layers, *, unit_dim=None) -> dict[str, int]:
    """``{layer: number of units}`` from one forward pass on the first examples of ``data`` (eval mode).

    ``unit_dim`` as in the measurements (inferred where unambiguous, else a :class:`SingledirError`).
    """
    from singledir.reliance.common import probe_layers

    names = validate_layers(model, layers)
    with model_guard(model), torch.no_grad():
        first, dims = probe_layers(model, as_batches(data), names, unit_dim, raw=True)
    return {n: int(h.shape[dims[n]]) for n, h in first.outputs.items()}


@dataclass
class UnitStats:
    """Per-unit statistics of one layer (float64 tensors of length C) over ``count`` values per unit."""

    mean: torch.Tensor
    std: torch.Tensor
    count: int


def unit_stats(model: nn.Module, data, layers, *, unit_dims=None, progress: bool = False) -> dict[str, UnitStats]:
    """Mean and (population, ddof=0) std of every unit over ``data``, in float64.

    Conv maps (N, C, H, W): statistics over N and all spatial positions (the unit's mean is the constant
    a mean-clamped map is set to; sigma_j for noise is over N*H*W, as in the paper); token positions
    likewise, leaving out padding (:func:`~.axes.position_mask`). ``unit_dims`` as in
    :func:`layer_outputs`. Eval mode.
    """
    names = validate_layers(model, layers)
    acc: dict[str, list] = {}
    for out in layer_outputs(model, as_batches(data), names, unit_dims=unit_dims, raw=True, progress=progress,
                             desc="unit stats"):
        for n, h in out.outputs.items():
            v = unit_values(h.detach().double(), out.masks[n])  # (C, M)
            cnt = v.shape[1]
            if cnt == 0:
                continue
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


def unit_activations(model: nn.Module, data, layers, *, unit_dims=None, progress: bool = False
                     ) -> dict[str, torch.Tensor]:
    """``{layer: (N, C) float32}`` per-example unit activations (on the CPU); positions averaged (conv maps
    over space, sequences over their non-padding tokens)."""
    names = validate_layers(model, layers)
    parts: dict[str, list] = {n: [] for n in names}
    for out in layer_outputs(model, as_batches(data), names, unit_dims=unit_dims, raw=True, progress=progress,
                             desc="activations"):
        for n, h in out.outputs.items():
            parts[n].append(space_mean(h.detach(), out.masks[n]).float().cpu())
    return {n: torch.cat(p) for n, p in parts.items()}
