"""singledir.stats against scipy and hand-computed small cases, and its bootstrap intervals by simulation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from singledir import stats


# ---------------------------------------------------------------------------- areas
def test_trapezoid_and_ablation_auc_by_hand():
    assert stats.trapezoid_auc([0.8, 0.6, 0.1], [0.0, 0.5, 1.0]) == pytest.approx(0.525)
    assert stats.trapezoid_auc([0.5], [0.0]) == 0.0
    a = stats.ablation_auc([1.0, 0.0, 0.5], [0.1, 0.8, 0.6])  # any order: sorted by fraction
    assert a["auc"] == pytest.approx(0.525) and a["base_accuracy"] == 0.8
    assert a["normalized_auc"] == pytest.approx(0.525 / 0.8)
    assert math.isnan(stats.ablation_auc([0.5, 1.0], [0.6, 0.1])["normalized_auc"])  # no fraction-0 point
    assert stats.ablation_auc([0.5, 1.0], [0.6, 0.1], base_accuracy=0.5)["normalized_auc"] == pytest.approx(0.175 / 0.5)
    assert math.isnan(stats.normalized_auc(0.3, 0.0))


def test_the_two_noise_aucs_differ_by_the_base_accuracy():
    scales, acc = [10.0, 0.1, 1.0], [0.1, 0.9, 0.5]  # log10 scales -1, 0, 1
    raw = (0.9 + 0.5) / 2 + (0.5 + 0.1) / 2
    assert stats.noise_auc(scales, acc) == pytest.approx(raw)
    assert stats.noise_auc_range_normalized(scales, acc) == pytest.approx(raw / 2)
    assert stats.noise_auc_base_normalized(scales, acc, 0.8) == pytest.approx(raw / 2 / 0.8)
    assert stats.noise_auc_range_normalized([1.0], [0.7]) == pytest.approx(0.7)
    assert math.isnan(stats.noise_auc_base_normalized([1.0], [0.7], 0.8))


# ---------------------------------------------------------------------------- Spearman
def test_spearman_large_n_is_scipys():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    c = stats.spearman(x, y, n_boot=200)
    ref = sps.spearmanr(x, y)
    assert c["rho"] == pytest.approx(ref.statistic) and c["p"] == pytest.approx(ref.pvalue)
    assert c["p_method"] == "t approximation" and c["n"] == 40 and c["note"] == ""
    assert c["ci_low"] <= c["rho"] <= c["ci_high"]


@pytest.mark.parametrize("n", [4, 6])
def test_spearman_small_n_exact_permutation_p_by_enumeration(n):
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n)
    rho = sps.spearmanr(x, y).statistic
    # every ordering of y against x, counted by hand
    count = sum(abs(sps.spearmanr(x, y[list(p)]).statistic) >= abs(rho) - 1e-12
                for p in itertools.permutations(range(n)))
    c = stats.spearman(x, y, n_boot=0)
    assert c["p_method"] == "exact permutation" and c["p"] == pytest.approx(count / math.factorial(n))
    assert math.isnan(c["ci_low"])
    # a perfect 6-point monotone relation: only the two extreme orderings are as extreme
    assert stats.spearman(range(6), range(6, 0, -1))["p"] == pytest.approx(2 / 720)


def test_spearman_nine_or_ten_pairs_uses_seeded_permutations_close_to_scipy_exact():
    x = np.arange(10.0)
    y = np.array([1, 0, 3, 2, 5, 4, 7, 9, 6, 8.0])
    c = stats.spearman(x, y, n_boot=0)
    ref = sps.spearmanr(x, y, alternative="two-sided")
    exact = sps.permutation_test((y,), lambda v: sps.spearmanr(x, v).statistic, permutation_type="pairings",
                                 n_resamples=20000, random_state=np.random.default_rng(1)).pvalue
    assert c["p_method"].startswith("permutation") and c["rho"] == pytest.approx(ref.statistic)
    assert c["p"] == pytest.approx(exact, abs=0.01)
    assert stats.spearman(x, y, n_boot=0)["p"] == c["p"]  # seeded


def test_spearman_undefined_is_nan_with_a_note_and_drops_nan_pairs():
    c = stats.spearman([1, 1, 1, 1], [1, 2, 3, 4], names=("sel", "imp"))
    assert math.isnan(c["rho"]) and math.isnan(c["p"]) and "constant sel" in c["note"]
    assert "fewer than 3" in stats.spearman([1, 2], [2, 1])["note"]
    c = stats.spearman([1, 2, 3, np.nan, 5, 6, 7, 8, 9, 10, 11, 12], list(range(12)), n_boot=0)
    assert c["n"] == 11


def test_spearman_bootstrap_interval_covers_at_the_nominal_rate():
    """Percentile bootstrap CI of rho: coverage near 95% over simulated bivariate normal samples."""
    rng = np.random.default_rng(3)
    r = 0.5
    true_rho = 6 / math.pi * math.asin(r / 2)  # Spearman's rho of a bivariate normal
    hits, trials = 0, 200
    for t in range(trials):
        z = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=60)
        c = stats.spearman(z[:, 0], z[:, 1], n_boot=400, seed=t)
        hits += c["ci_low"] <= true_rho <= c["ci_high"]
    # binomial sd at 95% over 200 trials is 1.5%; percentile intervals run slightly narrow at n = 60
    assert 0.86 <= hits / trials <= 0.99


def test_spearman_shared_resamples_and_seed():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=30), rng.normal(size=30)
    idx = np.random.default_rng(9).integers(0, 30, size=(300, 30))
    a = stats.spearman(x, y, resamples=idx)
    b = stats.spearman(x, y, n_boot=300, seed=9)
    assert (a["ci_low"], a["ci_high"]) == (b["ci_low"], b["ci_high"])  # same draws -> same interval
    rhos = stats.rowwise_spearman(x[idx], y[idx])
    assert rhos[0] == pytest.approx(sps.spearmanr(x[idx[0]], y[idx[0]]).statistic)


# ---------------------------------------------------------------------------- two samples, means
def test_mann_whitney_and_wilcoxon_match_scipy():
    a, b = [3.1, 4.2, 5.0, 6.3, 7.7], [1.0, 2.2, 2.9, 4.0]
    mw = stats.mann_whitney(a, b)
    ref = sps.mannwhitneyu(a, b, alternative="two-sided")
    assert mw["u"] == ref.statistic and mw["p"] == pytest.approx(ref.pvalue)
    assert mw["effect"] == pytest.approx(2 * ref.statistic / 20 - 1) and mw["effect"] > 0
    assert math.isnan(stats.mann_whitney([1.0], b)["p"])
    w = stats.wilcoxon_paired([1.0, 2.5, 3.0, 4.5, 6.0], [0.5, 2.0, 3.5, 3.0, 4.0])
    ref = sps.wilcoxon(np.subtract([1.0, 2.5, 3.0, 4.5, 6.0], [0.5, 2.0, 3.5, 3.0, 4.0]))
    assert w["statistic"] == ref.statistic and w["p"] == pytest.approx(ref.pvalue)
    assert w["mean_diff"] == pytest.approx(0.8)
    assert math.isnan(stats.wilcoxon_paired([1, 2], [1, 2])["p"])


def test_bootstrap_mean_ci_matches_scipy_and_covers():
    v = np.array([0.2, 0.5, 0.4, 0.9, 0.3, 0.6])
    lo, hi = stats.bootstrap_mean_ci(v, n_boot=500, seed=2)
    ref = sps.bootstrap((v,), np.mean, n_resamples=500, method="percentile",
                        random_state=np.random.default_rng(2)).confidence_interval
    assert (lo, hi) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert stats.bootstrap_mean_ci([0.3, 0.3]) == (0.3, 0.3)
    assert all(math.isnan(t) for t in stats.bootstrap_mean_ci([0.3]))
    s = stats.mean_std_ci(v, n_boot=500, seed=2)
    assert s["mean"] == pytest.approx(v.mean()) and s["std"] == pytest.approx(v.std(ddof=1))
    assert (s["ci_low"], s["ci_high"]) == (lo, hi)
    rng = np.random.default_rng(4)
    hits = sum(lo <= 0 <= hi for lo, hi in (stats.bootstrap_mean_ci(rng.normal(size=40), n_boot=300, seed=t)
                                              for t in range(150)))
    assert 0.85 <= hits / 150 <= 0.99


# ---------------------------------------------------------------------------- interval methods and degenerate intervals
def test_every_interval_records_its_method_and_degenerate_ones_say_why():
    from singledir.reporting.formatting import fmt_ci, fmt_mann_whitney
    from singledir.stats import power

    x = [1, 2, 3, 4, 5, 6]
    c = power.spearman_with_power(x, [6, 5, 4, 3, 2, 1], bound=0.3, sign=-1)
    assert c["ci_method"].startswith("Fisher z") and c["boot_ci_method"].startswith("percentile bootstrap")
    assert c["ci_note"] and "undefined" in fmt_ci(c) and "-1.00" not in fmt_ci(c)  # rho = -1 at n = 6
    mw = power.mann_whitney_with_power([5, 6, 7, 8], [1, 2, 3, 4])
    assert mw["ci_method"] and mw["ci_note"]  # rank-biserial [1, 1] at 4 vs 4
    assert fmt_ci(mw).startswith("[interval undefined")
    assert "1.00 [1.00" not in fmt_mann_whitney(mw)
    d = power.paired_ci([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # every difference 0.1: no t interval
    assert d["ci_note"] and math.isnan(d["ci_low"]) and d["ci_method"].startswith("t interval")
    ok = stats.spearman([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11])
    assert ok["ci_method"].startswith("percentile bootstrap") and ok["ci_note"] == ""
    assert fmt_ci(ok).startswith("[0.")
    for fn in (power.partial_spearman, ):
        r = fn([1, 2, 3, 4, 5, 6, 7], [1, 3, 2, 5, 4, 7, 6], [1, 1, 2, 2, 1, 2, 1])
        assert r["ci_method"].startswith("Fisher z") and "ci_note" in r


def test_mean_std_ci_uses_one_rule_for_undefined_values():
    r = stats.mean_std_ci([1.0, 2.0, float("nan"), 3.0])
    assert r["mean"] == pytest.approx(2.0) and r["std"] == pytest.approx(1.0)
    assert r["ci_low"] <= 2.0 <= r["ci_high"] and "1 of 4" in r["note"] and r["ci_method"]
    same = stats.mean_std_ci([0.5, 0.5, 0.5])
    assert same["ci_note"]  # zero width: printed as undefined


def test_undefined_is_nan_in_power_results_as_in_stats():
    from singledir.stats import power

    for r in (power.partial_spearman([1, 2], [1, 2], [1, 2]), power.paired_ci([1.0], [2.0]),
              power.pooled_rank_correlation([1, 2], [1, 2], [0, 0]), power.isotonic_trend([1, 1], [1, 2])):
        for k in ("rho", "p", "ci_low", "ci_high", "e2", "dz"):
            if k in r:
                assert r[k] is not None and math.isnan(r[k]), (r["test"], k)
    assert all(math.isnan(v) for v in power.spearman_ci(float("nan"), 10))
