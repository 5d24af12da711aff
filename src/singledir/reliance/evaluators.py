"""Which evaluation path runs a measurement: :func:`make_evaluator` for ``method`` "auto" / "fast" / "hooks" /
"reference".

Offers:

- :func:`make_evaluator` -- the evaluator for ``method``: "reference" (:mod:`.reference`, one plain
  forward pass per configuration), "hooks" (:mod:`.batched`, configurations stacked along the batch),
  "fast" (:mod:`.fast`, torch.fx; an error if the model cannot be traced) or "auto" (fast, else hooks).
- :data:`METHODS` -- the accepted names; :data:`DEFAULT_MEMORY_BUDGET` -- 1 GiB of activations.
- :class:`FastPathFallback` -- the warning issued (once per measurement) when ``method="auto"`` cannot
  use the fx path and falls back to the batched hooks; the reason is in the message and in the
  evaluator's ``fallback_reason``.
- :func:`path_meta` -- the metadata every result records about the path: ``method`` (the path taken:
  "fast", "hooks" or "reference"), ``method_requested`` and ``fallback_reason`` (None unless "auto"
  fell back).

All evaluators implement the interface of :mod:`.reference` and return the same numbers up to float
rounding inside the network (:func:`singledir.reliance.testing.compare_curves` states how close).

Example::

    ev = make_evaluator("auto", model, batches, plans)
    ev.name                      # "fast", or "hooks" if torch.fx could not trace the model
    correct, loss_sum = ev.base()
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from singledir.errors import SingledirError
from singledir.reliance.batched import HookEvaluator
from singledir.reliance.fast import FastEvaluator, TraceFailed
from singledir.reliance.inputs import split_layer
from singledir.reliance.plan import DEFAULT_MEMORY_BUDGET
from singledir.reliance.reference import ReferenceEvaluator

__all__ = ["DEFAULT_MEMORY_BUDGET", "METHODS", "FastPathFallback", "fx_unsupported", "make_evaluator", "path_meta"]

METHODS = ("auto", "fast", "hooks", "reference")


class FastPathFallback(UserWarning):
    """``method="auto"`` could not use the fx fast path and runs the batched-hook path (same numbers, slower)."""


def fx_unsupported(batches, plans, output_fn=None) -> str | None:
    """Why the fx path cannot run these inputs (None if it can): it takes one input tensor and scores
    (N, classes) logits against (N,) labels with every label scored. (Units on another axis than 1 run
    its cumulative walk; its single-unit and noise passes then use the batched hooks.)"""
    if output_fn is not None:
        return "an output_fn is given"
    if any(isinstance(x, Mapping) for x, _ in batches):
        return "the inputs are a dict of tensors"
    if any(y.ndim != 1 or bool((y == -100).any()) for _, y in batches):
        return "the labels are per token or hold -100"
    if any(split_layer(p.name)[1] for p in plans):
        return "a module's input (':input') is analysed"
    return None


def make_evaluator(method: str, model, batches, plans, memory_budget=None, progress=False, output_fn=None):
    """The evaluator for ``method``: "reference", "hooks", "fast" (fx; error if untraceable) or "auto".

    Every evaluator has ``name`` (the path taken), ``method_requested`` and ``fallback_reason``. When
    "auto" falls back from the fx path to the hooks, a :class:`FastPathFallback` warning names the reason.
    ``output_fn`` picks the logits from the model's output (:func:`~.inputs.logits_of`).
    """
    reason = None
    if method == "reference":
        ev = ReferenceEvaluator(model, batches, plans, progress, output_fn)
    elif method == "hooks":
        ev = HookEvaluator(model, batches, plans, memory_budget, progress, output_fn)
    else:
        why = fx_unsupported(batches, plans, output_fn)
        if why is not None:  # the inputs, not the model, rule the fx path out: no warning under "auto"
            if method == "fast":
                raise SingledirError(f"method='fast' cannot run these inputs ({why}); use method='auto' or 'hooks'")
            ev = HookEvaluator(model, batches, plans, memory_budget, progress, output_fn)
            ev.method_requested, ev.fallback_reason = method, why
            return ev
        try:
            ev = FastEvaluator(model, batches, plans, memory_budget, progress)
        except TraceFailed as exc:
            if method == "fast":
                raise SingledirError(
                    f"method='fast' needs a model torch.fx can trace ({exc}); use method='auto' or 'hooks'"
                ) from None
            reason = str(exc)
            warnings.warn(
                f"method='auto': the fx fast path cannot run this model ({reason}); using the batched-hook "
                f"path (same numbers, slower)",
                FastPathFallback,
                stacklevel=3,
            )
            ev = HookEvaluator(model, batches, plans, memory_budget, progress, output_fn)
    ev.method_requested = method
    ev.fallback_reason = reason
    return ev


def path_meta(evaluator) -> dict:
    """``{"method": path taken, "method_requested": ..., "fallback_reason": str or None}`` of an evaluator."""
    return {
        "method": evaluator.name,
        "method_requested": getattr(evaluator, "method_requested", evaluator.name),
        "fallback_reason": getattr(evaluator, "fallback_reason", None),
    }
