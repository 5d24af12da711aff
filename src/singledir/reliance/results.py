"""The result type of the per-unit measurements: a pandas DataFrame with a ``.meta`` dict.

Offers :class:`Table`. :func:`~.importance.unit_importance`, :func:`~.selectivity.class_selectivity` and
:func:`~.correlation.selectivity_vs_importance` return one; :class:`~.ablation.AblationResult` and
:class:`~.noise.NoiseResult` carry ``.meta`` too, so every measurement's settings are read the same way.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["Table"]


class Table(pd.DataFrame):
    """A DataFrame whose ``.meta`` is its ``attrs`` (the measurement's settings and path). Operations on it
    return plain DataFrames (``attrs`` propagate as pandas propagates them)."""

    @property
    def meta(self) -> dict:
        return self.attrs
