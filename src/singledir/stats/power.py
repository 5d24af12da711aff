"""Power and decisive-null statistics for the claim rules: intervals, equivalence bounds, detectable effects.

Every claim's verdict can end in one of three ways; this module holds the statistics that make a null
result decisive (an equivalence / minimum-effect bound) and that say how much a test could detect:

- :func:`spearman_ci` -- Fisher-z interval of a Spearman rho with the Bonett-Wright (2000) variance
  ``(1 + rho^2 / 2) / (n - 3 - k)`` (``k`` controlled variables for a partial correlation).
- :func:`partial_spearman` -- Spearman rho of ``x`` and ``y`` controlling for ``z`` (Pearson partial
  correlation of the ranks), its p-value (t with ``n - 3`` df) and interval.
- :func:`spearman_n_for`, :func:`spearman_mde` -- networks needed to detect a rho at 80% power
  (two-sided alpha 0.05), and the smallest rho detected with ``n`` (Fisher-z approximation);
  :func:`exclusion_n_for`, :func:`equivalence_n_for`, :func:`directional_n_for` -- the n at which a
  bound is excluded / an equivalence or a directional rule decides; :func:`spearman_power` -- those numbers for a part of the report (in words:
  :func:`singledir.reporting.formatting.fmt_power` and ``fmt_mann_whitney``).
- :func:`mann_whitney_mde`, :func:`mann_whitney_n_for` -- the same for a Mann-Whitney U test, as a
  rank-biserial correlation, by Noether's (1987) normal approximation.
- :func:`paired_mde`, :func:`paired_n_for` -- the same for a paired test across seeds, as a
  standardized mean difference ``d_z`` (noncentral t; Wilcoxon by its 3/pi asymptotic relative
  efficiency).
- :func:`paired_ci` -- t interval of a paired mean difference.
- :func:`isotonic_trend` (:func:`isotonic_e2`) -- a monotone-trend test that a plateau does not weaken: variance explained by
  the isotonic (monotone) fit of ``y`` on ``x``, permutation p-value.
- :func:`pooled_rank_correlation` -- a rank correlation within groups (layers), pooled: ranks are
  standardized within each group, then correlated across all rows (group offsets removed).

The verdict rules that use these numbers live in :mod:`singledir.experiments.verdicts` (one home).

Usage::

    >>> from singledir.stats import power
    >>> power.spearman_n_for(0.3, bonett_wright=False)   # Cohen's table: 85
    85
    >>> round(power.spearman_mde(20), 2)      # n = 20 detects |rho| >= 0.63
    0.63

All functions are plain closed-form approximations (scipy for the distributions and root finding);
they are written here because no maintained library ships Spearman power with the Bonett-Wright
variance or Noether's Mann-Whitney formula as a function.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize
from scipy import stats as st

ALPHA = 0.05
POWER = 0.80
FISHER_Z = "Fisher z, Bonett-Wright variance"
_NAN = math.nan  # an undefined statistic (as in singledir.stats); None only for a count or bound that does not exist  # the ci_method of every Spearman interval made here


def _z(p: float) -> float:
    return float(st.norm.ppf(p))


def _ok(*vals) -> bool:
    return all(v is not None and math.isfinite(float(v)) for v in vals)


def _interval_note(lo, hi, *, effect=None) -> str:
    from singledir.stats import interval_note

    return interval_note(lo, hi, effect=effect)


# ---------------------------------------------------------------------------- Spearman
def spearman_se(rho: float, n: int, k: int = 0) -> float:
    """Standard error of atanh(rho) for a Spearman rho (Bonett-Wright); ``k`` controlled variables."""
    df = n - 3 - k
    if df <= 0:
        return float("inf")
    return math.sqrt((1.0 + rho * rho / 2.0) / df)


def spearman_ci(rho, n: int, *, k: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Fisher-z interval of a Spearman rho (Bonett-Wright variance); ``(nan, nan)`` when undefined."""
    if not _ok(rho) or n - 3 - k <= 0:
        return _NAN, _NAN
    r = float(np.clip(rho, -0.999999, 0.999999))
    half = _z(0.5 + level / 2) * spearman_se(r, n, k)
    z = math.atanh(r)
    return math.tanh(z - half), math.tanh(z + half)


def spearman_n_for(rho: float, *, power: float = POWER, alpha: float = ALPHA, bonett_wright: bool = True,
                   k: int = 0) -> int:
    """Smallest n whose two-sided Fisher-z test of rho = 0 detects ``rho`` with ``power``.

    ``bonett_wright=False`` gives the Pearson formula ``n = ((z_a + z_b) / atanh(rho))^2 + 3`` (Cohen's
    table: 85 for rho = 0.3); the default inflates the variance by ``1 + rho^2 / 2`` for Spearman.
    """
    r = abs(float(rho))
    if not 0 < r < 1:
        raise ValueError(f"rho must be in (0, 1) in absolute value, got {rho!r}")
    c = (_z(1 - alpha / 2) + _z(power)) / math.atanh(r)
    infl = 1.0 + r * r / 2.0 if bonett_wright else 1.0
    return int(math.ceil(c * c * infl + 3 + k - 1e-9))


def spearman_mde(n: int, *, power: float = POWER, alpha: float = ALPHA, k: int = 0) -> float | None:
    """Smallest |rho| the two-sided test detects with ``power`` at this ``n`` (None when n is too small)."""
    if n - 3 - k <= 0:
        return None
    c = _z(1 - alpha / 2) + _z(power)

    def gap(r):
        return math.atanh(r) - c * spearman_se(r, n, k)

    if gap(0.999999) < 0:
        return None
    return float(optimize.brentq(gap, 1e-9, 0.999999))


def exclusion_n_for(bound: float, rho: float = 0.0, *, power: float = POWER, alpha: float = ALPHA,
                    k: int = 0) -> int | None:
    """n at which the 95% interval around a true ``rho`` ends below ``bound`` (upper end) with ``power``.

    The one-sided minimum-effect question behind a decisive null: how many observations make "the effect
    in the claimed direction is smaller than ``bound``" decisive when it truly is ``rho`` (signed: a rho
    the other way is further from the bound). None when ``rho >= bound`` (never decisive).
    """
    if rho >= bound:
        return None
    c = (_z(1 - alpha / 2) + _z(power)) / (math.atanh(bound) - math.atanh(max(rho, -0.999999)))
    return int(math.ceil(c * c * (1 + rho * rho / 2) + 3 + k - 1e-9))


def equivalence_n_for(bound: float, rho: float = 0.0, *, power: float = POWER, alpha: float = ALPHA,
                      k: int = 0) -> int | None:
    """n at which a 95% interval around a true ``rho`` lies inside ``(-bound, bound)`` with ``power``.

    Normal approximation of atanh(rho hat): both interval ends must be inside, so the probability is
    ``Phi((A - R) / se - z) + Phi((A + R) / se - z) - 1`` with ``A = atanh(bound)``, ``R = atanh(|rho|)``,
    ``z = z_{1 - alpha / 2}``. For ``|rho| > bound`` it is the n at which the interval lies entirely
    outside. None when ``|rho| == bound``.
    """
    r = abs(float(rho))
    if r == bound:
        return None
    if r > bound:
        c = (_z(1 - alpha / 2) + _z(power)) / (math.atanh(min(r, 0.999999)) - math.atanh(bound))
        return int(math.ceil(c * c * (1 + r * r / 2) + 3 + k - 1e-9))
    a, big_r, zc = math.atanh(bound), math.atanh(r), _z(1 - alpha / 2)

    def prob(n: float) -> float:
        se = math.sqrt((1 + r * r / 2) / (n - 3 - k))
        return float(st.norm.cdf((a - big_r) / se - zc) + st.norm.cdf((a + big_r) / se - zc) - 1)

    lo = 4.0 + k
    hi = lo + 10.0
    while prob(hi) < power:
        hi *= 2
    return int(math.ceil(optimize.brentq(lambda n: prob(n) - power, lo, hi) - 1e-9))


def directional_n_for(rho: float, bound: float, *, power: float = POWER, alpha: float = ALPHA,
                      k: int = 0) -> int | None:
    """n at which the directional rule decides with ``power`` when the true effect (claimed direction) is ``rho``.

    The smaller of: n to detect ``rho > 0`` as significant, and n to exclude ``bound`` (when ``rho < bound``).
    """
    cands = []
    if 0 < rho < 1:
        cands.append(spearman_n_for(rho, power=power, alpha=alpha, k=k))
    if rho < bound:
        cands.append(exclusion_n_for(bound, rho, power=power, alpha=alpha, k=k))
    cands = [c for c in cands if c is not None]
    return min(cands) if cands else None


def partial_spearman(x, y, z) -> dict:
    """Spearman rho of ``x`` and ``y`` controlling for ``z``: the partial Pearson correlation of their ranks.

    p-value: t test with ``n - 3`` degrees of freedom; 95% interval: Fisher z with the Bonett-Wright
    variance and one controlled variable. Written by hand (three pairwise rank correlations) because
    scipy has no partial correlation.
    """
    x, y, z = (np.asarray(v, dtype=float) for v in (x, y, z))
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    x, y, z = x[ok], y[ok], z[ok]
    n = len(x)
    out = {"test": "partial spearman", "n": n, "rho": _NAN, "p": _NAN, "ci_low": _NAN, "ci_high": _NAN,
           "ci_method": FISHER_Z + ", one controlled variable", "ci_note": ""}
    if n < 5 or min(np.ptp(x), np.ptp(y)) == 0:
        return out
    if np.ptp(z) == 0:  # nothing to control for: the plain rank correlation
        r = float(st.spearmanr(x, y)[0])
    else:
        rxy, rxz, ryz = (float(st.spearmanr(a, b)[0]) for a, b in ((x, y), (x, z), (y, z)))
        den = math.sqrt(max((1 - rxz ** 2) * (1 - ryz ** 2), 0.0))
        if den == 0:
            return out
        r = (rxy - rxz * ryz) / den
    r = float(np.clip(r, -1.0, 1.0))
    df = n - 3
    t = r * math.sqrt(df / max(1 - r * r, 1e-300))
    p = float(2 * st.t.sf(abs(t), df))
    lo, hi = spearman_ci(r, n, k=1)
    out.update(rho=r, p=p, ci_low=lo, ci_high=hi, ci_note=_interval_note(lo, hi, effect=r))
    return out


def isotonic_trend(x, y, sign: int = -1, *, n_perm: int = 20000, seed: int = 0) -> dict:
    """Is ``y`` monotone in ``x`` in direction ``sign``? E-bar-square (Bartholomew) with a permutation p-value.

    Statistic: the share of the variance of ``y`` explained by its least-squares monotone fit on ``x``
    (non-decreasing for ``sign > 0``, non-increasing for ``sign < 0``; tied ``x`` share one fitted value).
    A step, a plateau or any monotone shape scores as high as a straight line, unlike a rank correlation
    that counts every out-of-order pair inside a plateau. p: share of ``n_perm`` random reassignments of
    ``y`` to ``x`` (fixed seed) whose statistic is at least as large (one-sided by construction).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = {"test": f"isotonic trend ({'increasing' if sign > 0 else 'decreasing'})", "n": len(x), "e2": _NAN, "p": _NAN}
    if len(x) < 3 or np.ptp(y) == 0 or np.ptp(x) == 0:
        return out
    levels, inv = np.unique(x, return_inverse=True)
    counts = np.bincount(inv).astype(float)
    obs = isotonic_e2(y, inv, sign)
    rng = np.random.default_rng(seed)
    perm = y[np.argsort(rng.random((n_perm, len(y))), axis=1)]
    null = isotonic_e2(perm, inv, sign)
    out.update(e2=float(obs), p=float((1 + np.sum(null >= obs - 1e-12)) / (n_perm + 1)), n_perm=n_perm,
               levels=len(counts))
    return out


def isotonic_e2(y, inv, sign: int = -1) -> np.ndarray:
    """Share of the variance of each row of ``y`` explained by its monotone fit on the levels ``inv``.

    ``inv[i]`` is the (sorted) level of observation ``i``. Vectorized over rows with the max-min formula
    of isotonic regression, ``fit_i = max_{j <= i} min_{k >= i} mean(levels j..k)`` (non-decreasing; the
    non-increasing fit is that of ``-y``), which is exact and cheap for the few levels a claim has; it
    equals scipy's ``isotonic_regression`` of the level means weighted by their counts (tested).
    """
    y = np.asarray(y, dtype=float)
    squeeze = y.ndim == 1
    y = np.atleast_2d(y)
    v = y if sign > 0 else -y
    n_lv = int(inv.max()) + 1
    onehot = np.zeros((len(inv), n_lv))
    onehot[np.arange(len(inv)), inv] = 1.0
    w = onehot.sum(axis=0)
    cs = np.concatenate([np.zeros((len(v), 1)), np.cumsum(v @ onehot, axis=1)], axis=1)
    cw = np.concatenate([[0.0], np.cumsum(w)])
    fit = np.empty((len(v), n_lv))
    for i in range(n_lv):
        best = None
        for j in range(i + 1):
            worst = None
            for k in range(i, n_lv):
                avg = (cs[:, k + 1] - cs[:, j]) / (cw[k + 1] - cw[j])
                worst = avg if worst is None else np.minimum(worst, avg)
            best = worst if best is None else np.maximum(best, worst)
        fit[:, i] = best
    mean = v.mean(axis=1, keepdims=True)
    ss = ((v - mean) ** 2).sum(axis=1)
    explained = (w * (fit - mean) ** 2).sum(axis=1)
    e2 = np.where(ss > 0, explained / np.where(ss > 0, ss, 1.0), 0.0)
    return e2[0] if squeeze else e2


def pooled_rank_correlation(x, y, groups) -> dict:
    """Rank correlation of ``x`` and ``y`` within ``groups`` (e.g. layers), pooled over the groups.

    Within each group both variables are ranked (midranks for ties) and the ranks standardized (mean 0,
    sd 1); the correlation of the standardized ranks over all rows is the pooled rho. It never credits a
    difference between groups (a layer with higher selectivity and higher importance). Interval: Fisher z
    with the Bonett-Wright variance and ``groups - 1`` degrees of freedom spent on the group means; p from
    the same normal approximation. Groups with fewer than 3 rows or a constant variable are left out.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    g = np.asarray(groups)
    ok = np.isfinite(x) & np.isfinite(y)
    zx, zy, used = [], [], 0
    for key in dict.fromkeys(g[ok].tolist()):
        m = ok & (g == key)
        if m.sum() < 3:
            continue
        rx, ry = st.rankdata(x[m]), st.rankdata(y[m])
        if np.ptp(rx) == 0 or np.ptp(ry) == 0:
            continue
        zx.append((rx - rx.mean()) / rx.std())
        zy.append((ry - ry.mean()) / ry.std())
        used += 1
    n = int(sum(len(v) for v in zx))
    out = {"test": "pooled within-group Spearman", "n": n, "groups": used, "rho": _NAN, "p": _NAN,
           "ci_low": _NAN, "ci_high": _NAN, "ci_method": FISHER_Z + ", one df per group mean", "ci_note": ""}
    if used == 0 or n - 3 - (used - 1) <= 0:
        return out
    a, b = np.concatenate(zx), np.concatenate(zy)
    r = float(np.clip(np.mean(a * b), -1, 1))
    k = used - 1
    se = spearman_se(r, n, k)
    p = float(2 * st.norm.sf(abs(math.atanh(np.clip(r, -0.999999, 0.999999))) / se))
    lo, hi = spearman_ci(r, n, k=k)
    out.update(rho=r, p=p, ci_low=lo, ci_high=hi, k=k, ci_note=_interval_note(lo, hi, effect=r))
    return out


# ---------------------------------------------------------------------------- Mann-Whitney
def mann_whitney_mde(n_a: int, n_b: int, *, power: float = POWER, alpha: float = ALPHA) -> float | None:
    """Smallest |rank-biserial r| = |2 P(A > B) - 1| a two-sided Mann-Whitney test detects (Noether 1987).

    Noether: ``N = (z_a + z_b)^2 / (12 c (1 - c) (P - 1/2)^2)`` with ``c = n_a / N``; solved for ``P``.
    Capped at 1 (None when even a perfect separation is not enough at this size).
    """
    if n_a < 1 or n_b < 1:
        return None
    big_n = n_a + n_b
    c = n_a / big_n
    r = 2 * (_z(1 - alpha / 2) + _z(power)) / math.sqrt(12 * c * (1 - c) * big_n)
    return float(r) if r <= 1 else None


def mann_whitney_n_for(r: float, *, power: float = POWER, alpha: float = ALPHA) -> int:
    """Networks per group (equal groups) for a two-sided Mann-Whitney test to detect rank-biserial ``r``."""
    r = abs(float(r))
    if not 0 < r <= 1:
        raise ValueError(f"rank-biserial r must be in (0, 1], got {r!r}")
    big_n = (_z(1 - alpha / 2) + _z(power)) ** 2 / (12 * 0.25 * (r / 2) ** 2)
    return int(math.ceil(big_n / 2 - 1e-9))


def rank_biserial_ci(a, b, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the rank-biserial correlation ``2 P(A > B) - 1`` (groups resampled
    separately, fixed seed). With very small groups it is coarse; it is shown, and no rule depends on it."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) < 2 or len(b) < 2:
        return _NAN, _NAN
    rng = np.random.default_rng(seed)
    ra = a[rng.integers(0, len(a), (n_boot, len(a)))]
    rb = b[rng.integers(0, len(b), (n_boot, len(b)))]
    gt = (ra[:, :, None] > rb[:, None, :]).mean(axis=(1, 2))
    eq = (ra[:, :, None] == rb[:, None, :]).mean(axis=(1, 2))
    r = 2 * (gt + eq / 2) - 1
    lo, hi = np.percentile(r, [50 - level * 50, 50 + level * 50])
    return float(lo), float(hi)


def mann_whitney_with_power(a, b) -> dict:
    """:func:`singledir.stats.mann_whitney` plus the rank-biserial interval, the smallest
    possible p, the rank-biserial detected at 80% power and (when an effect is seen) the n per group that
    would detect it."""
    from singledir import stats

    r = stats.mann_whitney(a, b)
    r["ci_low"], r["ci_high"] = rank_biserial_ci(a, b)
    r["ci_method"] = "percentile bootstrap, 2000 resamples of each group (rank-biserial)"
    r["ci_note"] = _interval_note(r["ci_low"], r["ci_high"])
    r["min_p"] = mann_whitney_min_p(r["n_a"], r["n_b"]) if r["n_a"] and r["n_b"] else None
    r["mde_80_rank_biserial"] = mann_whitney_mde(r["n_a"], r["n_b"])
    if _ok(r.get("effect")) and r["effect"]:
        r["n_to_decide"] = mann_whitney_n_for(min(abs(r["effect"]), 1.0))
    return r


def mann_whitney_min_p(n_a: int, n_b: int) -> float:
    """The smallest two-sided exact Mann-Whitney p-value possible with these group sizes: 2 / C(N, n_a)."""
    return min(1.0, 2.0 / math.comb(n_a + n_b, n_a))


# ---------------------------------------------------------------------------- paired tests across seeds
def _paired_power(dz: float, n: int, alpha: float) -> float:
    df = n - 1
    crit = st.t.ppf(1 - alpha / 2, df)
    nc = dz * math.sqrt(n)
    pw = float(st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc))
    return pw if math.isfinite(pw) else 1.0  # scipy's nct gives NaN far in the tail, where the power is ~1


def paired_mde(n: int, *, power: float = POWER, alpha: float = ALPHA, wilcoxon: bool = False) -> float | None:
    """Smallest standardized paired difference ``d_z = mean / sd`` a two-sided paired t test detects.

    Exact noncentral-t power. ``wilcoxon=True``: the signed-rank test, approximated by the t test with
    ``n * 3 / pi`` pairs (its asymptotic relative efficiency under normality).
    """
    m = n * 3 / math.pi if wilcoxon else n
    if m < 2:
        return None
    if _paired_power(10.0, m, alpha) < power:
        return None
    return float(optimize.brentq(lambda d: _paired_power(d, m, alpha) - power, 1e-6, 10.0))


def paired_n_for(dz: float, *, power: float = POWER, alpha: float = ALPHA) -> int:
    """Pairs (seeds) a two-sided paired t test needs to detect a standardized difference ``dz``."""
    dz = abs(float(dz))
    if dz <= 0:
        raise ValueError(f"dz must be non-zero, got {dz!r}")
    n = 2
    while _paired_power(dz, n, alpha) < power and n < 100000:
        n += 1
    return n


def paired_ci(a, b, *, level: float = 0.95) -> dict:
    """Mean of ``a - b`` over pairs, its t interval, the paired t p-value and ``d_z`` (mean / sd)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    n = len(d)
    out = {"test": "paired t", "n": n, "mean_diff": float(d.mean()) if n else _NAN, "ci_low": _NAN,
           "ci_high": _NAN, "ci_method": "t interval of the mean paired difference", "ci_note": "", "p": _NAN,
           "dz": _NAN}
    if n < 2:
        return out
    sd = float(d.std(ddof=1))
    if sd == 0:  # no spread: no t interval exists (kept as undefined, never as the point [d, d])
        out.update(p=0.0 if out["mean_diff"] else 1.0,
                   ci_note=f"all {n} paired differences are equal ({out['mean_diff']:+.4g}): no t interval")
        return out
    half = st.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    t = out["mean_diff"] / (sd / math.sqrt(n))
    out.update(ci_low=out["mean_diff"] - half, ci_high=out["mean_diff"] + half,
               p=float(2 * st.t.sf(abs(t), n - 1)), dz=out["mean_diff"] / sd)
    return out


# ---------------------------------------------------------------------------- power of a correlation part
def spearman_power(rho, n: int, *, bound: float, sign: int | None = 1, k: int = 0) -> dict:
    """Power numbers for a rank correlation part: n, rho, its interval, MDE at 80%, and the n that would decide.

    ``sign``: the claimed direction (``n_to_decide`` from :func:`directional_n_for` with the observed rho
    as the truth), or None for an equivalence part (:func:`equivalence_n_for`).
    """
    lo, hi = spearman_ci(rho, n, k=k) if _ok(rho) else (_NAN, _NAN)
    out = {"n": n, "effect": rho, "effect_name": "rho", "ci_low": lo, "ci_high": hi, "ci_method": FISHER_Z,
           "ci_note": _interval_note(lo, hi, effect=rho), "mde_80": spearman_mde(n, k=k), "sesoi": bound}
    if _ok(rho):
        r = float(np.clip(rho, -0.999, 0.999))
        out["n_to_decide"] = equivalence_n_for(bound, r, k=k) if sign is None else directional_n_for(sign * r, bound, k=k)
    return out


def spearman_with_power(x, y, *, bound: float, sign: int | None = 1) -> dict:
    """:func:`singledir.stats.spearman` of ``x`` and ``y`` with the Fisher-z interval as ``ci_low``/
    ``ci_high`` (the bootstrap interval kept as ``boot_ci_low``/``boot_ci_high``) and ``power`` numbers."""
    from singledir import stats

    c = stats.spearman(x, y)
    c["boot_ci_low"], c["boot_ci_high"] = c["ci_low"], c["ci_high"]
    c["boot_ci_method"], c["boot_ci_note"] = c["ci_method"], c["ci_note"]
    c["ci_low"], c["ci_high"] = spearman_ci(c["rho"], c["n"]) if _ok(c["rho"]) else (_NAN, _NAN)
    c["ci_method"] = FISHER_Z
    c["ci_note"] = _interval_note(c["ci_low"], c["ci_high"], effect=c["rho"])
    c["power"] = spearman_power(c["rho"], c["n"], bound=bound, sign=sign)
    return c


__all__ = ["spearman_se", "spearman_ci", "spearman_n_for", "spearman_mde", "exclusion_n_for", "equivalence_n_for", "directional_n_for", "partial_spearman",
           "mann_whitney_mde", "mann_whitney_n_for", "mann_whitney_min_p", "rank_biserial_ci",
           "mann_whitney_with_power", "paired_mde", "paired_n_for", "paired_ci", "isotonic_trend", "isotonic_e2",
           "pooled_rank_correlation",
           "spearman_power", "spearman_with_power"]
