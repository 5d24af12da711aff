"""experiments.power: known sample sizes, power and coverage checked by simulation, and the decisive-null rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from singledir.experiments import verdicts
from singledir.reporting.formatting import fmt_mann_whitney
from singledir.stats import power


def _spearman_pairs(rng, rho_s: float, n: int, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """``reps`` bivariate normal samples of size ``n`` whose population Spearman rho is ``rho_s``."""
    r = 2 * math.sin(math.pi * rho_s / 6)  # Pearson r of a bivariate normal with that Spearman rho
    z = rng.standard_normal((reps, n, 2))
    x = z[..., 0]
    y = r * z[..., 0] + math.sqrt(1 - r * r) * z[..., 1]
    return x, y


def test_n_for_rho_0_3_is_cohens_85_and_bonett_wright_asks_a_little_more():
    assert power.spearman_n_for(0.3, bonett_wright=False) == 85  # Cohen (1988), r = .30, alpha .05, power .80
    n = power.spearman_n_for(0.3)
    assert 85 < n <= 90  # the (1 + rho^2 / 2) inflation for Spearman
    # the two functions invert each other
    assert power.spearman_mde(n) <= 0.3 < power.spearman_mde(n - 1)
    assert power.spearman_mde(3) is None


def test_spearman_power_at_the_computed_n_is_80_percent_by_simulation():
    rng = np.random.default_rng(0)
    n = power.spearman_n_for(0.3)
    x, y = _spearman_pairs(rng, 0.3, n, 1500)
    hits = np.mean([st.spearmanr(a, b)[1] < 0.05 for a, b in zip(x, y)])
    assert 0.75 < hits < 0.86, hits  # 80% +- about 3 binomial standard errors


def test_fisher_interval_covers_95_percent_by_simulation():
    rng = np.random.default_rng(1)
    x, y = _spearman_pairs(rng, 0.5, 40, 1500)
    cover = 0
    for a, b in zip(x, y):
        lo, hi = power.spearman_ci(st.spearmanr(a, b)[0], 40)
        cover += lo <= 0.5 <= hi
    assert 0.925 < cover / 1500 < 0.975


def test_paired_and_mann_whitney_sizes():
    assert power.paired_n_for(0.5) == 34  # G*Power, paired t, d_z = 0.5, alpha .05, power .80
    d = power.paired_mde(10)
    assert power.paired_n_for(d) == 10
    assert power.paired_mde(10, wilcoxon=True) > d  # the signed-rank test needs a little more
    assert power.mann_whitney_min_p(4, 4) == pytest.approx(2 / 70)
    exact = st.mannwhitneyu([5, 6, 7, 8], [1, 2, 3, 4], method="exact").pvalue
    assert exact == pytest.approx(power.mann_whitney_min_p(4, 4))
    assert power.mann_whitney_mde(4, 4) is None  # no effect size gives 80% power with 4 vs 4


def test_mann_whitney_n_gives_about_80_percent_power_by_simulation():
    rng = np.random.default_rng(2)
    n = power.mann_whitney_n_for(0.5)  # P(A > B) = 0.75
    shift = math.sqrt(2) * st.norm.ppf(0.75)
    hits = np.mean([st.mannwhitneyu(rng.standard_normal(n) + shift, rng.standard_normal(n)).pvalue < 0.05
                    for _ in range(1000)])
    assert 0.72 < hits < 0.9, (n, hits)


def test_partial_spearman_equals_the_residual_definition_and_removes_a_confound():
    rng = np.random.default_rng(3)
    z = rng.standard_normal(200)
    x, y = z + 0.5 * rng.standard_normal(200), z + 0.5 * rng.standard_normal(200)
    c = power.partial_spearman(x, y, z)
    rx, ry, rz = (st.rankdata(v) for v in (x, y, z))
    res_x = rx - np.polyval(np.polyfit(rz, rx, 1), rz)
    res_y = ry - np.polyval(np.polyfit(rz, ry, 1), rz)
    assert c["rho"] == pytest.approx(np.corrcoef(res_x, res_y)[0, 1])
    assert st.spearmanr(x, y)[0] > 0.6 and c["ci_low"] < 0 < c["ci_high"]


def test_isotonic_trend_sees_a_plateau_that_a_rank_correlation_misses():
    p = np.repeat([0, 0.2, 0.4, 0.6, 0.8, 1.0], 2)
    rng = np.random.default_rng(4)
    auc = np.r_[0.72, 0.70, 0.30 + 0.01 * rng.standard_normal(10)]  # one step, then a plateau
    trend = power.isotonic_trend(p, auc, -1, n_perm=4000)
    from singledir import stats

    assert trend["p"] < 0.05 <= stats.spearman(p, auc)["p"]
    assert power.isotonic_trend(p, auc, +1, n_perm=4000)["p"] > 0.5  # the other direction: nothing


def test_isotonic_trend_keeps_its_level_under_the_null():
    rng = np.random.default_rng(5)
    p = np.repeat([0, 0.2, 0.4, 0.6, 0.8, 1.0], 2)
    rejections = np.mean([power.isotonic_trend(p, rng.standard_normal(12), -1, n_perm=250, seed=i)["p"] < 0.05
                          for i in range(200)])
    assert rejections < 0.1  # nominal 0.05; 3 binomial standard errors above it is ~0.096


def test_pooled_rank_correlation_ignores_differences_between_layers():
    rng = np.random.default_rng(6)
    layers = np.repeat([0, 1, 2], 100)
    x = layers + 0.1 * rng.standard_normal(300)  # both grow with the layer, independent within it
    y = layers + 0.1 * rng.standard_normal(300)
    assert st.spearmanr(x, y)[0] > 0.8
    c = power.pooled_rank_correlation(x, y, layers)
    assert c["groups"] == 3 and c["n"] == 300 and c["ci_low"] < 0 < c["ci_high"]
    one = power.pooled_rank_correlation(x[:100], y[:100], layers[:100])
    assert one["rho"] == pytest.approx(st.spearmanr(x[:100], y[:100])[0])


@pytest.mark.parametrize("lo, hi, want", [(0.1, 0.5, "reproduced"), (-0.5, 0.2, "not reproduced"),
                                          (-0.1, 0.4, "inconclusive"), (0.05, 0.25, "not reproduced")])
def test_directional_verdict(lo, hi, want):
    assert verdicts.directional_verdict((lo + hi) / 2, lo, hi, +1, 0.3)[0] == want
    assert verdicts.directional_verdict(-(lo + hi) / 2, -hi, -lo, -1, 0.3)[0] == want  # mirrored
    assert verdicts.directional_verdict(0.3, lo, hi, +1, 0.3, fit=False)[0] == "inconclusive"


@pytest.mark.parametrize("lo, hi, want", [(-0.1, 0.2, "reproduced"), (0.35, 0.6, "not reproduced"),
                                          (-0.7, -0.4, "not reproduced"), (-0.1, 0.4, "inconclusive")])
def test_equivalence_verdict(lo, hi, want):
    assert verdicts.equivalence_verdict(lo, hi, 0.3)[0] == want


def test_n_to_decide_decides_by_simulation():
    """At the n it names, a true rho = 0 is decided (interval inside the bound) in about 80% of samples."""
    n = power.equivalence_n_for(0.3, 0.0)
    rng = np.random.default_rng(7)
    x, y = _spearman_pairs(rng, 0.0, n, 1000)
    decided = np.mean([verdicts.equivalence_verdict(*power.spearman_ci(st.spearmanr(a, b)[0], n), 0.3)[0] == "reproduced"
                       for a, b in zip(x, y)])
    assert 0.72 < decided < 0.9, (n, decided)
    assert power.directional_n_for(0.0, 0.3) == power.exclusion_n_for(0.3, 0.0)
    assert power.directional_n_for(0.5, 0.3) == power.spearman_n_for(0.5)


def test_rank_biserial_interval_and_mann_whitney_numbers():
    assert power.rank_biserial_ci([5, 6, 7, 8], [1, 2, 3, 4]) == (1.0, 1.0)  # every resample separates fully
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal(40) + 0.5, rng.standard_normal(40)
    r = power.mann_whitney_with_power(a, b)
    assert r["ci_low"] < r["effect"] < r["ci_high"]
    assert r["mde_80_rank_biserial"] == pytest.approx(power.mann_whitney_mde(40, 40))
    assert r["n_to_decide"] == power.mann_whitney_n_for(r["effect"])
    assert "rank-biserial" in fmt_mann_whitney(r)


def test_vectorized_isotonic_fit_equals_scipys():
    isotonic_regression = getattr(pytest.importorskip("scipy.optimize"), "isotonic_regression", None)
    if isotonic_regression is None:
        pytest.skip("scipy < 1.12 has no isotonic_regression to compare with (lowest-versions run)")

    rng = np.random.default_rng(9)
    x = np.repeat([0, 0.2, 0.4, 0.6, 0.8, 1.0], [2, 1, 3, 2, 2, 2])
    levels, inv = np.unique(x, return_inverse=True)
    w = np.bincount(inv).astype(float)
    ys = rng.standard_normal((50, len(x)))
    for sign in (-1, +1):
        fast = power.isotonic_e2(ys, inv, sign)
        for y, e2 in zip(ys, fast):
            fit = isotonic_regression(np.bincount(inv, weights=y) / w, weights=w, increasing=sign > 0).x
            assert e2 == pytest.approx(np.sum(w * (fit - y.mean()) ** 2) / np.sum((y - y.mean()) ** 2))
