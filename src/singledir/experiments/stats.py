"""Verdict statistics: correlations and two-sample tests with p-values and bootstrap intervals, and the rules.

Every verdict in the report comes from one of the rules below, declared here before any result is seen:

- :func:`sign_verdict` -- a claim "X goes with Y in direction s": ``reproduced`` when the statistic has
  the claimed sign and ``p < ALPHA``; ``not reproduced`` when it has the opposite sign and ``p < ALPHA``;
  ``inconclusive`` otherwise (not significant, fewer than ``min_n`` observations, an undefined statistic,
  or a training target that was not reached).
- :func:`combine` -- a claim made of several parts: ``reproduced`` when every part is; ``not reproduced``
  when any part is; ``inconclusive`` otherwise.

All p-values are two-sided unless a function says otherwise. Bootstrap intervals are percentile
intervals over resampled observations (pairs for correlations) with a fixed seed, so they are recomputable.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

ALPHA = 0.05
N_BOOT = 2000
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)


def _f(x) -> float | None:
    """A float for JSON (None for NaN/inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def spearman(x, y, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Spearman's rho between paired ``x`` and ``y``, its p-value, and a bootstrap 95% interval.

    The p-value is scipy's (t approximation); for ``n <= 10`` it is the exact permutation p-value
    (all orderings for n <= 8, else 20000 random permutations with a fixed seed).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = len(x)
    out = {"test": "spearman", "n": n, "rho": None, "p": None, "ci_low": None, "ci_high": None}
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return out
    rho, p = stats.spearmanr(x, y)
    if n <= 10:
        p = _permutation_p(x, y, rho, seed)
        out["p_method"] = "exact permutation" if n <= 8 else "permutation (20000)"
    else:
        out["p_method"] = "t approximation"
    out.update(rho=_f(rho), p=_f(p))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    boots = _rowwise_pearson(stats.rankdata(x[idx], axis=1), stats.rankdata(y[idx], axis=1))
    boots = boots[np.isfinite(boots)]
    if len(boots) >= n_boot // 2:
        out["ci_low"], out["ci_high"] = (_f(v) for v in np.percentile(boots, [2.5, 97.5]))
    return out


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``a`` with the same row of ``b`` (NaN where a row is constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def _permutation_p(x, y, rho, seed) -> float:
    """Two-sided permutation p-value of Spearman's rho (exact over all orderings for n <= 8)."""
    import itertools

    rx, ry = stats.rankdata(x), stats.rankdata(y)
    n = len(x)
    if n <= 8:
        perms = np.array(list(itertools.permutations(range(n))))
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((20000, n)), axis=1)
    vals = _rowwise_pearson(np.broadcast_to(rx, perms.shape), ry[perms])
    return float(np.mean(np.abs(vals) >= abs(rho) - 1e-12))


def mann_whitney(a, b, *, alternative: str = "two-sided") -> dict:
    """Mann-Whitney U test of ``a`` vs ``b``; effect = rank-biserial correlation (> 0: a tends larger)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"test": f"mann-whitney ({alternative})", "n_a": len(a), "n_b": len(b), "u": None, "p": None,
           "effect": None, "median_a": _f(np.median(a)) if len(a) else None,
           "median_b": _f(np.median(b)) if len(b) else None,
           "mean_a": _f(a.mean()) if len(a) else None, "mean_b": _f(b.mean()) if len(b) else None}
    if len(a) < 2 or len(b) < 2:
        return out
    u, p = stats.mannwhitneyu(a, b, alternative=alternative)
    out.update(u=_f(u), p=_f(p), effect=_f(2 * u / (len(a) * len(b)) - 1))
    return out


def wilcoxon_paired(a, b) -> dict:
    """Wilcoxon signed-rank test of paired ``a - b`` (two-sided); effect = mean difference."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    out = {"test": "wilcoxon signed-rank", "n": len(d), "statistic": None, "p": None,
           "mean_diff": _f(d.mean()) if len(d) else None}
    if len(d) < 2 or np.all(d == 0):
        return out
    w, p = stats.wilcoxon(d)
    out.update(statistic=_f(w), p=_f(p))
    return out


def bootstrap_mean_ci(values, *, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap 95% interval of the mean."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None, None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return _f(lo), _f(hi)


def sign_verdict(stat, p, expected_sign: int, *, n: int | None = None, min_n: int = 3,
                 target_reached: bool = True, alpha: float = ALPHA) -> tuple[str, str]:
    """The pre-declared sign + significance rule (see the module docstring) -> ``(verdict, reason)``."""
    want = "positive" if expected_sign > 0 else "negative"
    if not target_reached:
        return INCONCLUSIVE, "some networks did not reach their training target"
    if n is not None and n < min_n:
        return INCONCLUSIVE, f"too few observations (n={n} < {min_n})"
    if stat is None or p is None or not math.isfinite(stat) or not math.isfinite(p):
        return INCONCLUSIVE, "statistic undefined (constant values?)"
    if p >= alpha:
        return INCONCLUSIVE, f"not significant (p={p:.3g} >= {alpha})"
    if np.sign(stat) == np.sign(expected_sign):
        return REPRODUCED, f"{want} and significant (p={p:.3g} < {alpha})"
    return NOT_REPRODUCED, f"significant in the opposite direction to the claimed {want} one (p={p:.3g})"


def combine(parts: dict[str, str]) -> tuple[str, str]:
    """Combine part verdicts ``{name: verdict}``: all reproduced -> reproduced; any not -> not; else inconclusive."""
    vals = list(parts.values())
    if vals and all(v == REPRODUCED for v in vals):
        return REPRODUCED, "every part reproduced"
    bad = [k for k, v in parts.items() if v == NOT_REPRODUCED]
    if bad:
        return NOT_REPRODUCED, f"not reproduced: {', '.join(bad)}"
    unsure = [k for k, v in parts.items() if v != REPRODUCED]
    return INCONCLUSIVE, f"inconclusive: {', '.join(unsure)}"


def fmt_p(p) -> str:
    if p is None:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def fmt_corr(c: dict, name: str = "") -> str:
    """One-line summary of a :func:`spearman` result, e.g. ``Spearman rho(AUC, test acc) = 0.52, p = ...``."""
    if c.get("rho") is None:
        return f"Spearman rho{name} undefined (n={c['n']})"
    ci = ""
    if c.get("ci_low") is not None:
        ci = f", 95% CI [{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
    return f"Spearman rho{name} = {c['rho']:.2f}, p = {fmt_p(c['p'])}, n = {c['n']}{ci}"
