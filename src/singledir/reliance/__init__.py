"""The reliance measurements: cumulative ablation, noise, single-unit importance, class selectivity.

Offers: :func:`ablation_curves` / :class:`AblationResult`, :func:`noise_curves` / :class:`NoiseResult`,
:func:`unit_importance`, :func:`class_selectivity`, :func:`selectivity_vs_importance`, and the path
choice :func:`make_evaluator` / :data:`METHODS` / :data:`DEFAULT_MEMORY_BUDGET`.

Files, one job each (data flows top to bottom):

- :mod:`.inputs` -- data as batches (tensors, dicts of tensors, HF-style ``labels``), layer names,
  argument checks, :class:`~.inputs.ModelInput` (device, calling the model, picking its logits).
- :mod:`.axes` -- each layer's unit axis (``unit_dim``: given, or inferred where unambiguous) and the
  canonical layout (N, units, *positions) every path edits in; padding masks.
- :mod:`.hooks` -- context managers that install hooks and always remove them (model_guard, record,
  edit_outputs, ablate, noise).
- :mod:`.edits` -- clamp / projection / noise tensor math shared by every path.
- :mod:`.units` -- the one loop over a dataset's layer outputs; unit counts, means, stds, activities.
- :mod:`.plan` -- what to evaluate (layer plans, curves, noise plans) and scoring.
- :mod:`.reference` -- the plain path; :mod:`.batched` -- the batched-hook path; :mod:`.fast` -- the fx
  path (a package); :mod:`.evaluators` -- which path runs.
- :mod:`.common` -- set-up shared by the measurements; :mod:`.ablation`, :mod:`.noise`,
  :mod:`.importance`, :mod:`.selectivity`, :mod:`.correlation` -- the measurements, one call shape
  ``fn(model, data, layers, *, ...)``; :mod:`.results` -- :class:`~.results.Table` (a DataFrame with
  ``.meta``) for the per-unit ones.
- :mod:`.testing` -- toy models, data and the fast-vs-reference comparison for tests and benchmarks.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "ablation_curves": "singledir.reliance.ablation",
    "AblationResult": "singledir.reliance.ablation",
    "noise_curves": "singledir.reliance.noise",
    "NoiseResult": "singledir.reliance.noise",
    "unit_importance": "singledir.reliance.importance",
    "class_selectivity": "singledir.reliance.selectivity",
    "selectivity_vs_importance": "singledir.reliance.correlation",
    "make_evaluator": "singledir.reliance.evaluators",
    "METHODS": "singledir.reliance.evaluators",
    "DEFAULT_MEMORY_BUDGET": "singledir.reliance.evaluators",
}

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "METHODS",
    "AblationResult",
    "NoiseResult",
    "ablation_curves",
    "class_selectivity",
    "make_evaluator",
    "noise_curves",
    "selectivity_vs_importance",
    "unit_importance",
]


def __getattr__(name: str):
    """Import the public functions lazily (keeps imports cheap; tolerates files not written yet)."""
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return getattr(module, name)
    raise AttributeError(f"module 'singledir.reliance' has no attribute {name!r}")
