"""Which evaluation path runs a measurement: :func:`make_evaluator` for ``method`` "auto" / "fast" / "hooks" /
"reference".

Offers:

- :func:`make_evaluator` -- the evaluator for ``method``: "reference" (:mod:`.reference`, one plain
  forward pass per configuration), "hooks" (:mod:`.batched`, configurations stacked along the batch),
  "fast" (:mod:`.fast`, torch.fx; an error if the model cannot be traced) or "auto" (fast, else hooks).
- :data:`METHODS` -- the accepted names; :data:`DEFAULT_MEMORY_BUDGET` -- 1 GiB of activations.

All evaluators implement the interface of :mod:`.reference` and return the same numbers up to float
rounding inside the network (:func:`singledir.reliance.testing.compare_curves` states how close).

Example::

    ev = make_evaluator("auto", model, batches, plans)
    ev.name                      # "fast", or "hooks" if torch.fx could not trace the model
    correct, loss_sum = ev.base()
"""

from __future__ import annotations

from singledir.errors import SingledirError
from singledir.reliance.batched import HookEvaluator
from singledir.reliance.fast import FastEvaluator, TraceFailed
from singledir.reliance.plan import DEFAULT_MEMORY_BUDGET
from singledir.reliance.reference import ReferenceEvaluator

__all__ = ["DEFAULT_MEMORY_BUDGET", "METHODS", "make_evaluator"]

METHODS = ("auto", "fast", "hooks", "reference")


def make_evaluator(method: str, model, batches, plans, memory_budget=None, progress=False):
    """The evaluator for ``method``: "reference", "hooks", "fast" (fx; error if untraceable) or "auto"."""
    if method == "reference":
        return ReferenceEvaluator(model, batches, plans, progress)
    if method == "hooks":
        return HookEvaluator(model, batches, plans, memory_budget, progress)
    try:
        return FastEvaluator(model, batches, plans, memory_budget, progress)
    except TraceFailed as exc:
        if method == "fast":
            raise SingledirError(
                f"method='fast' needs a model torch.fx can trace ({exc}); use method='auto' or 'hooks'"
            ) from None
        return HookEvaluator(model, batches, plans, memory_budget, progress)
