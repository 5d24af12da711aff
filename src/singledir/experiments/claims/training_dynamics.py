"""Claim 3a (Fig 4): over training, reliance on single directions turns up when the network starts to
overfit, so the ablation AUC (computed on training data) can stop training without held-out data.

Networks are trained for a fixed number of epochs with log-spaced checkpoints; every checkpoint is
ablated on the training data. Per network, the verdict statistic is the Spearman correlation between the
normalized AUC and test loss across checkpoints (:func:`dynamics_rule`); stopping at the nAUC peak is
compared with stopping at the lowest test loss, paired across seeds (:func:`early_stopping_rule`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from singledir import stats
from singledir.analysis import jobs
from singledir.experiments import verdicts
from singledir.stats import power
from singledir.reporting.formatting import fmt_ci, fmt_corr, fmt_corr_power, fmt_p
from singledir.experiments.context import ClaimResult, Context, Part

NAME = "training-dynamics"
TITLE = "Ablation AUC over training tracks test loss (early stopping without held-out data)"
STATEMENT = (
    "Over the course of training, the area under the ablation curve starts to fall at about the point "
    "where test loss starts to rise; AUC and test loss are negatively correlated over training, so the "
    "AUC could be used to stop training without held-out data (Morcos et al. 2018, Fig. 4)."
)
BOUND = 0.3  # smallest correlation of interest, declared before any result
MARGIN = 0.01  # early stopping: the largest test-accuracy loss (1 point) that still counts as "as good"
RULE = (
    "Per network: normalized AUC (area under the cumulative-ablation curve on the training data divided "
    "by the unablated training accuracy, mean over random orders) at every log-spaced checkpoint from "
    "epoch 1 on. Part per seed: Spearman rho of nAUC vs test loss across checkpoints, claimed negative, 95% "
    f"interval by Fisher z (Bonett-Wright); reproduced if the interval lies below 0 and p < 0.05, not "
    f"reproduced (checked first) if it excludes every rho <= -{BOUND}, else inconclusive. Checkpoints of one run are not "
    "independent, so these intervals are optimistic; they are per network, never pooled. Part 'early "
    "stopping': test accuracy at the nAUC peak minus test accuracy at the lowest test loss (among the "
    "same checkpoints), paired across seeds, 95% t interval; reproduced if its lower end is above "
    f"-{MARGIN} (stopping at the nAUC peak loses less than {MARGIN:g} test accuracy: non-inferior), not "
    f"reproduced if its upper end is below -{MARGIN}, else inconclusive. The claim is reproduced when every "
    "part is, not reproduced when any is. Shown, not in the verdict: the raw AUC (it includes the rising "
    "training accuracy), and stopping at the nAUC peak vs training to the last epoch (paired t)."
)
RULE_HISTORY = (
    "Changed after a run showed the raw AUC tracking training accuracy: the verdict used the raw AUC "
    "before; the ensemble and grid claims already used the normalized AUC."
)


def dynamics_rule(nauc, test_loss, *, bound: float = BOUND) -> tuple[str, str, dict]:
    """Per-seed part of the declared rule (see ``RULE``) -> ``(verdict, reason, numbers)``."""
    c = power.spearman_with_power(nauc, test_loss, bound=bound, sign=-1)
    if c["n"] < 5:
        return verdicts.INCONCLUSIVE, f"too few checkpoints (n={c['n']} < 5)", c
    verdict, reason = verdicts.directional_verdict(c["rho"], c["ci_low"], c["ci_high"], -1, bound, p=c["p"])
    c["stability"] = verdicts.correlation_stability(c["rho"], c["n"], rule="directional", sign=-1, bound=bound)
    verdicts.decided(verdict, c.get("power"))
    if verdict == verdicts.INCONCLUSIVE and c["power"].get("n_to_decide"):
        reason += f"; about {c['power']['n_to_decide']} checkpoints would decide it at 80% power"
    return verdict, reason, c


def early_stopping_rule(at_peak, at_best, *, margin: float = MARGIN) -> tuple[str, str, dict]:
    """Non-inferiority of stopping at the nAUC peak vs at the lowest test loss, paired across seeds."""
    d = power.paired_ci(at_peak, at_best)
    d["margin"] = margin
    d["stability"] = verdicts.interval_margin(d["ci_low"], d["ci_high"], reproduced_if_low_above=-margin,
                                              not_if_high_below=-margin)
    d["mde_80_dz"] = power.paired_mde(d["n"]) if d["n"] >= 2 else None
    if d.get("ci_note") and verdicts.defined(d["mean_diff"]):  # every seed the same difference: no interval
        v = verdicts.REPRODUCED if d["mean_diff"] > -margin else verdicts.NOT_REPRODUCED
        return v, (f"{d['ci_note']}; every seed's difference is {'above' if d['mean_diff'] > -margin else 'below'} "
                   f"-{margin:g}"), d
    if not verdicts.defined(d["ci_low"]):
        return verdicts.INCONCLUSIVE, f"too few seeds (n={d['n']})", d
    if d["ci_low"] > -margin:
        return verdicts.REPRODUCED, f"interval [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] above -{margin:g}", d
    if d["ci_high"] < -margin:
        return verdicts.NOT_REPRODUCED, f"interval [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] below -{margin:g}", d
    sd = abs(d["mean_diff"] / d["dz"]) if d.get("dz") else None
    gap = abs(d["mean_diff"] + margin)  # distance of the observed difference from the margin
    need = power.paired_n_for(gap / sd) if sd and gap > 0 else None
    d["n_to_decide"] = need
    return verdicts.INCONCLUSIVE, (f"interval [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] crosses -{margin:g}"
                                + (f"; about {need} seeds would decide it" if need else "")), d


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
        c = stats.spearman(a["auc"], a["test_loss"])  # raw AUC: shown, not in the verdict
        parts.append(Part(f"seed {seed}, raw AUC", *verdicts.sign_verdict(c["rho"], c["p"], -1, n=c["n"], min_n=5),
                          fmt_corr(c, "(AUC, test loss)"), c, in_verdict=False))
        v, why, cn = dynamics_rule(a["nauc"], a["test_loss"])
        parts.append(Part(f"seed {seed}", v, why, fmt_corr_power(cn, '(nAUC, test loss)'), cn))
        at_peak = a.loc[a["nauc"].idxmax()]
        at_best = a.loc[a["test_loss"].idxmin()]
        rows.append({"seed": seed, "run": d.name, "rho": c["rho"], "p": c["p"], "rho_nauc": cn["rho"], "p_nauc": cn["p"],
                     "nauc_peak_epoch": int(at_peak["epoch"]), "test_acc_at_nauc_peak": at_peak["test_acc"],
                     "min_test_loss_epoch": int(at_best["epoch"]), "test_acc_at_min_test_loss": at_best["test_acc"],
                     # over every epoch with a test evaluation (the preset evaluates every epoch here)
                     "min_test_loss_epoch_all_epochs": int(hist["test_loss"].iloc[1:].idxmin()),
                     "final_epoch": int(hist.index.max()), "final_test_acc": hist["test_acc"].iloc[-1]})
    table = pd.DataFrame(rows)
    v, why, es = early_stopping_rule(table["test_acc_at_nauc_peak"], table["test_acc_at_min_test_loss"])
    diff = table["test_acc_at_nauc_peak"] - table["test_acc_at_min_test_loss"]
    parts.append(Part("early stopping at the nAUC peak", v, why,
                      f"test acc at nAUC peak - at lowest test loss: mean {es['mean_diff']:+.4f}, 95% CI "
                      f"{fmt_ci(es, 4)} (paired t, n = {es['n']} seeds; per seed "
                      f"{', '.join(f'{x:+.4f}' for x in diff)}); margin -{MARGIN:g}; detects a standardized "
                      + (f"difference d_z >= {es['mde_80_dz']:.2f} at 80% power" if es["mde_80_dz"] else "difference "
                         "at 80% power: too few seeds"), es))
    last = power.paired_ci(table["test_acc_at_nauc_peak"], table["final_test_acc"])
    parts.append(Part("nAUC peak vs last epoch", *verdicts.directional_verdict(
        last["mean_diff"], last["ci_low"], last["ci_high"], +1, 0.0, p=last["p"]) if verdicts.defined(last["ci_low"])
        else (verdicts.INCONCLUSIVE, last.get("ci_note") or "too few seeds"),
        f"test acc at nAUC peak - at the last epoch: mean {_fmt(last['mean_diff'])}, 95% CI {fmt_ci(last, 4)}, "
        f"paired t p = {fmt_p(last['p'])}", last, in_verdict=False))

    ctx.figure(_figure(auc, histories, table, dirs, s["seeds"]), "over-training",
               "Top: normalized ablation AUC (solid; raw AUC dotted) on the training data at log-spaced "
               "checkpoints, one colour per seed. Bottom: train and test loss per epoch. Dashed lines: nAUC peak; dotted: "
               "lowest test loss (among checkpoints). Paper Fig. 4.")
    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    key = _key(parts, table["rho_nauc"], es)
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, key, parts, dict(s, checkpoint_epochs=epochs),
                       ctx.figures, {"per network": table, "checkpoints": auc}, {}, [], runs=ctx.runs)


def _key(parts: list[Part], rhos: pd.Series, es: dict) -> str:
    """The summary's deciding numbers: the seeds' verdicts (naming the seeds that were not reproduced) and
    rho range, and the early-stopping difference with the interval the margin is judged on."""
    seeds = [p for p in parts if p.in_verdict and p.name.startswith("seed ")]
    counts = {v: [p.name for p in seeds if p.verdict == v] for v in verdicts.VERDICTS}
    bits = [f"{len(counts[verdicts.REPRODUCED])} of {len(seeds)} reproduced"]
    bits += [f"{len(names)} {v} ({', '.join(names)})" for v, names in counts.items()
             if v != verdicts.REPRODUCED and names]
    r = rhos[rhos.notna()]
    spread = f"; rho {r.min():+.2f} to {r.max():+.2f}" if len(r) else ""
    return (f"rho(nAUC, test loss) per seed: {', '.join(bits)}{spread}; early stopping at the nAUC peak: "
            f"{_fmt(es['mean_diff'])} test accuracy vs the lowest test loss, 95% CI {fmt_ci(es, 4)} "
            f"(margin -{MARGIN:g})")


def _fmt(x) -> str:
    return "n/a" if not verdicts.defined(x) else f"{x:+.4f}"


def _figure(auc, histories, table, dirs, seeds):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.6, 5.6), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for i, (seed, d) in enumerate(zip(seeds, dirs)):
        color = f"C{i}"
        a = auc[(auc["run"] == d.name) & (auc["epoch"] >= 1)]
        ax1.plot(a["epoch"], a["nauc"], "o-", color=color, markersize=3, label=f"seed {seed}, nAUC" if i < 6 else None)
        ax1.plot(a["epoch"], a["auc"], ":", color=color, alpha=0.7, label="raw AUC" if i == 0 else None)
        h = histories[seed].iloc[1:]
        ht = h["test_loss"].dropna()  # epochs without a test evaluation (history_every) are NaN
        ax2.plot(ht.index, ht, color=color, label=f"test loss, seed {seed}" if i < 6 else None)
        ax2.plot(h.index, h["train_loss"], color=color, linestyle=":", alpha=0.7,
                 label="train loss" if i == 0 else None)
        row = table[table["seed"] == seed].iloc[0]
        for ax in (ax1, ax2):
            ax.axvline(row["nauc_peak_epoch"], color=color, linestyle="--", linewidth=0.8)
            ax.axvline(row["min_test_loss_epoch"], color=color, linestyle=":", linewidth=0.8)
    ax1.set_xscale("log")
    ax1.set_ylabel("ablation nAUC (training data)")
    ax2.set_ylabel("loss (cross-entropy)")
    ax2.set_xlabel("epoch")
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7)
    for ax in (ax1, ax2):
        ax.spines[["top", "right"]].set_visible(False)
    return fig
