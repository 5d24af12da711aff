"""The reliance engine: cumulative ablation, noise, single-unit importance (and selectivity, re-exported).

Offers: :func:`ablation_curves` / :class:`AblationResult`, :func:`noise_curves` / :class:`NoiseResult`,
:func:`unit_importance`; :func:`class_selectivity` and :func:`selectivity_vs_importance` are re-exported
from :mod:`.selectivity` / :mod:`.correlation` when present. Building blocks: :mod:`.hooks` (record,
ablate, noise, model_guard, unit statistics) and :mod:`.inputs` (data batches and argument checks).
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
}

__all__ = [
    "AblationResult",
    "NoiseResult",
    "ablation_curves",
    "class_selectivity",
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
