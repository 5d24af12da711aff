"""The paper's claims as experiments: presets, the run cache, verdict rules, and the main job.

- :data:`CLAIMS` -- claim name -> module under :mod:`singledir.experiments.claims` (each has ``NAME``,
  ``TITLE``, ``STATEMENT``, ``RULE`` and ``run(ctx) -> ClaimResult``); :data:`OPT_IN_CLAIMS` -- claims
  run only when named (the transformer's label corruption).
- :func:`reproduce` (in :mod:`.reproduce`) -- run claims with a preset and write the report.
- :mod:`.presets`, :mod:`.runner`, :mod:`.verdicts`, :mod:`singledir.analysis.jobs` (per-run jobs), :mod:`.context`; the statistics
  themselves are in :mod:`singledir.stats`.
"""

from __future__ import annotations

CLAIMS = {
    "label-corruption": "singledir.experiments.claims.label_corruption",
    "ensemble": "singledir.experiments.claims.ensemble",
    "hyperparameters": "singledir.experiments.claims.hyperparameters",
    "training-dynamics": "singledir.experiments.claims.training_dynamics",
    "dropout": "singledir.experiments.claims.dropout",
    "batchnorm": "singledir.experiments.claims.batchnorm",
    "selectivity": "singledir.experiments.claims.selectivity",
}
#: Claims run only when named (``--claims transformer``); each module has ``preset_settings(preset)``.
OPT_IN_CLAIMS = {
    "transformer": "singledir.experiments.claims.transformer",
}


def reproduce(*args, **kwargs):
    """See :func:`singledir.experiments.reproduce.reproduce`."""
    from singledir.experiments.reproduce import reproduce as _reproduce

    return _reproduce(*args, **kwargs)


__all__ = ["CLAIMS", "OPT_IN_CLAIMS", "reproduce"]
