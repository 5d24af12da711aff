"""The batched-hook path: many ablation levels / noise scales / single-unit ablations stacked along the batch.

Offers :class:`HookEvaluator` (``method="hooks"``; ``"auto"`` when the model cannot be traced by torch.fx).
Each pass runs R configurations at once: the batch is repeated R times and every layer's edit uses a
per-replica mask, projection or noise std (:mod:`.edits`). R is chosen so that all module outputs of R
copies of a batch stay within ``memory_budget``. Same interface and numbers as
:class:`~.reference.ReferenceEvaluator`, which it extends.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from singledir.reliance.edits import NoiseSpec, apply_projection, clamp_factors, clamp_with
from singledir.reliance.fast.layout import nbytes
from singledir.reliance.hooks import edit_outputs, noise
from singledir.reliance.inputs import batch_len, repeat_inputs, take
from singledir.reliance.plan import DEFAULT_MEMORY_BUDGET, check_logits, projection_matrix, score
from singledir.reliance.reference import ReferenceEvaluator

__all__ = ["HookEvaluator"]


class HookEvaluator(ReferenceEvaluator):
    """Full forward passes with R configurations stacked along the batch (per-replica masks)."""

    name = "hooks"

    def __init__(self, model, batches, plans, memory_budget: int | None = None, progress: bool = False,
                 output_fn=None):
        super().__init__(model, batches, plans, progress, output_fn)
        self.budget = int(memory_budget or DEFAULT_MEMORY_BUDGET)
        self.replicas = self._replicas()

    def _replicas(self) -> int:
        """How many configurations fit in one pass: all module outputs of R copies of a batch <= budget.

        Every module's output counts -- containers too, and tuples / dicts / output objects by the tensors
        they hold (a transformer block returns a tuple): an over-estimate for nested models, never 0 bytes.
        """
        x = self.feed(take(self.batches[0][0], 0, 2))
        n = batch_len(x)
        sizes = []
        handles = [m.register_forward_hook(lambda _m, _i, o: sizes.append(nbytes(o))) for m in self.model.modules()]
        try:
            self.feed.call(self.model, x)
        finally:
            for h in handles:
                h.remove()
        per_example = max(1, sum(sizes)) / n + nbytes(x) / n
        batch = max(int(b[1].shape[0]) for b in self.batches)
        return int(max(1, min(64, self.budget // (per_example * batch * 2))))

    def _replica_edits(self, plans, ablated_per_replica):
        """Hook edits for R replicas: ``ablated_per_replica[r]`` = {layer index: units}. Masks, clamp
        factors and projections are built once per group, on the model's device."""
        edits = {}
        r = len(ablated_per_replica)
        for li, plan in enumerate(plans):
            lists = [a.get(li, []) for a in ablated_per_replica]
            if not any(lists):
                continue
            if plan.basis is None:
                mask = torch.zeros(r, plan.units, dtype=torch.bool)
                for i, units in enumerate(lists):
                    mask[i, units] = True
                keep, fill = clamp_factors(mask.to(self.device), plan.values)
                edits[plan.name] = lambda h, k=keep, f=fill: clamp_with(
                    h, k.to(h.dtype), None if f is None else f.to(h.dtype))
            else:
                proj = torch.stack(
                    [projection_matrix(plan.basis, u) if u else torch.zeros(plan.units, plan.units) for u in lists]
                ).to(self.device)
                center = None if plan.center is None else plan.center.to(self.device)
                edits[plan.name] = lambda h, p=proj, c=center: apply_projection(h, p, c)
        return edits

    def _run_replicas(self, plans, configs):
        """(correct[R], loss[R]) of R configurations (each {layer index: units}) over all batches."""
        r = len(configs)
        correct = np.zeros(r, dtype=np.int64)
        loss = np.zeros(r)
        with edit_outputs(self.model, self._replica_edits(plans, configs), self.unit_dims):
            for x, y in self.device_batches():
                logits = self._replica_logits(x, y, r)
                for i in range(r):
                    c, lo = score(logits[i], y)
                    correct[i] += c
                    loss[i] += lo
        return correct, loss

    def _replica_logits(self, x, y, r: int):
        """(R, n, ...) logits of the inputs ``x`` repeated ``r`` times along the batch (labels ``y``)."""
        out = self.feed.logits(self.model, self.feed(repeat_inputs(x, r)))
        out = check_logits(out, y.repeat(r, *([1] * (y.ndim - 1))))
        return out.reshape(r, batch_len(x), *out.shape[1:])

    def cumulative(self, curves):
        out = []
        total = sum(len(c.levels) for c in curves)
        with tqdm(total=total, desc="ablation (hooks)", disable=not self.progress, leave=False) as bar:
            for curve in curves:
                correct = np.zeros(len(curve.levels), dtype=np.int64)
                loss = np.zeros(len(curve.levels))
                for g in range(0, len(curve.levels), self.replicas):
                    ks = curve.levels[g : g + self.replicas]
                    configs = [curve.units_between(0, k) for k in ks]
                    correct[g : g + len(ks)], loss[g : g + len(ks)] = self._run_replicas(curve.plans, configs)
                    bar.update(len(ks))
                out.append((correct, loss))
        return out

    def singles(self, plans, units):
        correct = np.zeros(len(units), dtype=np.int64)
        loss = np.zeros(len(units))
        for g in tqdm(range(0, len(units), self.replicas), desc="importance (hooks)", disable=not self.progress, leave=False):
            group = units[g : g + self.replicas]
            configs = [{li: [u]} for li, u in group]
            correct[g : g + len(group)], loss[g : g + len(group)] = self._run_replicas(plans, configs)
        return correct, loss

    def noise(self, plan):
        shape = (plan.repeats, len(plan.scales))
        correct = np.zeros(shape, dtype=np.int64)
        loss = np.zeros(shape)
        for rep in range(plan.repeats):
            for g in range(0, len(plan.scales), self.replicas):
                scales = [float(s) for s in plan.scales[g : g + self.replicas]]
                r = len(scales)
                specs = {name: NoiseSpec(plan.sigmas[i], scales, key=plan.key(rep, i)) for i, name in enumerate(plan.names)}
                start = 0
                for x, y in self.device_batches():
                    with noise(self.model, specs, start=start, unit_dims=self.unit_dims):
                        logits = self._replica_logits(x, y, r)
                    for i in range(r):
                        c, lo = score(logits[i], y)
                        correct[rep, g + i] += c
                        loss[rep, g + i] += lo
                    start += batch_len(x)
        return correct, loss
