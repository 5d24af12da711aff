"""Scoring protocols against small cases computed by hand (and a slow direct PGDL computation)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from singledir.errors import SingledirError
from singledir.zoo.protocols import (
    check_complete_grid,
    conditional_mutual_information,
    granulated_psi,
    hoeffding_weight,
    kendall_tau,
    kendall_tau_ci,
    sign_error,
)


def test_kendall_tau_hand_cases():
    # pairs (1,2): ++ ; (1,3): ++ ; (2,3): +- -> (1 + 1 - 1) * 2 / 6
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # a tie in the measure counts 0: (1,2): 0, (1,3): +1, (2,3): +1 -> 4 / 6
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    assert kendall_tau([3, 2, 1], [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1.0], [2.0]))


def test_kendall_tau_bad_input():
    with pytest.raises(SingledirError, match="NaN"):
        kendall_tau([1, float("nan")], [1, 2])
    with pytest.raises(SingledirError, match="3 values but gap has 2"):
        kendall_tau([1, 2, 3], [1, 2])


def test_kendall_tau_ci_brackets_and_is_seeded():
    rng = np.random.default_rng(1)
    g = rng.normal(size=60)
    mu = g + rng.normal(size=60)
    tau = kendall_tau(mu, g)
    lo, hi = kendall_tau_ci(mu, g, n_boot=400, seed=3)
    assert lo < tau < hi
    assert (lo, hi) == kendall_tau_ci(mu, g, n_boot=400, seed=3)
    # a larger sample gives a narrower interval
    g2 = rng.normal(size=400)
    mu2 = g2 + rng.normal(size=400)
    lo2, hi2 = kendall_tau_ci(mu2, g2, n_boot=200, seed=3)
    assert hi2 - lo2 < hi - lo


def _grid4():
    # (a, b): gap, measure
    rows = [(0, 0, 0.1, 1.0), (1, 0, 0.2, 2.0), (0, 1, 0.3, 5.0), (1, 1, 0.4, 3.0)]
    return pd.DataFrame(rows, columns=["a", "b", "gap", "mu"])


def test_granulated_psi_hand_case():
    # axis a: group b=0 -> +1, group b=1 -> -1 => 0; axis b: a=0 -> +1, a=1 -> +1 => 1
    psi, per = granulated_psi(_grid4(), "mu", "gap", ["a", "b"])
    assert per == {"a": pytest.approx(0.0), "b": pytest.approx(1.0)}
    assert psi == pytest.approx(0.5)


def test_granulated_psi_pools_seeds_in_a_group():
    df = pd.DataFrame({"a": [0, 0, 1, 1], "b": [0, 0, 0, 0] , "gap": [1, 2, 3, 4], "mu": [1, 3, 2, 4]})
    df = pd.concat([df, df.assign(b=1)], ignore_index=True)
    _, per = granulated_psi(df, "mu", "gap", ["a", "b"])
    # within each b group: 4 models, tau over them = pairs: (1,2)+ (1,3)+ (1,4)+ (2,3)- (2,4)+ (3,4)+ -> 4/6
    assert per["a"] == pytest.approx(4 / 6)


def test_axis_with_one_value_is_an_error():
    df = _grid4().assign(c=7)
    with pytest.raises(SingledirError, match="axis 'c' has fewer than 2 values"):
        granulated_psi(df, "mu", "gap", ["a", "b", "c"])


def _grid8(gaps, mus):
    rows = [(a, b, s) for a in (0, 1) for b in (0, 1) for s in (0, 1)]
    df = pd.DataFrame(rows, columns=["a", "b", "seed"])
    df["gap"], df["mu"] = gaps, mus
    return df


def test_cmi_measure_equal_to_gap_scores_one_and_constant_scores_zero():
    gaps = np.arange(8) / 10.0
    df = _grid8(gaps, gaps)
    assert conditional_mutual_information(df, "mu", "gap", ["a", "b"]) == pytest.approx(1.0)
    df = _grid8(gaps, np.zeros(8))
    assert conditional_mutual_information(df, "mu", "gap", ["a", "b"]) == pytest.approx(0.0)


def test_cmi_hand_case_reversed_measure():
    # Settings' gaps are separated (each setting's two seeds lie between the others'), so in the 12 cells
    # of distinct settings the gap sign is constant (entropy 0, MI 0). In the 4 same-setting cells the
    # pairs (s0,s0),(s0,s1),(s1,s0),(s1,s1) with mu = -gap give (G,M) = (0,0),(0,1),(1,0),(0,0):
    # H(G) = H(M) = H(3/4, 1/4), H(G,M) = H(1/2, 1/4, 1/4) = 1.5.
    gaps = np.array([0.10, 0.11, 0.20, 0.21, 0.30, 0.31, 0.40, 0.41])
    df = _grid8(gaps, -gaps)
    h = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    want = (2 * h - 1.5) / h
    assert conditional_mutual_information(df, "mu", "gap", ["a", "b"]) == pytest.approx(want)


def _slow_cmi(df, mu, gap, axes):
    """The PGDL scoring program's loops, written plainly."""
    best = float("inf")
    for h1, h2 in itertools.permutations(axes, 2):
        v1, v2 = sorted(df[h1].unique()), sorted(df[h2].unique())
        cells = {c: np.zeros((2, 2)) for c in itertools.product(v1, v1, v2, v2)}
        for i in range(len(df)):
            for j in range(len(df)):
                ri, rj = df.iloc[i], df.iloc[j]
                cells[(ri[h1], rj[h1], ri[h2], rj[h2])][int(ri[gap] > rj[gap]), int(ri[mu] > rj[mu])] += 1
        mis, hs = [], []
        for t in cells.values():
            p = t / t.sum()
            pg, pm = p.sum(1), p.sum(0)
            mis.append(sum(p[a, b] * math.log2(p[a, b] / (pg[a] * pm[b])) for a in (0, 1) for b in (0, 1) if p[a, b] > 0))
            hs.append(-sum(x * math.log2(x) for x in pg if x > 0))
        best = min(best, np.mean(mis) / np.mean(hs))
    return best


def test_cmi_matches_slow_direct_computation():
    rng = np.random.default_rng(0)
    rows = [(a, b, c, s) for a in (0, 1) for b in (0, 1, 2) for c in (5, 6) for s in (0, 1)]
    df = pd.DataFrame(rows, columns=["a", "b", "c", "seed"])
    df["gap"] = rng.normal(size=len(df)) + df["b"]
    df["mu"] = df["gap"] + rng.normal(size=len(df))
    fast = conditional_mutual_information(df, "mu", "gap", ["a", "b", "c"])
    assert fast == pytest.approx(_slow_cmi(df, "mu", "gap", ["a", "b", "c"]), rel=1e-10)
    assert 0 < fast < 1


def test_cmi_incomplete_grid_names_missing_cells():
    df = _grid8(np.arange(8.0), np.arange(8.0))
    df = df[~((df.a == 1) & (df.b == 0))]
    with pytest.raises(SingledirError, match="no model at a=1, b=0"):
        conditional_mutual_information(df, "mu", "gap", ["a", "b"])
    with pytest.raises(SingledirError, match="not a complete grid"):
        check_complete_grid(df, ["a", "b"])


def test_hoeffding_weight_formula():
    assert hoeffding_weight(0.1, 1000) == pytest.approx((1 - 2 * math.exp(-5)) ** 2)
    assert hoeffding_weight(0.0, 1000) == 0.0
    # the 0.5 threshold sits at |dg| = sqrt(3.84 / n) (to the precision of 3.84)
    d = math.sqrt(3.84 / 10000)
    assert hoeffding_weight(d, 10000) == pytest.approx(0.5, abs=0.005)


def _env_frame(gaps_a, mus_a, gaps_b, mus_b, extra_axis=True):
    rows = []
    for s, (g, m) in enumerate(zip(gaps_a, mus_a)):
        rows.append({"lr": 0.1, "wd": 0, "seed": s, "gap": g, "mu": m})
    for s, (g, m) in enumerate(zip(gaps_b, mus_b)):
        rows.append({"lr": 0.2, "wd": 0, "seed": s, "gap": g, "mu": m})
    df = pd.DataFrame(rows)
    if extra_axis:  # a far-away setting differing in both axes: not an environment with either
        df = pd.concat([df, pd.DataFrame([{"lr": 0.3, "wd": 1, "seed": 0, "gap": 0.9, "mu": 0.0}])], ignore_index=True)
    return df


def test_sign_error_hand_case():
    ga, gb = [0.10, 0.11, 0.12, 0.13], [0.50, 0.51, 0.52, 0.53]
    ma, mb = [1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2, 0.5]  # one B model ranks below every A model
    df = _env_frame(ga, ma, gb, mb)
    out = sign_error(df, "mu", "gap", ["lr", "wd"], n_test=10**6)
    # 16 equally weighted pairs (w = 1 - 0.5 each, ESS 16), 4 wrong -> 0.25
    assert out["n_environments"] == 1
    assert out["mean"] == pytest.approx(0.25) and out["max"] == pytest.approx(0.25)
    assert out["per_axis"]["lr"]["n"] == 1 and out["per_axis"]["wd"]["n"] == 0
    assert math.isnan(out["per_axis"]["wd"]["mean"])


def test_sign_error_drops_noisy_pairs_and_small_environments():
    ga, gb = [0.10, 0.11, 0.12, 0.13], [0.50, 0.51, 0.52, 0.53]
    ma, mb = [1.0, 1.1, 1.2, 1.3], [2.0, 2.1, 2.2, 0.5]
    # with 100 test examples |dg| ~ 0.4 still counts (sqrt(3.84/100) = 0.196) but at 10 it does not
    assert sign_error(_env_frame(ga, ma, gb, mb), "mu", "gap", ["lr", "wd"], n_test=100)["n_environments"] == 1
    assert sign_error(_env_frame(ga, ma, gb, mb), "mu", "gap", ["lr", "wd"], n_test=10)["n_environments"] == 0
    # two seeds per setting: at most 4 pairs, effective sample size 4 < 12 -> dropped
    out = sign_error(_env_frame(ga[:2], ma[:2], gb[:2], mb[:2]), "mu", "gap", ["lr", "wd"], n_test=10**6)
    assert out["n_environments"] == 0 and out["n_candidates"] == 1 and math.isnan(out["mean"])
    out = sign_error(_env_frame(ga[:2], ma[:2], gb[:2], mb[:2]), "mu", "gap", ["lr", "wd"], n_test=10**6, min_ess=4)
    assert out["n_environments"] == 1 and out["mean"] == pytest.approx(0.0)


def test_sign_error_bad_n_test():
    with pytest.raises(SingledirError, match="n_test"):
        sign_error(_grid4(), "mu", "gap", ["a", "b"], n_test=0)
