"""Claim 4 (Fig 5a): dropout makes a network robust to ablating up to the dropout fraction of its units,
not beyond -- a memorizing network trained with dropout still collapses past that fraction.

MLPs are trained with dropout 0, 0.1, 0.2, 0.3 on clean and on fully corrupted labels to ~100% training
accuracy; each is ablated on its own training labels on a grid that contains every dropout fraction d
and 2d. The statistics compare, for the memorizing networks, the accuracy kept up to f = d and the knee
at d (:func:`knee`: lost in [d, 2d] minus lost in [0, d]) with those of the no-dropout network
(:func:`compare_rule`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from singledir.analysis import jobs
from singledir.experiments import verdicts
from singledir.stats import power
from singledir.reporting.formatting import fmt_mann_whitney, fmt_p
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.figures import plot_curves

NAME = "dropout"
TITLE = "Dropout protects only up to the dropout fraction"
STATEMENT = (
    "Networks trained with dropout are robust to ablating up to about the dropout fraction of their "
    "units, even when they memorize random labels; beyond that fraction the memorizing networks collapse, "
    "so dropout regularizes reliance on single directions only up to a point (Morcos et al. 2018, Fig. 5a)."
)
RULE = (
    "For each dropout fraction d > 0, using the networks trained on fully "
    "corrupted labels (p = 1) and their ablation curves on their own training labels, per random order: "
    "retained(d) = accuracy at fraction d / accuracy at 0; knee(d) = [accuracy(d) - accuracy(min(2d, 1))] "
    "- [accuracy(0) - accuracy(d)], divided by accuracy(0) (accuracy lost just past d minus lost up to d). "
    "Part 'protects up to d': retained(d) of the dropout-d network is larger than retained(d) of the "
    "dropout-0 network. Part 'collapses past d': knee(d) of the dropout-d network is larger than knee(d) "
    "of the dropout-0 network at the same d (the memorizing network without dropout shows no such knee). "
    "Each part: Mann-Whitney U over orders (seeds pooled), two-sided; reproduced if in the claimed "
    "direction and p < 0.05, not reproduced if opposite and p < 0.05, else inconclusive. Orders are "
    "replicates within one network per setting and seed, so the p-values speak for these networks. All "
    "memorizing networks must reach their training-accuracy target, otherwise inconclusive. The claim is "
    "reproduced when every part is, not reproduced when any is. Clean-label networks are shown for "
    "reference."
)
RULE_HISTORY = (
    "Changed after a run showed the former part (loss in [d, 2d] > loss in [0, d] within one network) held "
    "for every curve, clean and no-dropout included, so it could not fail."
)


def knee(curves: pd.DataFrame, d: float) -> pd.Series:
    """knee(d) per (seed, order, repeat) curve: accuracy lost in [d, 2d] minus lost in [0, d], over accuracy(0)."""
    a0, ad, a2 = _at(curves, 0.0), _at(curves, d), _at(curves, min(2 * d, 1.0))
    return ((ad - a2) - (a0 - ad)) / a0


def compare_rule(a, b) -> tuple[str, str, dict]:
    """Mann-Whitney rule of a part (``a`` claimed larger than ``b``) -> ``(verdict, reason, numbers)``."""
    mw = power.mann_whitney_with_power(a, b)
    verdict, reason = verdicts.sign_verdict(mw["effect"], mw["p"], +1)
    if verdict == verdicts.INCONCLUSIVE and mw.get("n_to_decide"):
        reason += f"; about {mw['n_to_decide']} orders per network would detect this effect at 80% power"
    return verdict, reason, mw


def _at(curves: pd.DataFrame, f: float) -> pd.Series:
    """Accuracy at the grid point nearest fraction ``f``, per (seed, order, repeat) curve."""
    dist = (curves["fraction"] - f).abs()
    sel = curves[dist == dist.groupby([curves["seed"], curves["order"], curves["repeat"]]).transform("min")]
    return sel.groupby(["seed", "order", "repeat"])["accuracy"].first().sort_index()


def run(ctx: Context) -> ClaimResult:
    s = ctx.settings
    levels = s["levels"]  # a grid in steps of 1/(levels-1): must contain every d and 2d
    grid = jobs.fraction_levels(levels)
    for d in s["dropout"]:
        assert any(np.isclose(grid, d)) and any(np.isclose(grid, min(2 * d, 1.0))), "grid must contain d, 2d"

    # ---- networks: every dropout x {clean, random} x seed, trained to the target
    keys = [(d, p, seed) for d in s["dropout"] for p in s["corrupt"] for seed in s["seeds"]]
    dirs = ctx.train([dict(s["train"], dropout=d, corrupt=p, seed=seed) for d, p, seed in keys], "train")
    runs = pd.DataFrame([jobs.run_summary(r) for r in dirs])
    runs["dropout"] = [k[0] for k in keys]
    abl = ctx.analyze(jobs.ablation, dirs, dict(split="train", levels=levels, **s["ablation"]), desc="ablate")
    runs["auc"] = [a["auc"]["auc"].mean() for a in abl]
    curves = pd.concat([a["curves"].assign(dropout=d, corrupt=p, seed=seed) for a, (d, p, seed) in zip(abl, keys)])

    # ---- the declared statistics, memorizing networks only
    mem = curves[curves["corrupt"] == 1.0]
    reached = bool(runs.loc[runs["corrupt"] == 1.0, "target_reached"].all())
    base = mem[mem["dropout"] == 0.0]
    parts, rows = [], []
    for d in [d for d in s["dropout"] if d > 0]:
        net = mem[mem["dropout"] == d]
        kept_d = _at(net, d) / _at(net, 0.0)
        kept_0 = _at(base, d) / _at(base, 0.0)
        k_d, k_0 = knee(net, d), knee(base, d)
        for name, (a, b), what in ((f"d={d:g}: protects up to d", (kept_d, kept_0), f"accuracy kept at f={d:g}"),
                                   (f"d={d:g}: collapses past d", (k_d, k_0), f"knee at d={d:g}")):
            v, why, mw = compare_rule(a, b)
            if not reached:
                v, why = verdicts.INCONCLUSIVE, "some memorizing networks did not reach the training target"
            parts.append(Part(name, v, why, f"{what}: {a.mean():+.3f} (dropout {d:g}) vs {b.mean():+.3f} (no dropout), "
                              f"{fmt_mann_whitney(mw)}", mw))
        within = _at(net, 0.0) - _at(net, d)
        beyond = _at(net, d) - _at(net, min(2 * d, 1.0))
        rows.append({"dropout": d, "kept_at_d": kept_d.mean(), "kept_at_d_no_dropout": kept_0.mean(),
                     "knee": k_d.mean(), "knee_no_dropout": k_0.mean(),
                     "lost_within_0_d": within.mean(), "lost_beyond_d_2d": beyond.mean()})

    # ---- figures: the paper's panels, dropout fraction marked
    for p, label in ((1.0, "random labels"), (0.0, "clean labels")):
        sub = curves[curves["corrupt"] == p]
        if sub.empty:
            continue
        ctx.figure(plot_curves(sub, "fraction", "accuracy", group="dropout", ylabel="training accuracy (run's labels)",
                               title=f"Dropout, {label}", vlines={f"d={d:g}": d for d in s["dropout"] if d > 0}),
                   f"{'random' if p else 'clean'}", f"Cumulative ablation (training data, the run's labels) of "
                   f"MLPs trained with dropout on {label}; dashed lines mark the dropout fractions. Paper Fig. 5a.")

    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    if not reached:
        reason += "; some memorizing networks did not reach the training target"
    key = (f"{sum(p.verdict == verdicts.REPRODUCED for p in parts)}/{len(parts)} parts reproduced: "
           + "; ".join(f"{p.name} {p.numbers.get('mean_a', float('nan')):+.3f} vs {p.numbers.get('mean_b', float('nan')):+.3f} "
                       f"without dropout, p = {fmt_p(p.numbers.get('p'))}" for p in parts if p.in_verdict))
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, key, parts, s, ctx.figures,
                       {"memorizing networks": pd.DataFrame(rows), "networks": runs}, {}, [], runs=ctx.runs)
