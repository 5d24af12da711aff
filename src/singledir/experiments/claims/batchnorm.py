"""Claim 5 (Figs 5b, 6): batch norm makes ConvNets more robust to ablation, and their feature maps less
class selective but more informative about the class.

ConvNets with and without batch norm are trained with several seeds (same settings otherwise). Each is
ablated (last conv layers, test data), and the class selectivity index and mutual information of every
feature map are computed on the test set.
"""

from __future__ import annotations

import pandas as pd

from singledir import stats
from singledir.experiments import jobs, verdicts
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.figures import plot_curves, plot_histogram
from singledir.reporting.formatting import fmt_p

NAME = "batchnorm"
TITLE = "Batch norm reduces reliance on single directions and class selectivity"
STATEMENT = (
    "ConvNets trained with batch normalization are more robust to cumulative ablation than the same "
    "networks without it, and their feature maps are less class selective and carry more mutual "
    "information about the class (Morcos et al. 2018, Figs 5b and 6)."
)
RULE = (
    "Three parts. 'ablation robustness': normalized AUC (test data, unit layers as in the settings, "
    "mean over random orders) per network, with vs without batch norm, Mann-Whitney U across networks, "
    "claimed larger with batch norm. 'selectivity': class selectivity index of every feature map "
    "(test set, all unit layers; dead maps left out), pooled over networks, Mann-Whitney U, claimed "
    "smaller with batch norm. 'mutual information': the same for mutual information, claimed larger. "
    "Each part: reproduced if the direction is the claimed one and p < 0.05 (two-sided), not reproduced "
    "if opposite and p < 0.05, else inconclusive. Feature maps of one network are not independent, so "
    "the pooled unit-level p-values are optimistic; the same tests on per-network means are shown too "
    "(not in the verdict). Every network must reach its training-accuracy target when the preset sets "
    "one (both conditions are then compared at the same fit), otherwise the parts are inconclusive. "
    "The claim is reproduced when all three parts are."
)


def run(ctx: Context) -> ClaimResult:
    s = ctx.settings
    if s.get("skip"):
        return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdicts.INCONCLUSIVE, f"not run: {s['skip']}", "not run",
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

    # ---- the three declared tests
    with_bn, without = runs[runs["batchnorm"]], runs[~runs["batchnorm"]]
    a = stats.mann_whitney(with_bn["nauc"], without["nauc"])
    sl = stats.mann_whitney(live.loc[live["bn"] == "batch norm", "selectivity"],
                            live.loc[live["bn"] == "no batch norm", "selectivity"])
    mi = stats.mann_whitney(live.loc[live["bn"] == "batch norm", "mutual_info"],
                            live.loc[live["bn"] == "no batch norm", "mutual_info"])

    def describe(r, what):
        return (f"{what}: median {r['median_a']:.3f} (BN, n={r['n_a']}) vs {r['median_b']:.3f} (no BN, n={r['n_b']}), "
                f"Mann-Whitney p = {fmt_p(r['p'])}")

    fit = bool(runs["target_reached"].all())
    parts = [
        Part("ablation robustness", *verdicts.sign_verdict(a["effect"], a["p"], +1, target_reached=fit),
             describe(a, "nAUC"), a),
        Part("selectivity", *verdicts.sign_verdict(sl["effect"], sl["p"], -1, target_reached=fit),
             describe(sl, "selectivity"), sl),
        Part("mutual information", *verdicts.sign_verdict(mi["effect"], mi["p"], +1, target_reached=fit),
             describe(mi, "MI (bits)"), mi),
    ]
    for col, sign, what in (("mean_selectivity", -1, "selectivity"), ("mean_mutual_info", +1, "mutual information")):
        r = stats.mann_whitney(with_bn[col], without[col])  # one value per network: no pseudo-replication
        parts.append(Part(f"{what}, per-network means", *verdicts.sign_verdict(r["effect"], r["p"], sign, target_reached=fit),
                          describe(r, col.replace("_", " ")), r, in_verdict=False))

    # ---- figures: Fig 5b (ablation curves) and Fig 6 (distributions)
    curves = pd.concat([x["curves"].assign(bn=label[bn]) for x, (bn, _) in zip(abl, keys)])
    ctx.figure(plot_curves(curves, "fraction", "accuracy", group="bn", ylabel="test accuracy",
                           title="ConvNets with and without batch norm"),
               "ablation", f"Cumulative ablation (test data, feature maps of the {s['ablation']['layers']} unit "
               f"layers) of {len(s['seeds'])} ConvNets per condition; mean +- std over networks and orders. "
               f"Paper Fig. 5b.")
    ctx.figure(plot_histogram(live, "selectivity", group="bn", bins=20, range=(0, 1), density=True,
                              title="Class selectivity of feature maps"),
               "selectivity", "Class selectivity index of every live feature map (all conv layers, all "
               "networks, test set). Paper Fig. 6.")
    ctx.figure(plot_histogram(live, "mutual_info", group="bn", bins=20, density=True,
                              title="Mutual information of feature maps"),
               "mutual-info", "Mutual information between each feature map's activity and the class (bits). "
               "Paper Fig. 6.")

    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    notes = [f"{int(units['dead'].sum())} dead feature maps (never active) left out of the distributions."]
    key = "; ".join(f"{p.name}: {p.verdict}" for p in parts)
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, key, parts, s, ctx.figures,
                       {"networks": runs}, {}, notes, runs=ctx.runs)
