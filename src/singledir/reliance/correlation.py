"""Does class selectivity predict a unit's importance? Spearman correlations per layer and pooled.

:func:`selectivity_vs_importance` joins :func:`~singledir.reliance.selectivity.class_selectivity` (class
selectivity index, mutual information) with :func:`~singledir.reliance.importance.unit_importance`
(accuracy drop when the unit alone is ablated) -- or takes those tables precomputed via ``units=`` --
and returns, for every layer and for all layers pooled (``layer == "all"``) and for each tuning
measure, Spearman's rho with its p-value (two-sided, :data:`singledir.stats.P_VALUE_RULE`: scipy's
``spearmanr`` above 10 units, a permutation p-value for fewer) and a percentile
bootstrap confidence interval for rho (units resampled with replacement; seeded, so the same inputs
give the same interval; the same resamples are used for every measure of a layer).

Decisions (parameters): dead units (never active: selectivity, MI and importance all 0 by
construction) are left out by default (``drop_dead=True``) because their ties would add a spurious
positive correlation; units with a NaN in either column are left out. Where rho is undefined (fewer
than 3 units, or a constant column) rho, p and the interval are NaN and ``note`` says why.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from singledir import stats
from singledir.errors import SingledirError
from singledir.reliance.results import Table

__all__ = ["selectivity_vs_importance", "spearman_with_ci"]

MEASURES = ("selectivity", "mutual_info")
RESULT_COLUMNS = [
    "layer", "measure", "importance", "n_units", "rho", "p_value", "ci_low", "ci_high", "n_dropped", "note",
]


def selectivity_vs_importance(
    model=None,
    data=None,
    layers=None,
    *,
    units=None,
    importance: str = "accuracy_drop",
    measures=MEASURES,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    drop_dead: bool = True,
    bins: int | None = None,
    clamp: str = "zero",
    stats_data=None,
    unit_dim=None,
    output_fn=None,
    batch_size: int | None = None,
    memory_budget: int | None = None,
    method: str = "auto",
    progress: bool = False,
) -> Table:
    """Spearman rho (+ p-value, bootstrap CI) between tuning measures and unit importance.

    Either ``model``, ``data`` (``(inputs, labels)`` or batches; the paper uses the test set) and
    ``layers`` -- then :func:`class_selectivity` (with ``bins``) and :func:`unit_importance` (with
    ``clamp``) are run -- or ``units=``: a DataFrame with columns ``layer``, ``unit``, the
    ``measures`` and ``importance`` (e.g. the ``units.parquet`` written by ``singledir analyze``), or a
    pair ``(selectivity_df, importance_df)`` joined on ``layer, unit``.

    ``clamp``, ``stats_data``, ``unit_dim``, ``output_fn``, ``batch_size``, ``memory_budget``, ``method``,
    ``progress``: passed to the two measurements (as in :func:`~.ablation.ablation_curves`).

    ``importance``: the importance column (``"accuracy_drop"``, or ``"loss_increase"``). ``measures``:
    tuning columns to correlate (default selectivity and mutual information). ``n_boot`` bootstrap
    resamples (0 = no interval), central ``confidence`` interval, ``seed`` for the resampling.

    Returns one row per (layer, measure) -- the layers in their order, then ``"all"`` (every unit of
    every layer pooled) -- with columns ``layer, measure, importance, n_units, rho, p_value, ci_low,
    ci_high, n_dropped`` (dead or NaN units left out) and ``note`` ("" when rho is defined).

    Example::

        corr = sd.selectivity_vs_importance(model, (x_test, y_test), ["hidden.0", "hidden.1"])
        corr[corr.layer == "all"]
    """
    if isinstance(measures, str):
        measures = (measures,)
    measures = tuple(measures)
    if not measures:
        raise SingledirError("measures is empty; pass e.g. ('selectivity', 'mutual_info')")
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 0:
        raise SingledirError(f"n_boot must be an int >= 0, got {n_boot!r}")
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise SingledirError(f"confidence must be a float in (0, 1), e.g. 0.95, got {confidence!r}")

    run = {"clamp": clamp, "stats_data": stats_data, "unit_dim": unit_dim, "output_fn": output_fn,
           "batch_size": batch_size, "memory_budget": memory_budget, "method": method, "progress": progress}
    table = _units_table(model, data, layers, units, importance, measures, bins, run)
    layer_names = list(pd.unique(table["layer"]))
    groups = [(name, table[table["layer"] == name]) for name in layer_names] + [("all", table)]

    rows = []
    rng = np.random.default_rng(seed)
    for name, sub in groups:
        n_before = len(sub)
        if drop_dead and "dead" in sub.columns:
            sub = sub[~sub["dead"].astype(bool)]
        boot_idx = None
        for measure in measures:
            xy = sub[[measure, importance]].to_numpy(dtype=float)
            keep = np.isfinite(xy).all(axis=1)
            x, y = xy[keep, 0], xy[keep, 1]
            if boot_idx is None or boot_idx.shape[1] != len(x):
                boot_idx = rng.integers(0, len(x), size=(n_boot, len(x))) if len(x) and n_boot else None
            rho, p, lo, hi, note = spearman_with_ci(x, y, boot_idx=boot_idx, confidence=confidence,
                                                    names=(measure, importance))
            rows.append(
                {
                    "layer": name, "measure": measure, "importance": importance, "n_units": int(len(x)),
                    "rho": rho, "p_value": p, "ci_low": lo, "ci_high": hi,
                    "n_dropped": int(n_before - len(x)), "note": note,
                }
            )
    out = Table(rows, columns=RESULT_COLUMNS)
    out.attrs.update({"n_boot": n_boot, "confidence": confidence, "seed": seed, "drop_dead": bool(drop_dead)})
    return out


def spearman_with_ci(x, y, *, boot_idx=None, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                     names=("x", "y")):
    """``(rho, p_value, ci_low, ci_high, note)`` of :func:`singledir.stats.spearman` for two 1-D arrays.

    ``boot_idx``: ``(B, n)`` resample indices (drawn from ``seed`` with ``n_boot`` rows when None); the
    p-value follows :data:`singledir.stats.P_VALUE_RULE`; NaNs and a ``note`` where rho is undefined.
    """
    c = stats.spearman(x, y, n_boot=n_boot, confidence=confidence, seed=seed, resamples=boot_idx, names=names)
    return c["rho"], c["p"], c["ci_low"], c["ci_high"], c["note"]


def _units_table(model, data, layers, units, importance, measures, bins, run):
    """The per-unit table to correlate: from ``units`` or computed from the model."""
    if units is not None:
        if isinstance(units, (tuple, list)) and len(units) == 2:
            a, b = units
            _need(a, ["layer", "unit"], "units[0]")
            _need(b, ["layer", "unit"], "units[1]")
            dup = [c for c in b.columns if c in a.columns and c not in ("layer", "unit")]
            table = a.merge(b.drop(columns=dup), on=["layer", "unit"], how="inner")
            if table.empty:
                raise SingledirError("the two unit tables share no (layer, unit) rows; pass tables of the same layers")
        elif isinstance(units, pd.DataFrame):
            table = units
        else:
            raise SingledirError(
                f"units must be a DataFrame or a pair (selectivity_df, importance_df), got {type(units).__name__}"
            )
    else:
        if model is None or data is None or layers is None:
            raise SingledirError("pass either model, data and layers, or precomputed tables via units=")
        from singledir.reliance.importance import unit_importance
        from singledir.reliance.selectivity import DEFAULT_BINS, class_selectivity

        sel = class_selectivity(model, data, layers, bins=bins or DEFAULT_BINS, batch_size=run["batch_size"],
                                unit_dim=run["unit_dim"], progress=run["progress"])
        imp = unit_importance(model, data, layers, **run)
        dup = [c for c in imp.columns if c in sel.columns and c not in ("layer", "unit")]
        table = sel.merge(imp.drop(columns=dup), on=["layer", "unit"], how="inner")
    _need(table, ["layer", "unit", importance, *measures], "the unit table")
    if table.empty:
        raise SingledirError("the unit table is empty; nothing to correlate")
    return table


def _need(df, cols, what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise SingledirError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise SingledirError(
            f"{what} lacks column(s) {', '.join(missing)}; it has {', '.join(map(str, df.columns))}"
        )
