"""Claim 3a (Fig 4): over training, reliance on single directions turns up when the network starts to
overfit, so the ablation AUC (computed on training data) can stop training without held-out data.

Networks are trained for a fixed number of epochs with log-spaced checkpoints; every checkpoint is
ablated on the training data. Per network, the verdict statistic is the Spearman correlation between AUC
and test loss across checkpoints; we also compare stopping at the AUC peak with stopping at the lowest
test loss.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from singledir import stats
from singledir.experiments import jobs, verdicts
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.formatting import fmt_corr

NAME = "training-dynamics"
TITLE = "Ablation AUC over training tracks test loss (early stopping without held-out data)"
STATEMENT = (
    "Over the course of training, the area under the ablation curve starts to fall at about the point "
    "where test loss starts to rise; AUC and test loss are negatively correlated over training, so the "
    "AUC could be used to stop training without held-out data (Morcos et al. 2018, Fig. 4)."
)
RULE = (
    "Per network: AUC of the cumulative-ablation curve on the training data (raw, mean over random "
    "orders) at every log-spaced checkpoint from epoch 1 on (the untrained epoch 0 is left out); Spearman "
    "rho of AUC vs test loss across checkpoints, claimed negative. One part per network (seed): "
    "reproduced if rho < 0 and p < 0.05, not reproduced if rho > 0 and p < 0.05, else inconclusive; the "
    "claim is reproduced when every network's part is. Checkpoints of one run are not independent, so "
    "the p-values are optimistic; they are per network, never pooled. Early stopping (epoch of the AUC "
    "peak vs epoch of the lowest test loss among the checkpoints, and the test accuracy at each) is "
    "reported descriptively and does not enter the verdict, as is the same correlation with the normalized AUC "
    "(AUC / unablated training accuracy)."
)


def checkpoint_epochs(epochs: int, n: int) -> list[int]:
    """About ``n`` log-spaced epochs from 1 to ``epochs`` (both included)."""
    return sorted({int(round(e)) for e in np.geomspace(1, epochs, n)})


def run(ctx: Context) -> ClaimResult:
    s = ctx.settings
    epochs = checkpoint_epochs(s["train"]["epochs"], s["checkpoints"])

    # ---- train with checkpoints, ablate every checkpoint on the training data
    dirs = ctx.train([dict(s["train"], seed=seed, checkpoints=epochs) for seed in s["seeds"]], "train")
    abl = ctx.analyze(jobs.ablation, dirs, dict(s["ablation"], epochs=epochs), desc="ablate checkpoints")
    auc = pd.concat([a["auc"].groupby("epoch", as_index=False).agg(auc=("auc", "mean"), auc_std=("auc", "std"),
                                                                    nauc=("nauc", "mean")).assign(run=d.name)
                     for d, a in zip(dirs, abl)], ignore_index=True)

    # ---- per network: correlation with test loss, and the two stopping rules
    from singledir.training import load_run

    parts, rows, histories = [], [], {}
    for seed, d in zip(s["seeds"], dirs):
        hist = load_run(d).history.set_index("epoch")
        histories[seed] = hist
        a = auc[auc["run"] == d.name].merge(hist[["train_loss", "test_loss", "test_acc"]],
                                            left_on="epoch", right_index=True)
        c = stats.spearman(a["auc"], a["test_loss"])
        parts.append(Part(f"seed {seed}", *verdicts.sign_verdict(c["rho"], c["p"], -1, n=c["n"], min_n=5),
                          fmt_corr(c, "(AUC, test loss)"), c))
        cn = stats.spearman(a["nauc"], a["test_loss"])  # shown, not in the verdict
        parts.append(Part(f"seed {seed}, normalized AUC", *verdicts.sign_verdict(cn["rho"], cn["p"], -1, n=cn["n"], min_n=5),
                          fmt_corr(cn, "(nAUC, test loss)"), cn, in_verdict=False))
        at_peak = a.loc[a["auc"].idxmax()]
        at_best = a.loc[a["test_loss"].idxmin()]
        rows.append({"seed": seed, "run": d.name, "rho": c["rho"], "p": c["p"],
                     "auc_peak_epoch": int(at_peak["epoch"]), "test_acc_at_auc_peak": at_peak["test_acc"],
                     "min_test_loss_epoch": int(at_best["epoch"]), "test_acc_at_min_test_loss": at_best["test_acc"],
                     "min_test_loss_epoch_all_epochs": int(hist["test_loss"].iloc[1:].idxmin()),
                     "final_epoch": int(hist.index.max()), "final_test_acc": hist["test_acc"].iloc[-1]})
    table = pd.DataFrame(rows)
    diff = table["test_acc_at_auc_peak"] - table["test_acc_at_min_test_loss"]
    parts.append(Part("early stopping at the AUC peak", verdicts.INCONCLUSIVE, "descriptive (not in the verdict)",
                      f"test acc at AUC peak - at lowest test loss: mean {diff.mean():+.4f} "
                      f"(per seed {', '.join(f'{v:+.4f}' for v in diff)}); vs training to the end: mean "
                      f"{(table['test_acc_at_auc_peak'] - table['final_test_acc']).mean():+.4f}",
                      {"mean_diff_vs_min_test_loss": diff.mean(),
                       "mean_diff_vs_final": (table["test_acc_at_auc_peak"] - table["final_test_acc"]).mean()},
                      in_verdict=False))

    ctx.figure(_figure(auc, histories, table, dirs, s["seeds"]), "over-training",
               "Top: ablation AUC on the training data at log-spaced checkpoints (one line per seed; band = "
               "std over orders). Bottom: train and test loss per epoch. Dashed lines: AUC peak; dotted: "
               "lowest test loss (among checkpoints). Paper Fig. 4.")
    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    key = "; ".join(p.statistic for p in parts if p.in_verdict)
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, key, parts, dict(s, checkpoint_epochs=epochs),
                       ctx.figures, {"per network": table, "checkpoints": auc}, {}, [], runs=ctx.runs)


def _figure(auc, histories, table, dirs, seeds):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 5.6), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for i, (seed, d) in enumerate(zip(seeds, dirs)):
        color = f"C{i}"
        a = auc[(auc["run"] == d.name) & (auc["epoch"] >= 1)]
        ax1.plot(a["epoch"], a["auc"], "o-", color=color, markersize=3, label=f"seed {seed}")
        ax1.fill_between(a["epoch"], a["auc"] - a["auc_std"], a["auc"] + a["auc_std"], color=color, alpha=0.2)
        h = histories[seed].iloc[1:]
        ax2.plot(h.index, h["test_loss"], color=color, label=f"test loss, seed {seed}")
        ax2.plot(h.index, h["train_loss"], color=color, linestyle=":", alpha=0.7,
                 label="train loss" if i == 0 else None)
        row = table[table["seed"] == seed].iloc[0]
        for ax in (ax1, ax2):
            ax.axvline(row["auc_peak_epoch"], color=color, linestyle="--", linewidth=0.8)
            ax.axvline(row["min_test_loss_epoch"], color=color, linestyle=":", linewidth=0.8)
    ax1.set_xscale("log")
    ax1.set_ylabel("ablation AUC (training data)")
    ax2.set_ylabel("loss (cross-entropy)")
    ax2.set_xlabel("epoch")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
    return fig
