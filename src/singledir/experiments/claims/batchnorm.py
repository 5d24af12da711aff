"""Claim 5 (Figs 5b, 6): batch norm makes ConvNets more robust to ablation, and their feature maps less
class selective but more informative about the class.

ConvNets with and without batch norm are trained with several seeds (same settings otherwise). Each is
ablated (last conv layers, test data), and the class selectivity index and mutual information of every
feature map are computed on the test set.
"""

from __future__ import annotations

import pandas as pd

from singledir import stats
from singledir.analysis import jobs
from singledir.experiments import verdicts
from singledir.stats import power
from singledir.reporting.formatting import fmt_mann_whitney, fmt_p
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.figures import plot_curves, plot_histogram

NAME = "batchnorm"
TITLE = "Batch norm reduces reliance on single directions and class selectivity"
STATEMENT = (
    "ConvNets trained with batch normalization are more robust to cumulative ablation than the same "
    "networks without it, and their feature maps are less class selective and carry more mutual "
    "information about the class (Morcos et al. 2018, Figs 5b and 6)."
)
RULE = (
    "Every network, with and without batch norm, is trained to the preset's training-accuracy target "
    "(the epoch cap is set so that networks without batch norm reach it too), so both conditions are "
    "compared at the same fit; a network that misses the target makes every part inconclusive. The network "
    "is the replicate: three parts, each a Mann-Whitney U test of one value per network, with vs without "
    "batch norm, two-sided. 'ablation robustness': normalized AUC (test data, unit layers as in the "
    "settings, mean over random orders), claimed larger with batch norm. 'selectivity': mean class "
    "selectivity index of the network's live feature maps (test set, all conv layers), claimed smaller "
    "with batch norm. 'mutual information': mean mutual information, claimed larger. Each part: reproduced "
    "if in the claimed direction and p < 0.05, not reproduced if opposite and p < 0.05, else inconclusive "
    "(the smallest p possible with these group sizes is shown). The claim is reproduced when all three "
    "parts are, not reproduced when any is. Shown, not in the verdict: selectivity per depth, and the "
    "pooled unit-level tests (feature maps of one network are not independent)."
)
RULE_HISTORY = (
    "Changed after a run where the pooled unit-level tests were in the verdict and the 40-epoch cap stopped "
    "every network without batch norm before the target."
)


def network_rule(with_bn, without, sign: int, *, fit: bool = True) -> tuple[str, str, dict]:
    """One part of the declared rule (one value per network) -> ``(verdict, reason, numbers)``."""
    r = power.mann_whitney_with_power(with_bn, without)
    verdict, reason = verdicts.sign_verdict(r["effect"], r["p"], sign, target_reached=fit)
    if verdict == verdicts.INCONCLUSIVE and r.get("n_to_decide") and fit:
        reason += f"; about {r['n_to_decide']} networks per condition would detect this effect at 80% power"
    return verdict, reason, r


def run(ctx: Context) -> ClaimResult:
    s = ctx.settings
    if s.get("skip"):
        return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdicts.SKIPPED, f"not run: {s['skip']}", "skipped",
                           [], s, [], notes=[s["skip"]])

    # ---- the same ConvNets with and without batch norm
    keys = [(bn, seed) for bn in (True, False) for seed in s["seeds"]]
    dirs = ctx.train([dict(s["train"], batchnorm=bn, seed=seed) for bn, seed in keys], "train ConvNets")
    runs = pd.DataFrame([jobs.run_summary(d) for d in dirs])
    runs["batchnorm"] = [k[0] for k in keys]
    abl = ctx.analyze(jobs.ablation, dirs, dict(split="test", **s["ablation"]), desc="ablate")
    sel = ctx.analyze(jobs.selectivity, dirs, s["selectivity"], desc="selectivity")
    runs["auc"] = [a["auc"]["auc"].mean() for a in abl]
    runs["nauc"] = [a["auc"]["nauc"].mean() for a in abl]
    label = {True: "batch norm", False: "no batch norm"}
    units = pd.concat([u["units"].assign(network=d.name, bn=label[bn]) for u, d, (bn, _) in zip(sel, dirs, keys)])
    live = units[~units["dead"].astype(bool)]
    runs["mean_selectivity"] = [live.loc[live["network"] == d.name, "selectivity"].mean() for d in dirs]
    runs["mean_mutual_info"] = [live.loc[live["network"] == d.name, "mutual_info"].mean() for d in dirs]

    # ---- the three declared tests, one value per network
    with_bn, without = runs[runs["batchnorm"]], runs[~runs["batchnorm"]]

    def describe(r, what):
        return (f"{what}: median {r['median_a']:.3f} (BN) vs {r['median_b']:.3f} (no BN), "
                + (fmt_mann_whitney(r) if "min_p" in r else
                   f"Mann-Whitney p = {fmt_p(r['p'])}, n = {r['n_a']} vs {r['n_b']}"))

    fit = bool(runs["target_reached"].all())
    parts = []
    for name, col, sign, what in (("ablation robustness", "nauc", +1, "nAUC"),
                                  ("selectivity", "mean_selectivity", -1, "mean selectivity"),
                                  ("mutual information", "mean_mutual_info", +1, "mean MI (bits)")):
        v, why, r = network_rule(with_bn[col], without[col], sign, fit=fit)
        parts.append(Part(name, v, why, describe(r, what), r))
    for col, sign, what in (("selectivity", -1, "selectivity"), ("mutual_info", +1, "mutual information")):
        r = stats.mann_whitney(live.loc[live["bn"] == "batch norm", col], live.loc[live["bn"] == "no batch norm", col])
        parts.append(Part(f"{what}, pooled feature maps", *verdicts.sign_verdict(r["effect"], r["p"], sign, target_reached=fit),
                          describe(r, f"{what} (all maps)"), r, in_verdict=False))

    # ---- selectivity per depth: mean per network and depth, then BN vs no BN
    per = live.groupby(["network", "bn", "depth"], as_index=False)[["selectivity", "mutual_info"]].mean()
    depth_rows = []
    for depth, g in per.groupby("depth"):
        a, b = g.loc[g["bn"] == "batch norm", "selectivity"], g.loc[g["bn"] == "no batch norm", "selectivity"]
        r = stats.mann_whitney(a, b)
        depth_rows.append({"depth": int(depth), "selectivity_bn": a.mean(), "selectivity_no_bn": b.mean(),
                           "mutual_info_bn": g.loc[g["bn"] == "batch norm", "mutual_info"].mean(),
                           "mutual_info_no_bn": g.loc[g["bn"] == "no batch norm", "mutual_info"].mean(),
                           "p_selectivity": r["p"], "rank_biserial": r["effect"]})
    by_depth = pd.DataFrame(depth_rows)

    # ---- figures: Fig 5b (ablation curves) and Fig 6 (distributions)
    curves = pd.concat([x["curves"].assign(bn=label[bn]) for x, (bn, _) in zip(abl, keys)])
    ctx.figure(plot_curves(curves.rename(columns={"bn": "condition"}), "fraction", "accuracy", group="condition",
                           ylabel="test accuracy",
                           title="ConvNets with and without batch norm"),
               "ablation", f"Cumulative ablation (test data, feature maps of the {s['ablation']['layers']} unit "
               f"layers) of {len(s['seeds'])} ConvNets per condition; mean +- std over networks and orders. "
               f"Paper Fig. 5b.")
    ctx.figure(plot_histogram(live.rename(columns={"bn": "condition"}), "selectivity", group="condition", bins=20,
                              range=(0, 1), density=True,
                              title="Class selectivity of feature maps"),
               "selectivity", "Class selectivity index of every live feature map (all conv layers, all "
               "networks, test set). Paper Fig. 6.")
    ctx.figure(plot_histogram(live.rename(columns={"bn": "condition"}), "mutual_info", group="condition", bins=20,
                              density=True,
                              title="Mutual information of feature maps"),
               "mutual-info", "Mutual information between each feature map's activity and the class (bits). "
               "Paper Fig. 6.")

    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    notes = [f"{int(units['dead'].sum())} dead feature maps (never active) left out of the distributions."]
    if not fit:
        notes.append(f"{int((~runs['target_reached']).sum())} network(s) stopped at the epoch cap before the target.")
    key = "; ".join(f"{p.name}: {p.numbers.get('mean_a', float('nan')):.3g} with vs {p.numbers.get('mean_b', float('nan')):.3g} "
                    f"without batch norm, p = {fmt_p(p.numbers.get('p'))} ({p.verdict})" for p in parts if p.in_verdict)
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, key, parts, s, ctx.figures,
                       {"networks": runs, "selectivity per depth": by_depth}, {}, notes, runs=ctx.runs)
