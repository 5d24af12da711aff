"""The plain reference path: forward hooks and one full forward pass per configuration over all batches.

Offers :class:`ReferenceEvaluator` (``method="reference"``). It is deliberately simple -- for every
ablation level, every single-unit ablation and every noise scale it installs the edits of
:mod:`.plan` as forward hooks and runs the whole model over the data batches -- so that it is obviously
right; the fast paths (:mod:`.fast`, :mod:`.batched`) are tested against it. Inputs go to the model's
device through :class:`~.inputs.ModelInput`, once (kept there when they fit ``DEFAULT_MEMORY_BUDGET``).

All evaluators share this interface (counts are summed over the data, losses are summed cross-entropy):

- ``base() -> (correct, loss_sum)``
- ``cumulative(curves) -> list of (correct[levels], loss_sum[levels])`` numpy arrays per curve
- ``singles(plans, units) -> (correct[units], loss_sum[units])`` for units ablated one at a time
- ``noise(plan) -> (correct[repeats, scales], loss_sum[repeats, scales])``
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from singledir.reliance.edits import NoiseSpec
from singledir.reliance.hooks import edit_outputs, noise
from singledir.reliance.inputs import ModelInput
from singledir.reliance.fast.layout import nbytes
from singledir.reliance.plan import DEFAULT_MEMORY_BUDGET, check_logits, score

__all__ = ["ReferenceEvaluator"]


class ReferenceEvaluator:
    """Hooks + full forward passes; see the module docstring for the interface."""

    name = "reference"

    def __init__(self, model, batches, plans, progress: bool = False, output_fn=None):
        self.model = model
        self.batches = batches
        self.plans = plans
        self.progress = progress
        self.feed = ModelInput(model, output_fn)
        self.device = self.feed.device
        #: each layer's unit axis: the edits see the canonical layout (N, units, *positions)
        self.unit_dims = {p.name: p.unit_dim for p in plans}
        self._on_device = None

    def device_batches(self) -> list:
        """The batches on the model's device (and dtype), sent once and kept when they fit
        ``DEFAULT_MEMORY_BUDGET``; else sent per use (a generator)."""
        if self._on_device is not None:
            return self._on_device
        size = sum(nbytes(x) + nbytes(y) for x, y in self.batches)
        moved = ((self.feed(x), y.to(self.device)) for x, y in self.batches)
        if size <= DEFAULT_MEMORY_BUDGET:
            self._on_device = list(moved)
            return self._on_device
        return moved

    def logits(self, x, y):
        """The checked logits of the model on the inputs ``x`` (already on the device) for the labels ``y``."""
        return check_logits(self.feed.logits(self.model, x), y)

    def _run(self, edits: dict) -> tuple[int, float]:
        correct, loss = 0, 0.0
        with edit_outputs(self.model, edits, self.unit_dims):
            for x, y in self.device_batches():
                c, lo = score(self.logits(x, y), y)
                correct += c
                loss += lo
        return correct, loss

    def _edits(self, plans, ablated: dict[int, list[int]]) -> dict:
        edits = {}
        for li, units in ablated.items():
            fn = plans[li].edit(units)
            if fn is not None:
                edits[plans[li].name] = fn
        return edits

    def base(self) -> tuple[int, float]:
        return self._run({})

    def cumulative(self, curves) -> list:
        out = []
        total = sum(len(c.levels) for c in curves)
        with tqdm(total=total, desc="ablation (reference)", disable=not self.progress, leave=False) as bar:
            for curve in curves:
                correct = np.zeros(len(curve.levels), dtype=np.int64)
                loss = np.zeros(len(curve.levels))
                for i, k in enumerate(curve.levels):
                    edits = self._edits(curve.plans, curve.units_between(0, k))
                    correct[i], loss[i] = self._run(edits)
                    bar.update(1)
                out.append((correct, loss))
        return out

    def singles(self, plans, units) -> tuple[np.ndarray, np.ndarray]:
        correct = np.zeros(len(units), dtype=np.int64)
        loss = np.zeros(len(units))
        for i, (li, u) in enumerate(tqdm(units, desc="importance (reference)", disable=not self.progress, leave=False)):
            correct[i], loss[i] = self._run(self._edits(plans, {li: [u]}))
        return correct, loss

    def noise(self, plan) -> tuple[np.ndarray, np.ndarray]:
        shape = (plan.repeats, len(plan.scales))
        correct = np.zeros(shape, dtype=np.int64)
        loss = np.zeros(shape)
        total = shape[0] * shape[1]
        with tqdm(total=total, desc="noise (reference)", disable=not self.progress, leave=False) as bar:
            for r in range(plan.repeats):
                for s, scale in enumerate(plan.scales):
                    specs = {
                        name: NoiseSpec(plan.sigmas[i], float(scale), key=plan.key(r, i))
                        for i, name in enumerate(plan.names)
                    }
                    c_sum, l_sum = 0, 0.0
                    with noise(self.model, specs, unit_dims=self.unit_dims):
                        for x, y in self.device_batches():
                            c, lo = score(self.logits(x, y), y)
                            c_sum += c
                            l_sum += lo
                    correct[r, s], loss[r, s] = c_sum, l_sum
                    bar.update(1)
        return correct, loss
