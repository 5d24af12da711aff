"""What to evaluate, shared by every evaluation path: per-layer interventions, curves, noise, scoring.

Offers:

- :class:`LayerPlan` -- one analysed layer: its unit count, clamp values, and (for ``basis="random"``)
  its orthonormal directions; :meth:`LayerPlan.edit` gives the activation edit for a set of ablated
  units / directions (the reference path installs it as a hook, the fast path applies it at the marker).
- :func:`projection_matrix` -- ``Q_S Q_S^T`` in float32, built the same way for every path.
- :class:`Curve` -- one cumulative-ablation curve: the pooled (layer, unit) sequence and the levels k.
- :class:`NoisePlan` -- per-layer sigmas, scales, seed.
- :func:`score` -- (number correct, summed cross-entropy in float64) of a batch of logits.
- :func:`check_logits` -- the model's output must be (N, classes) logits.
- :data:`DEFAULT_MEMORY_BUDGET` -- 1 GiB: the fast path sizes its example chunks (cache + state of the
  recomputed part) and the hook path its level groups so that the activations they hold stay below it.

All paths (reference, fast fx, batched hooks) read the same plans and call the same edit and scoring
functions, so they can only differ by floating-point rounding inside the network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from singledir.errors import SingledirError
from singledir.reliance.axes import from_canonical, to_canonical
from singledir.reliance.edits import apply_projection, clamp_factors, clamp_with
from singledir.reliance.inputs import check_finite

__all__ = ["DEFAULT_MEMORY_BUDGET", "Curve", "EditWalker", "LayerPlan", "NoisePlan", "check_logits", "projection_matrix", "score"]

#: Default bound on the activations the fast paths hold at once (bytes).
DEFAULT_MEMORY_BUDGET = 1 << 30


def projection_matrix(basis: torch.Tensor, idx: Sequence[int]) -> torch.Tensor:
    """``Q_S Q_S^T`` (float32) for the columns ``idx`` of the float64 orthonormal ``basis``."""
    q = basis[:, list(idx)]
    return (q @ q.T).float()


@dataclass
class LayerPlan:
    """One analysed layer: ``units`` (C), clamp ``values`` (C,) float32, optional random ``basis``.

    ``basis`` (C, k) float64 has orthonormal (or zero) columns (directions); then "unit" i means direction i,
    ablating directions S maps ``h -> h - P_S (h - center)`` with ``center`` None (zero clamp) or the
    units' means (mean clamp).
    """

    name: str
    units: int
    values: torch.Tensor
    basis: torch.Tensor | None = None
    center: torch.Tensor | None = None
    #: the unit axis of the layer's output (:mod:`.axes`); edits see the canonical layout (N, C, *P)
    unit_dim: int = 1

    @property
    def items(self) -> int:
        """Ablatable items: units, or the columns of ``basis`` (directions)."""
        return self.units if self.basis is None else int(self.basis.shape[1])

    def edit(self, ablated: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The activation edit that ablates units/directions ``ablated`` (None when nothing is ablated)."""
        if len(ablated) == 0:
            return None
        if self.basis is None:
            mask = torch.zeros(self.units, dtype=torch.bool)
            mask[list(ablated)] = True
            keep, fill = clamp_factors(mask, self.values)
            cache: dict = {}

            def edit(h):
                key = (h.dtype, h.device)
                if key not in cache:
                    cache[key] = (keep.to(h.device, h.dtype), None if fill is None else fill.to(h.device, h.dtype))
                return clamp_with(h, *cache[key])

            return edit
        proj = projection_matrix(self.basis, ablated)
        center = self.center
        return lambda h: apply_projection(h, proj, center)

    def walker(self, device=None) -> EditWalker:
        """A mutable edit for cumulative walks: ``w.add(units)`` then ``w(h)`` (same result as ``edit``)."""
        return EditWalker(self, device)

    def direction_value(self, u: int) -> float:
        """Clamp value of direction/unit ``u`` in its own coordinate (0 for a zero clamp)."""
        if self.basis is None:
            return float(self.values[u])
        if self.center is None:
            return 0.0
        return float(self.basis[:, u] @ self.center.double())


class EditWalker:
    """The edit of a growing set of ablated units, updated in place (for the fast path's level walks)."""

    def __init__(self, plan: LayerPlan, device=None):
        self.plan = plan
        self.ablated: list[int] = []
        if plan.basis is None:
            self.keep = torch.ones(plan.units, device=device)
            self.fill = torch.zeros(plan.units, device=device)
            self.values = plan.values.to(device)
            self.has_fill = False
        self.proj = None
        #: ``w(h, out=t)`` writes into ``t`` (unit clamps on axis 1); projections, and layers whose units
        #: are on another axis, always return a new tensor.
        self.supports_out = plan.basis is None and plan.unit_dim == 1

    def add(self, units) -> None:
        self.ablated.extend(units)
        if self.plan.basis is None:
            for u in units:
                self.keep[u] = 0.0
                v = float(self.plan.values[u])
                if v != 0.0:
                    self.fill[u] = v
                    self.has_fill = True
        else:
            self.proj = projection_matrix(self.plan.basis, self.ablated)

    def __call__(self, h, out=None):
        if not self.ablated:
            return h
        d = self.plan.unit_dim
        if d != 1:  # the raw layer output (the fx path): edit in the canonical layout (N, C, *P)
            return from_canonical(self._edit(to_canonical(h, d), None), d)
        return self._edit(h, out)

    def _edit(self, h, out):
        if self.plan.basis is None:
            keep = self.keep if self.keep.dtype == h.dtype else self.keep.to(h.dtype)
            fill = None
            if self.has_fill:
                fill = self.fill if self.fill.dtype == h.dtype else self.fill.to(h.dtype)
            return clamp_with(h, keep, fill, out=out)
        return apply_projection(h, self.proj, self.plan.center)


@dataclass
class Curve:
    """A cumulative-ablation curve: level k ablates ``sequence[:k]`` (pairs of layer index and unit)."""

    sequence: list
    levels: list
    plans: list  # LayerPlan per layer (random bases differ between curves)
    order: str = "random"
    repeat: int = 0

    def units_between(self, k0: int, k1: int) -> dict[int, list[int]]:
        """Units newly ablated between level ``k0`` and ``k1``, grouped by layer index."""
        out: dict[int, list[int]] = {}
        for li, u in self.sequence[k0:k1]:
            out.setdefault(li, []).append(u)
        return out


@dataclass
class NoisePlan:
    """Noise on all layers at once: std ``scale * sigmas[i][j]``, stream keyed by (seed, repeat, i)."""

    sigmas: list  # float64 (C,) per layer
    scales: list
    repeats: int
    seed: int = 0
    names: list = field(default_factory=list)

    def key(self, repeat: int, layer_index: int) -> tuple[int, int, int]:
        return (self.seed, repeat, layer_index)


def check_logits(out, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``out`` if it is float logits the labels can score, else raise a one-line error.

    (N, classes) logits go with (N,) labels; (N, S, vocab) per-token logits with (N, S) labels.
    """
    ok = isinstance(out, torch.Tensor) and out.is_floating_point() and out.ndim in (2, 3)
    if ok and labels is not None:
        ok = out.ndim == labels.ndim + 1 and tuple(out.shape[: labels.ndim]) == tuple(labels.shape)
    if not ok:
        what = type(out).__name__ if not isinstance(out, torch.Tensor) else f"a tensor of shape {tuple(out.shape)}"
        lab = "" if labels is None else f" for labels of shape {tuple(labels.shape)}"
        raise SingledirError(
            f"the model's logits are {what}{lab}; the reliance engine needs (N, classes) logits with (N,) "
            f"labels or (N, S, vocab) logits with (N, S) labels -- pass output_fn= or wrap the model"
        )
    return out


def score(logits: torch.Tensor, y: torch.Tensor) -> tuple[int, float]:
    """(number of correct argmax predictions, summed cross-entropy) for ``logits``.

    (N, C) logits with (N,) labels, or (N, S, V) per-token logits with (N, S) labels; labels equal to -100
    are not scored (token accuracy and summed loss over the scored tokens). Per-example cross-entropy in
    the logits' dtype, summed in float64. Non-finite logits (NaN, +inf) make the loss non-finite and raise.
    """
    if logits.ndim == 3:
        logits = logits.reshape(-1, logits.shape[-1])
        y = y.reshape(-1)
    if bool((y == -100).any()):
        keep = y != -100
        logits, y = logits[keep], y[keep]
    correct = int((logits.argmax(1) == y).sum())
    loss = float(F.cross_entropy(logits, y, reduction="none").double().sum())
    if not math.isfinite(loss):
        check_finite(logits, "the model's output (logits)")
        raise SingledirError("non-finite loss (NaN or inf); check the inputs and the model's weights")
    return correct, loss
