"""Claim 2 (Fig 3): among networks that differ only in their seed, the better-generalizing ones rely less
on single directions.

Networks are trained on clean labels with identical settings except the seed. Each is ablated on its
training data (no held-out data is needed to compute the AUC). The verdict is the Spearman correlation
of the normalized AUC with test accuracy and with the generalization gap across networks.
"""

from __future__ import annotations

import pandas as pd

from singledir import stats
from singledir.experiments import jobs, verdicts
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.figures import plot_curves, plot_scatter
from singledir.reporting.formatting import fmt_corr, fmt_p

NAME = "ensemble"
TITLE = "Better-generalizing networks are more robust to ablation"
STATEMENT = (
    "Among many networks trained on clean labels that differ only in their random seed, the 5 that "
    "generalize best are more robust to cumulative ablation than the 5 that generalize worst, and the "
    "area under the ablation curve tracks test accuracy across all of them (Morcos et al. 2018, Fig. 3)."
)
RULE = (
    "Per network: normalized AUC (area under the ablation curve on training data divided by unablated "
    "training accuracy, mean over random orders). Part 'AUC vs test accuracy': Spearman rho across "
    "networks, claimed positive. Part 'AUC vs generalization gap' (train - test accuracy): claimed "
    "negative. Each part: reproduced if the sign is the claimed one and p < 0.05; not reproduced if the "
    "sign is opposite and p < 0.05; else inconclusive. The 5-best vs 5-worst comparison (Mann-Whitney U "
    "on their AUCs) is shown but does not enter the verdict. The claim is reproduced when both parts are."
)


def run(ctx: Context) -> ClaimResult:
    s = ctx.settings
    k = s["best_worst"]

    # ---- networks that differ only in the seed
    dirs = ctx.train([dict(s["train"], seed=seed) for seed in s["seeds"]], "train networks")
    runs = pd.DataFrame([jobs.run_summary(d) for d in dirs])
    abl = ctx.analyze(jobs.ablation, dirs, dict(split="train", **s["ablation"]), desc="ablate")
    runs["auc"] = [a["auc"]["auc"].mean() for a in abl]
    runs["nauc"] = [a["auc"]["nauc"].mean() for a in abl]
    runs["gap"] = runs["train_acc"] - runs["test_acc"]

    # ---- statistics
    c_acc = stats.spearman(runs["nauc"], runs["test_acc"])
    c_gap = stats.spearman(runs["nauc"], runs["gap"])
    parts = [
        Part("AUC vs test accuracy", *verdicts.sign_verdict(c_acc["rho"], c_acc["p"], +1, n=c_acc["n"], min_n=5),
             fmt_corr(c_acc, "(nAUC, test acc)"), c_acc),
        Part("AUC vs generalization gap", *verdicts.sign_verdict(c_gap["rho"], c_gap["p"], -1, n=c_gap["n"], min_n=5),
             fmt_corr(c_gap, "(nAUC, gap)"), c_gap),
    ]
    ranked = runs.sort_values("test_acc", ascending=False).reset_index(drop=True)
    best, worst = ranked.head(k), ranked.tail(k)
    mw = stats.mann_whitney(best["nauc"], worst["nauc"])
    parts.append(Part(f"{k} best vs {k} worst", verdicts.significant_sign(mw["effect"], mw["p"]),
                      "descriptive (not in the verdict)",
                      f"median nAUC {mw['median_a']:.3f} (best) vs {mw['median_b']:.3f} (worst), "
                      f"Mann-Whitney p = {fmt_p(mw['p'])}", mw, in_verdict=False))

    # ---- figures: the paper's best-vs-worst curves, and AUC against test accuracy
    group = {r: f"{k} best" for r in best["run"]} | {r: f"{k} worst" for r in worst["run"]}
    curves = pd.concat([a["curves"].assign(group=group[r]) for a, r in zip(abl, runs["run"]) if r in group])
    ctx.figure(plot_curves(curves, "fraction", "accuracy", group="group", ylabel="training accuracy",
                           title=f"{k} best vs {k} worst generalizing of {len(runs)}"),
               "best-worst", f"Cumulative ablation curves (training data) of the {k} networks with the highest "
               f"and the {k} with the lowest test accuracy; mean +- std over networks and orders. Paper Fig. 3.")
    ctx.figure(plot_scatter(runs, "nauc", "test_acc", xlabel="normalized ablation AUC (training data)",
                            ylabel="test accuracy", title="AUC vs generalization"),
               "auc-vs-test", "Each point is one network (seeds differ); Spearman rho in the title.")

    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, parts[0].statistic, parts, s,
                       ctx.figures, {"networks": runs}, {}, [], runs=ctx.runs)
