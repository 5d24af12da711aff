"""Every number the project reports: curve areas, correlations, two-sample tests and bootstrap intervals.

One home for the statistics of ``singledir analyze``, ``singledir reproduce`` and the verdict rules, so
the same quantity is computed once, under one name, with one rule.

Offers:

- Areas under curves:

  - :func:`trapezoid_auc` -- trapezoid-rule area under ``y`` over ``x``.
  - :func:`normalized_auc` -- an area divided by the unablated (base) accuracy.
  - :func:`ablation_auc` -- area under accuracy vs fraction of units ablated, raw and normalized.
  - :func:`noise_auc` -- area under accuracy vs log10(noise scale), raw.
  - :func:`noise_auc_range_normalized` -- that area divided by the log10 range of the scales: the mean
    accuracy over log-spaced scales (1 = untouched by noise at an accuracy of 1).
  - :func:`noise_auc_base_normalized` -- divided by the log10 range *and* the noise-free accuracy
    (1 = no accuracy lost at any scale).

- Correlation: :func:`spearman` -- Spearman's rho, its two-sided p-value under :data:`P_VALUE_RULE`, and
  a percentile bootstrap interval over resampled pairs; :func:`rowwise_spearman` for many at once.
- Two-sample tests: :func:`mann_whitney` (independent samples, rank-biserial effect) and
  :func:`wilcoxon_paired` (paired samples, mean difference).
- Means: :func:`bootstrap_mean_ci` (percentile interval of a mean) and :func:`mean_std_ci` (mean, std and
  that interval, as the AUC tables report them).
- Power and decisive nulls (:mod:`singledir.stats.power`, used by the claim rules): Fisher-z intervals,
  partial Spearman, equivalence / minimum-effect bounds, the smallest effect detected at 80% power and the
  n that would decide an observed effect.

Conventions (one name per concept): ``n_boot`` bootstrap resamples, ``confidence`` the central coverage
of an interval (0.95), ``seed`` the resampling seed (same inputs + seed -> same interval). An undefined
number is ``NaN`` (never ``None``); :func:`singledir.io.jsonable` writes it as ``null``. Result dicts
use the keys ``n`` (``n_a``, ``n_b`` for two samples), ``p``, the test's own statistic, ``ci_low`` /
``ci_high`` where there is an interval, always with ``ci_method`` (how it was computed) and ``ci_note``
(``""``, or why the interval is degenerate -- zero width, or a Fisher-z interval at rho = +-1 -- and so
printed as undefined; :func:`interval_note`), and ``note`` (``""`` when defined, else why not).

Example::

    from singledir import stats
    c = stats.spearman([0.0, 0.2, 0.4, 0.6], [0.9, 0.7, 0.5, 0.2])
    c["rho"], c["p"], c["p_method"], (c["ci_low"], c["ci_high"])
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from scipy import stats as _st

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "EXACT_MAX_N",
    "N_BOOT",
    "N_PERMUTATIONS",
    "PERMUTATION_MAX_N",
    "P_VALUE_RULE",
    "ablation_auc",
    "bootstrap_mean_ci",
    "boot_method",
    "interval_note",
    "mann_whitney",
    "mean_std_ci",
    "noise_auc",
    "noise_auc_base_normalized",
    "noise_auc_range_normalized",
    "normalized_auc",
    "rowwise_spearman",
    "spearman",
    "spearman_p_value",
    "trapezoid_auc",
    "wilcoxon_paired",
]

#: Significance level of the verdict rules.
ALPHA = 0.05
#: Default number of bootstrap resamples.
N_BOOT = 2000
#: Default central coverage of a bootstrap interval.
CONFIDENCE = 0.95
#: Up to this many pairs Spearman's p-value is a permutation p-value ...
PERMUTATION_MAX_N = 10
#: ... exact over all n! orderings up to this many pairs, else over N_PERMUTATIONS seeded random ones.
EXACT_MAX_N = 8
N_PERMUTATIONS = 20000
#: The one p-value rule of :func:`spearman`, as the reports state it.
P_VALUE_RULE = (
    f"two-sided; n <= {EXACT_MAX_N}: exact permutation p over all orderings; n <= {PERMUTATION_MAX_N}: "
    f"permutation p over {N_PERMUTATIONS} seeded random orderings; larger n: scipy.stats.spearmanr "
    f"(t approximation)"
)

_NAN = math.nan
# NumPy 2 renamed trapz to trapezoid; the declared floor (numpy 1.24) has only trapz.
_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")


def _num(x) -> float:
    """A Python float (NaN for None or a non-finite value)."""
    if x is None:
        return _NAN
    x = float(x)
    return x if math.isfinite(x) else _NAN


def _finite(*arrays) -> list[np.ndarray]:
    """The arrays as float, keeping only positions finite in every one of them."""
    arrs = [np.asarray(a, dtype=float).ravel() for a in arrays]
    ok = np.ones(len(arrs[0]), dtype=bool)
    for a in arrs:
        ok &= np.isfinite(a)
    return [a[ok] for a in arrs]


def boot_method(n_boot: int = N_BOOT, what: str = "") -> str:
    """The ``ci_method`` of a percentile bootstrap interval: ``percentile bootstrap, 2000 resamples``."""
    return f"percentile bootstrap, {n_boot} resamples" + (f" {what}" if what else "")


def interval_note(ci_low, ci_high, *, effect=None) -> str:
    """Why the interval ``[ci_low, ci_high]`` is degenerate (to be printed as undefined), or ``""``.

    Degenerate: zero width (every value or every resample the same, e.g. a rank-biserial of 1 at 4 vs 4),
    or ``effect`` (a correlation) at +-1, where a Fisher-z interval collapses onto the bound. An undefined
    interval (NaN / None) gets ``""``: its result's ``note`` says why.
    """
    lo, hi = _num(ci_low), _num(ci_high)
    if math.isnan(lo) or math.isnan(hi):
        return ""
    if effect is not None and math.isfinite(_num(effect)) and abs(float(effect)) >= 1 - 1e-9:
        return f"the estimate is {float(effect):+.0f}, where the interval collapses onto the bound"
    if abs(hi - lo) <= 1e-12 * max(1.0, abs(lo)):
        return "zero width: every value (or every resample) gives the same estimate"
    return ""


# ------------------------------------------------------------------------------------------- areas
def trapezoid_auc(y, x) -> float:
    """Trapezoid-rule area under ``y`` over ``x`` (``x`` ascending; 0 for fewer than two points).

    >>> trapezoid_auc([0.8, 0.6, 0.1], [0.0, 0.5, 1.0])
    0.525
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return 0.0
    return float(_trapezoid(y, x))


def normalized_auc(auc, base_accuracy) -> float:
    """``auc / base_accuracy`` (the unablated or noise-free accuracy); NaN when the base is not > 0."""
    base = _num(base_accuracy)
    return float(auc) / base if base > 0 else _NAN


def ablation_auc(fraction, accuracy, base_accuracy=None) -> dict:
    """Area under accuracy vs fraction of units ablated (trapezoid over ``fraction`` in [0, 1]).

    ``base_accuracy`` defaults to the accuracy at fraction 0 (NaN if the curve does not start there).
    Returns ``{"auc", "base_accuracy", "normalized_auc"}`` (normalized = auc / base accuracy).
    """
    f = np.asarray(fraction, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    order = np.argsort(f, kind="stable")
    f, a = f[order], a[order]
    auc = trapezoid_auc(a, f)
    if base_accuracy is None:
        base_accuracy = float(a[0]) if len(f) and f[0] == 0 else _NAN
    base = _num(base_accuracy)
    return {"auc": auc, "base_accuracy": base, "normalized_auc": normalized_auc(auc, base)}


def _log_scales(scales, accuracy) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scales, dtype=float)
    a = np.asarray(accuracy, dtype=float)
    order = np.argsort(s, kind="stable")
    return np.log10(s[order]), a[order]


def noise_auc(scales, accuracy) -> float:
    """Raw area under accuracy vs log10(scale) (trapezoid; scales > 0, any order)."""
    x, a = _log_scales(scales, accuracy)
    return trapezoid_auc(a, x)


def noise_auc_range_normalized(scales, accuracy) -> float:
    """:func:`noise_auc` divided by the log10 range of the scales: the mean accuracy over log-spaced scales.

    Not divided by the noise-free accuracy. A single scale gives its accuracy.
    """
    x, a = _log_scales(scales, accuracy)
    if len(x) < 2 or x[-1] == x[0]:
        return float(a.mean()) if len(a) else _NAN
    return trapezoid_auc(a, x) / float(x[-1] - x[0])


def noise_auc_base_normalized(scales, accuracy, base_accuracy) -> float:
    """:func:`noise_auc` divided by the log10 range and by the noise-free ``base_accuracy``.

    1 means no accuracy is lost at any scale. NaN when the base accuracy is not > 0 or there is only
    one distinct scale.
    """
    x, a = _log_scales(scales, accuracy)
    span = float(x[-1] - x[0]) if len(x) else 0.0
    if span <= 0:
        return _NAN
    return normalized_auc(trapezoid_auc(a, x) / span, base_accuracy)


# ------------------------------------------------------------------------------------------- correlation
def rowwise_spearman(xb, yb) -> np.ndarray:
    """Spearman's rho of each row pair of two ``(B, n)`` arrays (average ranks for ties); NaN if constant."""
    rx = _st.rankdata(np.asarray(xb, dtype=float), axis=1)
    ry = _st.rankdata(np.asarray(yb, dtype=float), axis=1)
    return _rowwise_pearson(rx, ry)


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_p_value(x, y, *, seed: int = 0) -> tuple[float, float, str]:
    """``(rho, p, p_method)`` of Spearman's rho under :data:`P_VALUE_RULE` (finite, non-constant input).

    The permutation p-value is the share of orderings of ``y`` (against fixed ``x``) whose ``|rho|`` is at
    least the observed one (a 1e-12 tolerance counts ties of the statistic), so it is never 0. Written by
    hand rather than with ``scipy.stats.permutation_test``: that one's exact mode needs ``n_resamples >=
    n!`` and its random mode draws differently, and we keep the documented seeded rule.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    res = _st.spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    n = len(x)
    if n > PERMUTATION_MAX_N:
        return rho, p, "t approximation"
    rx, ry = _st.rankdata(x), _st.rankdata(y)
    if n <= EXACT_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))))
        method = "exact permutation"
    else:
        perms = np.argsort(np.random.default_rng(seed).random((N_PERMUTATIONS, n)), axis=1)
        method = f"permutation ({N_PERMUTATIONS})"
    vals = _rowwise_pearson(np.broadcast_to(rx, perms.shape), ry[perms])
    return rho, float(np.mean(np.abs(vals) >= abs(rho) - 1e-12)), method


def spearman(x, y, *, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0,
             resamples=None, names=("x", "y")) -> dict:
    """Spearman's rho between paired ``x`` and ``y``, its p-value and a percentile bootstrap interval.

    Pairs where either value is NaN/inf are left out. The p-value follows :data:`P_VALUE_RULE`. The
    interval is the central ``confidence`` percentile interval of rho over ``n_boot`` resamples of the
    pairs (indices from ``numpy.random.default_rng(seed)``), or over ``resamples`` -- a ``(B, n)`` index
    array, to share the same resamples between several correlations of the same units; resamples where
    rho is undefined (constant) are skipped, and if more than half are, the interval is NaN. ``n_boot=0``:
    no interval.

    Returns ``{"test": "spearman", "n", "rho", "p", "p_method", "ci_low", "ci_high", "note"}``; with fewer
    than 3 pairs or a constant column, rho, p and the interval are NaN and ``note`` says why (``names``
    name the columns in it).
    """
    x, y = _finite(x, y)
    n = len(x)
    out = {"test": "spearman", "n": n, "rho": _NAN, "p": _NAN, "p_method": "", "ci_low": _NAN,
           "ci_high": _NAN, "ci_method": boot_method(len(resamples) if resamples is not None else n_boot, "of pairs"),
           "ci_note": "", "note": ""}
    if n < 3:
        out["note"] = f"fewer than 3 pairs ({n})"
        return out
    constant = [nm for nm, v in zip(names, (x, y)) if np.all(v == v[0])]
    if constant:
        out["note"] = f"constant {' and '.join(constant)}"
        return out
    rho, p, method = spearman_p_value(x, y, seed=seed)
    out.update(rho=rho, p=p, p_method=method)
    if resamples is None and n_boot:
        resamples = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    if resamples is not None and len(resamples):
        rhos = rowwise_spearman(x[resamples], y[resamples])
        ok = rhos[np.isfinite(rhos)]
        if 2 * len(ok) >= len(rhos):
            tail = (1.0 - confidence) / 2.0
            out["ci_low"], out["ci_high"] = (float(v) for v in np.quantile(ok, [tail, 1.0 - tail]))
            out["ci_note"] = interval_note(out["ci_low"], out["ci_high"])
    return out


# ------------------------------------------------------------------------------------------- two samples
def mann_whitney(a, b, *, alternative: str = "two-sided") -> dict:
    """Mann-Whitney U test of ``a`` vs ``b`` (scipy); ``effect`` = rank-biserial correlation (> 0: a larger).

    Returns ``{"test", "n_a", "n_b", "u", "p", "effect", "median_a", "median_b", "mean_a", "mean_b",
    "note"}``; with fewer than 2 finite values in a sample, u, p and effect are NaN.
    """
    (a,), (b,) = _finite(a), _finite(b)
    out = {"test": f"mann-whitney ({alternative})", "n_a": len(a), "n_b": len(b), "u": _NAN, "p": _NAN,
           "effect": _NAN, "median_a": _num(np.median(a)) if len(a) else _NAN,
           "median_b": _num(np.median(b)) if len(b) else _NAN,
           "mean_a": _num(a.mean()) if len(a) else _NAN, "mean_b": _num(b.mean()) if len(b) else _NAN, "note": ""}
    if len(a) < 2 or len(b) < 2:
        out["note"] = f"fewer than 2 values in a sample ({len(a)}, {len(b)})"
        return out
    u, p = _st.mannwhitneyu(a, b, alternative=alternative)
    out.update(u=_num(u), p=_num(p), effect=_num(2 * u / (len(a) * len(b)) - 1))
    return out


def wilcoxon_paired(a, b) -> dict:
    """Wilcoxon signed-rank test of the paired differences ``a - b`` (scipy, two-sided).

    Returns ``{"test", "n", "statistic", "p", "mean_diff", "note"}``; with fewer than 2 finite
    differences or all of them 0, statistic and p are NaN.
    """
    (d,) = _finite(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))
    out = {"test": "wilcoxon signed-rank", "n": len(d), "statistic": _NAN, "p": _NAN,
           "mean_diff": _num(d.mean()) if len(d) else _NAN, "note": ""}
    if len(d) < 2 or np.all(d == 0):
        out["note"] = "fewer than 2 differences" if len(d) < 2 else "all differences are 0"
        return out
    w, p = _st.wilcoxon(d)
    out.update(statistic=_num(w), p=_num(p))
    return out


# ------------------------------------------------------------------------------------------- means
def bootstrap_mean_ci(values, *, n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean (``scipy.stats.bootstrap``, seeded).

    NaN values are left out; fewer than 2 values give ``(nan, nan)``; identical values give that value.
    """
    (v,) = _finite(values)
    if len(v) < 2:
        return _NAN, _NAN
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about degenerate resamples of tiny samples
        res = _st.bootstrap((v,), np.mean, confidence_level=confidence, n_resamples=n_boot,
                            method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def mean_std_ci(values, *, n_boot: int = N_BOOT, confidence: float = CONFIDENCE, seed: int = 0) -> dict:
    """``{"mean", "std", "ci_low", "ci_high", "ci_method", "ci_note", "n", "note"}``: std with ddof=1 and
    :func:`bootstrap_mean_ci`, all over the finite values only (one rule for the three numbers); ``n`` is
    how many were finite and ``note`` says how many were left out (a NaN input is flagged there, never
    mixed into one number and dropped from another). No finite value: every number NaN."""
    allv = np.asarray(values, dtype=float).ravel()
    (v,) = _finite(allv)
    mean = float(v.mean()) if len(v) else _NAN
    std = float(v.std(ddof=1)) if len(v) > 1 else _NAN
    lo, hi = bootstrap_mean_ci(v, n_boot=n_boot, confidence=confidence, seed=seed)
    dropped = len(allv) - len(v)
    return {"mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "ci_method": boot_method(n_boot, "of the values"),
            "ci_note": interval_note(lo, hi), "n": len(v),
            "note": f"{dropped} of {len(allv)} values undefined (NaN or inf), left out" if dropped else ""}
