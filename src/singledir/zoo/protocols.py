"""Scoring protocols: how well a generalization measure ranks a zoo of models by their generalization gap.

Offers (each takes a table with one row per model; ``measure`` is oriented as a complexity -- larger
predicts a larger gap; ``gap`` = train accuracy - test accuracy):

- :func:`kendall_tau` -- Jiang et al. 2020 ("Fantastic generalization measures"), eq. for tau:
  ``1/(n(n-1)) * sum_{i != j} sign(mu_i - mu_j) sign(g_i - g_j)``.
- :func:`kendall_tau_ci` -- a percentile bootstrap interval of that tau, resampling models
  (``scipy.stats.bootstrap``, paired).
- :func:`granulated_psi` -- Fantastic's granulated Kendall coefficient: for each axis, the mean tau
  within each group of models that share every other axis (seeds pooled), then the mean over axes.
- :func:`conditional_mutual_information` -- the NeurIPS 2020 PGDL scoring program's conditional MI.
- :func:`sign_error` -- Dziugaite et al. 2020's robust sign-error over coupled environments.
- :func:`check_complete_grid` -- the error a non-grid zoo gets (names the missing cells).

Example::

    from singledir.zoo.protocols import kendall_tau, granulated_psi
    tau = kendall_tau(df["measure"], df["gap"])
    psi, per_axis = granulated_psi(df, "measure", "gap", axes=["width", "depth"])
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from singledir.errors import SingledirError

__all__ = [
    "check_complete_grid",
    "conditional_mutual_information",
    "granulated_psi",
    "hoeffding_weight",
    "kendall_tau",
    "kendall_tau_ci",
    "sign_error",
]


def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(a).any():
        raise SingledirError(f"{name} has {int(np.isnan(a).sum())} NaN value(s); drop the models with missing values first")
    return a


def kendall_tau(measure, gap) -> float:
    """Fantastic's Kendall tau: ``1/(n(n-1)) sum_{i != j} sign(mu_i - mu_j) sign(g_i - g_j)``.

    Ties contribute 0 (this is Kendall's tau-a; scipy only offers tau-b/c, whose tie corrections differ,
    hence the direct O(n^2) sum). NaN for fewer than 2 models.
    """
    mu, g = _vec(measure, "measure"), _vec(gap, "gap")
    if len(mu) != len(g):
        raise SingledirError(f"measure has {len(mu)} values but gap has {len(g)}; pass one of each per model")
    n = len(mu)
    if n < 2:
        return float("nan")
    s = np.sign(mu[:, None] - mu[None, :]) * np.sign(g[:, None] - g[None, :])
    return float(s.sum() / (n * (n - 1)))  # the diagonal is 0


def kendall_tau_ci(measure, gap, *, confidence: float = 0.95, n_boot: int = 1000, seed: int = 0
                   ) -> tuple[float, float]:
    """Percentile bootstrap interval of :func:`kendall_tau`, resampling models (pairs kept together).

    Uses ``scipy.stats.bootstrap(..., paired=True, method="percentile")`` with a seeded generator, so the
    same inputs give the same interval. (NaN, NaN) for fewer than 3 models.
    """
    from scipy.stats import bootstrap

    mu, g = _vec(measure, "measure"), _vec(gap, "gap")
    if len(mu) < 3:
        return (float("nan"), float("nan"))
    if not 0 < confidence < 1:
        raise SingledirError(f"confidence must be in (0, 1), got {confidence!r}")
    res = bootstrap(
        (mu, g),
        kendall_tau,
        paired=True,
        vectorized=False,
        n_resamples=int(n_boot),
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def _check_axes(df: pd.DataFrame, axes) -> list[str]:
    axes = list(axes)
    if not axes:
        raise SingledirError("no hyperparameter axes given; name the columns that vary across the zoo")
    missing = [a for a in axes if a not in df.columns]
    if missing:
        raise SingledirError(f"axis column(s) {', '.join(map(repr, missing))} not in the table; columns: {', '.join(map(str, df.columns))}")
    flat = [a for a in axes if df[a].nunique(dropna=False) < 2]
    if flat:
        raise SingledirError(
            f"axis {flat[0]!r} has fewer than 2 values ({df[flat[0]].unique().tolist()}); give every axis at least 2 values or leave it out"
        )
    return axes


def granulated_psi(df: pd.DataFrame, measure: str, gap: str, axes) -> tuple[float, dict[str, float]]:
    """Fantastic's granulated Kendall coefficient: ``(Psi, {axis: psi_k})``.

    ``psi_k`` = mean over the groups of models that share every axis but ``k`` (all seeds of those
    settings pooled in the group) of :func:`kendall_tau` within the group; ``Psi`` = mean of ``psi_k``.
    Groups with fewer than 2 models are skipped; an axis with no usable group gets NaN.
    """
    axes = _check_axes(df, axes)
    per: dict[str, float] = {}
    for k in axes:
        others = [a for a in axes if a != k]
        taus = []
        groups = df.groupby(others, dropna=False, sort=True) if others else [((), df)]
        for _, g in groups:
            if len(g) >= 2:
                t = kendall_tau(g[measure], g[gap])
                if not math.isnan(t):
                    taus.append(t)
        per[k] = float(np.mean(taus)) if taus else float("nan")
    vals = [v for v in per.values() if not math.isnan(v)]
    return (float(np.mean(vals)) if vals else float("nan")), per


def check_complete_grid(df: pd.DataFrame, axes) -> None:
    """Raise :class:`SingledirError` naming the missing cells unless every combination of axis values has a model."""
    axes = _check_axes(df, axes)
    values = [sorted(df[a].unique().tolist()) for a in axes]
    have = {tuple(r) for r in df[axes].itertuples(index=False, name=None)}
    missing = [c for c in itertools.product(*values) if c not in have]
    if missing:
        shown = "; ".join(", ".join(f"{a}={v}" for a, v in zip(axes, c)) for c in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SingledirError(
            f"the zoo is not a complete grid over {', '.join(axes)}: no model at {shown}{more}; "
            f"train the missing cells or drop an axis"
        )


def _entropy2(counts: np.ndarray) -> np.ndarray:
    """Base-2 entropy of each row of counts (0 log 0 = 0)."""
    p = counts / counts.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log2(p), 0.0)
    return -t.sum(axis=-1)


def conditional_mutual_information(df: pd.DataFrame, measure: str, gap: str, axes) -> float:
    """The PGDL competition's conditional mutual information (``scoring_program/mutual_information.py``).

    For every pair of axes (h1, h2), the ordered pairs (i, j) of models -- all of them, i == j included,
    as in the scoring program -- are split into cells keyed by ``(h1_i, h1_j, h2_i, h2_j)``; in each cell
    the 2x2 table of ``[g_i > g_j]`` against ``[mu_i > mu_j]`` (a tie counts as "not greater") gives the
    mutual information (log2) of the two signs and the entropy of the gap sign. Each is averaged
    uniformly over the cells; the score is the minimum over axis pairs of mean MI / mean entropy (in
    [0, 1]; the competition reports it x 100). It ignores the direction of the relation. The zoo must be
    a complete grid over ``axes`` (else the error names the missing cells) with at least 2 axes.
    """
    axes = _check_axes(df, axes)
    if len(axes) < 2:
        raise SingledirError(f"conditional mutual information needs at least 2 axes, got {axes}; add an axis")
    check_complete_grid(df, axes)
    mu, g = _vec(df[measure], "measure"), _vec(df[gap], "gap")
    gs = (g[:, None] > g[None, :]).astype(np.int64)
    ms = (mu[:, None] > mu[None, :]).astype(np.int64)
    joint = 2 * gs + ms
    codes = {}
    for a in axes:
        vals = sorted(df[a].unique().tolist())
        codes[a] = (np.array([vals.index(v) for v in df[a].tolist()]), len(vals))
    best = float("inf")
    for h1, h2 in itertools.combinations(axes, 2):  # (h2, h1) gives the same cells relabelled
        (c1, n1), (c2, n2) = codes[h1], codes[h2]
        cell = ((c1[:, None] * n1 + c1[None, :]) * n2 + c2[:, None]) * n2 + c2[None, :]
        n_cells = n1 * n1 * n2 * n2
        tab = np.bincount((cell * 4 + joint).ravel(), minlength=n_cells * 4).reshape(n_cells, 2, 2).astype(float)
        pg, pm = tab.sum(axis=2), tab.sum(axis=1)  # gap-sign and measure-sign marginals
        h_gap = _entropy2(pg)
        mi = _entropy2(pg) + _entropy2(pm) - _entropy2(tab.reshape(n_cells, 4))
        score = float(mi.mean() / h_gap.mean()) if h_gap.mean() > 0 else float("nan")
        best = min(best, score)
    return best


def hoeffding_weight(dgap, n_test: int) -> np.ndarray:
    """Dziugaite et al.'s pair weight: ``max(0, 1 - 2 exp(-n dg^2 / 2))^2``, the Hoeffding lower bound on
    the probability that both test-accuracy estimates fall on the right side of their midpoint."""
    d = np.abs(np.asarray(dgap, dtype=np.float64))
    return np.maximum(0.0, 1.0 - 2.0 * np.exp(-n_test * d * d / 2.0)) ** 2


def sign_error(df: pd.DataFrame, measure: str, gap: str, axes, *, n_test: int, min_weight: float = 0.5,
               min_ess: float = 12.0) -> dict:
    """Dziugaite et al. 2020's robust sign-error (``experiments/coupled_networks`` of
    nitarshan/robust-generalization-measures).

    An environment is a pair of settings (values of all ``axes``) that differ in exactly one axis; its
    samples are every pair of models (one from each setting, seeds crossed). A pair's sign error is
    ``(1 - sign(mu_1 - mu_2) sign(g_1 - g_2)) / 2`` and its weight ``(w - min_weight)_+`` with ``w`` the
    :func:`hoeffding_weight` for ``n_test`` test examples (pairs whose gaps differ by less than the test
    noise count for nothing). An environment's loss is the weighted mean; environments whose effective
    sample size ``(sum w)^2 / sum w^2`` is below ``min_ess`` are dropped.

    Returns ``{"mean", "max", "n_environments", "n_candidates", "per_axis": {axis: {"mean", "max", "n"}}}``
    (NaN where no environment is kept).
    """
    axes = _check_axes(df, axes)
    if not isinstance(n_test, (int, np.integer)) or n_test < 1:
        raise SingledirError(f"n_test must be the test-set size (an integer >= 1), got {n_test!r}")
    mu, g = _vec(df[measure], "measure"), _vec(df[gap], "gap")
    keys = [tuple(r) for r in df[axes].itertuples(index=False, name=None)]
    by_setting: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        by_setting.setdefault(k, []).append(i)
    settings = sorted(by_setting, key=lambda t: tuple(map(str, t)))
    losses: dict[str, list[float]] = {a: [] for a in axes}
    candidates = 0
    for s1, s2 in itertools.combinations(settings, 2):
        diff = [a for a, v1, v2 in zip(axes, s1, s2) if v1 != v2]
        if len(diff) != 1:
            continue
        candidates += 1
        i = np.array(by_setting[s1])[:, None]
        j = np.array(by_setting[s2])[None, :]
        w = hoeffding_weight(g[i] - g[j], int(n_test)) - min_weight
        w = np.where(w > 0, w, 0.0).ravel()
        if w.sum() <= 0:
            continue
        ess = w.sum() ** 2 / (w * w).sum()
        if ess < min_ess:
            continue
        err = ((1.0 - np.sign(mu[i] - mu[j]) * np.sign(g[i] - g[j])) / 2.0).ravel()
        losses[diff[0]].append(float((w * err).sum() / w.sum()))
    every = [x for v in losses.values() for x in v]
    nan = float("nan")
    return {
        "mean": float(np.mean(every)) if every else nan,
        "max": float(np.max(every)) if every else nan,
        "n_environments": len(every),
        "n_candidates": candidates,
        "per_axis": {
            a: {"mean": float(np.mean(v)) if v else nan, "max": float(np.max(v)) if v else nan, "n": len(v)}
            for a, v in losses.items()
        },
    }
