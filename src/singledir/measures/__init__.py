"""Generalization measures of one trained network, oriented as complexities, with the registry that runs them.

Offers:

- :data:`MEASURES` -- the registry: ``{name: Measure}``; each :class:`Measure` names its source, how its
  raw value becomes a complexity (larger predicts a larger generalization gap) and the normalization.
- :func:`measure_all` -- every (or the named) measure of a model on its training data ->
  a DataFrame, one row per measure: ``name, raw, complexity, seconds, error, source, normalization``.
  A measure that is undefined for the network (NaN weights, no initial weights, a margin <= 0, a model
  too small for WeightWatcher) gets ``error`` = its reason and NaN values; it never stops the others. Any
  other exception is a bug and propagates (:data:`.compute.UNDEFINED` lists what counts as undefined).
- :func:`measure_run` -- the same for a run directory made by ``singledir train`` (its training labels,
  its initial weights from the epoch-0 checkpoint or rebuilt from the seed).
- :class:`MeasureSettings` -- the training-subset sizes and search depths of the expensive measures.
- The measure functions themselves (:mod:`.library`), the registry (:mod:`.registry`), running it
  (:mod:`.compute`) and the weight helpers (:mod:`.weights`).

Normalization (Jiang et al. 2020 as implemented in nitarshan/robust-generalization-measures): with m
the training-set size, non-log norm measures enter as ``sqrt(v / m)`` and log measures as
``(v - log m) / 2``; batch norm is folded into the preceding weights before any norm measure.

Example::

    import singledir as sd
    table = sd.measures.measure_run("runs/mlp-w128")          # or measure_all(model, (x, y), init_model=m0)
    table.set_index("name")["complexity"]
"""

from __future__ import annotations

from singledir.measures import library
from singledir.measures.compute import UNDEFINED, measure_all, measure_run
from singledir.measures.library import (
    davies_bouldin_mixup,
    distance_from_init,
    jacobian_norm,
    log_prod_frobenius,
    log_prod_spectral,
    log_sum_frobenius,
    margin_percentile,
    output_margins,
    pacbayes_sigma,
    path_norm,
    reliance_ablation,
    reliance_noise,
    sharpness_magnitude,
    weightwatcher_summary,
)
from singledir.measures.registry import COLUMNS, MEASURES, Measure, MeasureSettings, measure_names
from singledir.measures.weights import fold_batchnorm, initial_model, weight_layers, weight_matrices

__all__ = [
    "COLUMNS",
    "MEASURES",
    "Measure",
    "MeasureSettings",
    "UNDEFINED",
    "fold_batchnorm",
    "initial_model",
    "measure_all",
    "measure_names",
    "measure_run",
    "weight_layers",
    "weight_matrices",
    *library.__all__,
]
