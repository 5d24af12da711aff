"""Each claim's declared rule on synthetic tables whose right verdict is known (no network is trained here),
including a decisive null and a case that stays inconclusive; and ``--seed-offset``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from singledir.cli import main
from singledir.experiments import presets
from singledir.experiments.claims import batchnorm, dropout, ensemble, hyperparameters, label_corruption
from singledir.experiments.claims import selectivity, training_dynamics
from singledir.reporting.formatting import fmt_power
from singledir.stats import power

R, N, I = "reproduced", "not reproduced", "inconclusive"
P12 = np.repeat([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 2)


# ---------------------------------------------------------------------------- label corruption
def test_label_corruption_rule():
    rng = np.random.default_rng(0)
    falling = 0.7 - 0.4 * P12 + 0.02 * rng.standard_normal(12)
    plateau = np.r_[0.72, 0.70, 0.30 + 0.01 * rng.standard_normal(10)]  # the reference replication's shape
    assert label_corruption.trend_rule(P12, falling, n_perm=4000)[0] == R
    assert label_corruption.trend_rule(P12, plateau, n_perm=4000)[0] == R
    assert label_corruption.trend_rule(P12, 1 - falling, n_perm=4000)[0] == N  # rises with p
    p100 = np.repeat(P12, 10)  # decisive null: 120 networks, AUC unrelated to p
    v, why, num = label_corruption.trend_rule(p100, rng.standard_normal(120), n_perm=2000)
    assert v == N and num["ci_low"] > -label_corruption.BOUND, why
    v, why, num = label_corruption.trend_rule(P12[::2], rng.standard_normal(6), n_perm=2000)
    assert v == I and num["power"]["n"] == 6  # six unrelated networks decide nothing
    assert label_corruption.trend_rule(P12, falling, fit=False, n_perm=500)[0] == I


# ---------------------------------------------------------------------------- ensemble
def _correlated(rng, n, r):
    x = rng.standard_normal(n)
    return x, r * x + np.sqrt(1 - r * r) * rng.standard_normal(n)


def test_ensemble_rule():
    rng = np.random.default_rng(1)
    assert ensemble.correlation_rule(*_correlated(rng, 80, 0.6), +1)[0] == R
    v, why, num = ensemble.correlation_rule(*_correlated(rng, 200, 0.0), +1)  # decisive null
    assert v == N and num["ci_high"] < ensemble.BOUND, why
    v, why, num = ensemble.correlation_rule(*_correlated(rng, 12, 0.1), +1)
    assert v == I and num["power"]["n_to_decide"] > 12 and "would decide" in why
    assert ensemble.correlation_rule(*_correlated(rng, 80, 0.6), +1, fit=False)[0] == I


# ---------------------------------------------------------------------------- hyperparameters
def test_hyperparameter_rule_controls_for_training_accuracy():
    rng = np.random.default_rng(2)
    train = rng.uniform(0.85, 1.0, 300)
    nauc = train + 0.02 * rng.standard_normal(300)  # both track how far training got ...
    test = train + 0.02 * rng.standard_normal(300)  # ... and nothing else: a confound
    v, why, c = hyperparameters.partial_rule(nauc, test, train)
    assert v == N and c["ci_high"] < hyperparameters.BOUND, why  # decisive null once the confound is removed
    real = train + 0.02 * rng.standard_normal(300)
    assert hyperparameters.partial_rule(real + 0.02 * rng.standard_normal(300), real, train)[0] == R
    assert hyperparameters.partial_rule(nauc[:18], test[:18], train[:18])[0] == I


# ---------------------------------------------------------------------------- training dynamics
def test_training_dynamics_rules():
    rng = np.random.default_rng(3)
    loss = np.linspace(0.3, 0.6, 14)
    assert training_dynamics.dynamics_rule(1 - loss + 0.01 * rng.standard_normal(14), loss)[0] == R
    assert training_dynamics.dynamics_rule(loss + 0.01 * rng.standard_normal(14), loss)[0] == N  # goes with loss
    v, why, _ = training_dynamics.dynamics_rule(rng.standard_normal(8), loss[:8])
    assert v == I and "checkpoints would decide" in why
    best = np.array([0.86, 0.87, 0.855, 0.862, 0.858])
    assert training_dynamics.early_stopping_rule(best + [0.001, -0.002, 0.0, 0.001, -0.001], best)[0] == R
    assert training_dynamics.early_stopping_rule(best - [0.05, 0.06, 0.04, 0.05, 0.055], best)[0] == N
    v, why, d = training_dynamics.early_stopping_rule(best + [0.01, -0.03, 0.0, -0.02, 0.005], best)
    assert v == I and d["n_to_decide"] > 5, why


# ---------------------------------------------------------------------------- dropout
def _curves(shape, seeds=(0,), orders=10, noise=0.01, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    f = np.linspace(0, 1, 21)
    rows = [{"seed": s, "order": o, "repeat": 0, "fraction": x, "accuracy": a}
            for s in seeds for o in range(orders) for x, a in zip(f, shape(f) + noise * rng.standard_normal(len(f)))]
    return pd.DataFrame(rows)


def test_dropout_rules():
    d = 0.2
    collapse = _curves(lambda f: np.where(f <= d, 1 - 0.1 * f, 0.98 - 3 * (f - d)).clip(0.1, 1))  # flat, then falls
    memorize = _curves(lambda f: 0.1 + 0.9 * np.exp(-6 * f), seed=1)  # no dropout: falls at once
    kept = lambda c: dropout._at(c, d) / dropout._at(c, 0.0)  # noqa: E731
    assert dropout.compare_rule(kept(collapse), kept(memorize))[0] == R
    assert dropout.compare_rule(dropout.knee(collapse, d), dropout.knee(memorize, d))[0] == R
    assert dropout.compare_rule(dropout.knee(memorize, d), dropout.knee(collapse, d))[0] == N
    same = _curves(lambda f: 0.1 + 0.9 * np.exp(-6 * f), seed=2)  # the same shape as the baseline
    v, why, _ = dropout.compare_rule(dropout.knee(same, d), dropout.knee(memorize, d))
    assert v == I and "orders per network" in why


# ---------------------------------------------------------------------------- batch norm
def test_batchnorm_rule():
    bn, no = [0.30, 0.31, 0.32, 0.33], [0.36, 0.37, 0.38, 0.39]
    assert batchnorm.network_rule(bn, no, -1)[0] == R  # 4 vs 4 fully separated: p = 2/70
    v, why, r = batchnorm.network_rule(no, bn, -1)  # BN more selective, as measured at matched fit
    assert v == N and r["min_p"] == pytest.approx(2 / 70)
    v, why, r = batchnorm.network_rule([0.30, 0.37, 0.32, 0.35], [0.36, 0.31, 0.38, 0.39], -1)
    assert v == I and "networks per condition" in why
    assert batchnorm.network_rule(bn, no, -1, fit=False)[0] == I


# ---------------------------------------------------------------------------- selectivity
def test_selectivity_rules():
    rng = np.random.default_rng(4)
    layers = np.repeat(["a", "b", "c"], 100)
    x = rng.random(300)
    v, why, c = selectivity.equivalence_rule(x, rng.random(300), layers)  # decisive null: unrelated
    assert v == R and -selectivity.BOUND < c["ci_low"] < c["ci_high"] < selectivity.BOUND
    assert selectivity.equivalence_rule(x, x + 0.1 * rng.random(300), layers)[0] == N  # a strong predictor
    v, why, c = selectivity.equivalence_rule(x[:30], rng.random(30), layers[:30])
    assert v == I and "units would decide" in why  # 30 units cannot bound rho to +-0.3
    early = np.repeat(["e1", "e2"], 40)
    y = rng.random(80)
    assert selectivity.negative_rule(y, -y + 0.2 * rng.random(80), early)[0] == R
    assert selectivity.negative_rule(y, y + 0.2 * rng.random(80), early)[0] == N


# ---------------------------------------------------------------------------- --seed-offset
def test_shift_seeds_moves_every_seed_and_nothing_else():
    base = presets.get_preset("quick")
    moved = presets.shift_seeds(base, 5)
    assert moved["ensemble"]["seeds"] == [s + 5 for s in base["ensemble"]["seeds"]]
    assert moved["label-corruption"]["convnet"]["seeds"] == [s + 5 for s in base["label-corruption"]["convnet"]["seeds"]]
    assert moved["selectivity"]["mlp"]["seed"] == base["selectivity"]["mlp"]["seed"] + 5
    for a, b in zip(presets.training_dicts(base), presets.training_dicts(moved)):
        assert {k: v for k, v in a.items() if k != "seed"} == {k: v for k, v in b.items() if k != "seed"}
    assert presets.shift_seeds(base, 0) == base
    from singledir.errors import SingledirError

    with pytest.raises(SingledirError, match="-1"):
        presets.shift_seeds(base, -1)


def test_seed_offset_is_applied_and_recorded(tmp_path):
    out = tmp_path / "r"
    argv = ["reproduce", "ensemble", "--preset", "smoke", "--jobs", "1", "--quiet", "--seed-offset", "7", "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    want = [s + 7 for s in presets.get_preset("smoke")["ensemble"]["seeds"]]
    assert doc["seed_offset"] == 7 and doc["settings"]["ensemble"]["seeds"] == want
    assert sorted(r["config"]["seed"] for r in doc["runs"].values()) == want
    assert any("seed offset 7" in n for n in doc["preset_notes"])
    assert "seed offset 7" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------- how stable is a verdict
def test_correlation_stability_margin_and_replication_share():
    from singledir.experiments import verdicts

    far = verdicts.correlation_stability(0.8, 60, rule="directional", sign=1, bound=0.3)
    assert far["margin"] > 0.5 and far["same_verdict_share"] > 0.99 and "reproduced" in far["text"]
    # an interval end right on its threshold: about half the replications decide the other way
    lo_at_zero = 1.96 * (1 + 0.26 ** 2 / 2) ** 0.5 / 57 ** 0.5  # rho whose lower Fisher-z end is ~0 at n = 60
    edge = verdicts.correlation_stability(float(np.tanh(lo_at_zero)), 60, rule="directional", sign=1, bound=0.3)
    assert abs(edge["margin"]) < 0.02 and 0.3 < edge["same_verdict_share"] < 0.7
    null = verdicts.correlation_stability(0.0, 2000, rule="equivalence", bound=0.3)
    assert null["margin"] > 0.2 and null["same_verdict_share"] == 1.0
    assert verdicts.interval_margin(-0.004, 0.01, reproduced_if_low_above=-0.01, not_if_high_below=-0.01)["margin"] \
        == pytest.approx(0.006)
    assert verdicts.p_margin(0.01)["margin"] == pytest.approx(0.04)


def test_n_to_decide_is_reported_only_while_a_part_is_undecided():
    rng = np.random.default_rng(0)
    x = np.arange(40.0)
    v, _, c = ensemble.correlation_rule(x, x + rng.normal(0, 1, 40), +1)  # clearly decided
    assert v == "reproduced" and "n_to_decide" not in c["power"] and "would decide" not in fmt_power(c["power"])
    v, _, c = ensemble.correlation_rule(x[:8], rng.normal(0, 1, 8), +1)  # too few to decide
    assert v == "inconclusive" and c["power"].get("n_to_decide")


def test_a_correlation_part_states_its_n_once():
    """'... n = 6, 95% CI [...]; n = 6; detects ...' said n twice (issue 16 item 14: one n per line)."""
    import re

    runs = pd.DataFrame({"corrupt": [0.0, 0.0, 0.5, 0.5, 1.0, 1.0], "auc": [0.9, 0.8, 0.6, 0.7, 0.4, 0.5],
                         "target_reached": True})
    part = label_corruption._ablation_part("MLP ablation", runs, "auc")
    assert len(re.findall(r"\bn ?= ?\d", part.statistic)) == 1, part.statistic
    assert "detects |rho|" in part.statistic and "isotonic trend p" in part.statistic


def test_over_training_summary_gives_the_deciding_numbers():
    from singledir.experiments.context import Part

    parts = [Part("seed 0", "reproduced", "", "", {}), Part("seed 0, raw AUC", "inconclusive", "", "", {}, False),
             Part("seed 1", "inconclusive", "", "", {}), Part("seed 2", "reproduced", "", "", {})]
    es = {"mean_diff": -0.0121, "ci_low": -0.0175, "ci_high": -0.0075, "ci_note": ""}
    key = training_dynamics._key(parts, pd.Series([-0.9, -0.6, -0.7]), es)
    assert "2 of 3 reproduced, 1 inconclusive (seed 1)" in key and "rho -0.90 to -0.60" in key
    assert "-0.0121" in key and "[-0.0175, -0.0075]" in key and "margin -0.01" in key
