"""Claim 3b (Fig 4): across a learning-rate x batch-size grid, reliance on single directions tracks
generalization, so it can rank hyperparameters without held-out data.

Every (learning rate, batch size) pair is trained with a few seeds for the same number of epochs on
clean labels; each network is ablated on its training data. The verdict is the Spearman correlation of
the normalized AUC with test accuracy across all networks of the grid.
"""

from __future__ import annotations

import pandas as pd

from singledir import stats
from singledir.experiments import jobs, verdicts
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.figures import plot_scatter
from singledir.reporting.formatting import fmt_corr

NAME = "hyperparameters"
TITLE = "Ablation robustness ranks hyperparameters by generalization"
STATEMENT = (
    "Across networks trained with different learning rates and batch sizes, the area under the "
    "cumulative-ablation curve correlates positively with test accuracy, so it can select "
    "hyperparameters without a held-out set (Morcos et al. 2018, Fig. 4)."
)
RULE = (
    "Per network: normalized AUC (area under the ablation curve on training data divided by unablated "
    "training accuracy, mean over random orders). Spearman rho of nAUC vs test accuracy across every "
    "network of the grid (all seeds): reproduced if rho > 0 and p < 0.05; not reproduced if rho < 0 and "
    "p < 0.05; else inconclusive. The raw AUC is reported too but does not enter the verdict."
)


def run(ctx: Context) -> ClaimResult:
    s = ctx.settings

    # ---- the grid: every learning rate x batch size x seed, same epochs
    grid = [(lr, bs, seed) for lr in s["lr"] for bs in s["batch_size"] for seed in s["seeds"]]
    dirs = ctx.train([dict(s["train"], lr=lr, batch_size=bs, seed=seed) for lr, bs, seed in grid], "train grid")
    runs = pd.DataFrame([jobs.run_summary(d) for d in dirs])
    runs["lr"] = [g[0] for g in grid]
    runs["batch_size"] = [g[1] for g in grid]
    abl = ctx.analyze(jobs.ablation, dirs, dict(split="train", **s["ablation"]), desc="ablate")
    runs["auc"] = [a["auc"]["auc"].mean() for a in abl]
    runs["nauc"] = [a["auc"]["nauc"].mean() for a in abl]

    # ---- statistics
    c = stats.spearman(runs["nauc"], runs["test_acc"])
    c_raw = stats.spearman(runs["auc"], runs["test_acc"])
    parts = [
        Part("nAUC vs test accuracy", *verdicts.sign_verdict(c["rho"], c["p"], +1, n=c["n"], min_n=5),
             fmt_corr(c, "(nAUC, test acc)"), c),
        Part("raw AUC vs test accuracy", *verdicts.sign_verdict(c_raw["rho"], c_raw["p"], +1, n=c_raw["n"], min_n=5),
             fmt_corr(c_raw, "(AUC, test acc)"), c_raw, in_verdict=False),
    ]
    runs["setting"] = [f"lr={lr:g}, bs={bs}" for lr, bs in zip(runs["lr"], runs["batch_size"])]
    ctx.figure(plot_scatter(runs, "nauc", "test_acc", group="setting", annotate_rho=False,
                            xlabel="normalized ablation AUC (training data)", ylabel="test accuracy",
                            title=f"lr x batch-size grid: {fmt_corr(c)}"),
               "auc-vs-test", "Each point is one network of the learning-rate x batch-size grid (colour: "
               "setting; several seeds each). Paper Fig. 4 (hyperparameter panel).")
    table = runs.groupby(["lr", "batch_size"], as_index=False)[["test_acc", "train_acc", "nauc", "auc"]].mean()

    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, parts[0].statistic, parts, s,
                       ctx.figures, {"grid (mean over seeds)": table, "networks": runs}, {}, [], runs=ctx.runs)
