"""singledir: how much does a trained network rely on single directions?

Measurements (work on any ``torch.nn.Module``; layers are dotted module names):

- :func:`ablation_curves` -- cumulative ablation of units (or random directions), accuracy and loss
- :func:`noise_curves` -- Gaussian noise scaled per unit, added to every unit of the layers
- :func:`class_selectivity` -- class selectivity index and mutual information per unit
- :func:`unit_importance` -- accuracy drop / loss rise when one unit alone is ablated
- :func:`selectivity_vs_importance` -- Spearman correlations between the two

Runs: :func:`load_run` loads a training run made by ``singledir train``; :func:`analyze` runs every
measurement on one network (what ``singledir analyze`` calls, via :func:`singledir.analysis.analyze_run`).

Modules: :mod:`singledir.stats` (every reported statistic: AUCs, Spearman with its p-value rule and
bootstrap interval, two-sample tests), :mod:`singledir.io` (atomic writes, JSON cleaning),
:mod:`singledir.devices` (a model's device, ``--device`` names).

Generalization measures: :mod:`singledir.measures` (``sd.measures.measure_run(run_dir)``, ``measure_all``).

Example::

    import singledir as sd
    res = sd.ablation_curves(model, (x, y), layers=["hidden.0", "hidden.1"], repeats=10)
    res.curves.head(); res.auc()
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Lazy attributes keep `import singledir` fast and free of import cycles.
_LAZY = {
    "ablation_curves": "singledir.reliance",
    "noise_curves": "singledir.reliance",
    "class_selectivity": "singledir.reliance",
    "unit_importance": "singledir.reliance",
    "selectivity_vs_importance": "singledir.reliance",
    "load_run": "singledir.training",
    "analyze": "singledir.analysis",
    "analyze_run": "singledir.analysis",
    "load_dataset": "singledir.data",
    "build_model": "singledir.models",
    "SingledirError": "singledir.errors",
}

__all__ = sorted(_LAZY) + ["__version__", "measures"]


def __getattr__(name: str):
    if name == "measures":  # the generalization-measure subpackage, imported on first use
        return importlib.import_module("singledir.measures")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'singledir' has no attribute {name!r}")
