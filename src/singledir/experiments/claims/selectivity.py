"""Claim 6 (Fig 7): class selectivity is a poor predictor of a unit's importance.

For an MLP and (quick/paper) a ConvNet trained on clean labels, every unit's class selectivity index,
mutual information with the label, and importance (test accuracy lost when that unit alone is ablated)
are measured on the test set; Spearman correlations per layer. Selectivity by depth is reported too.
"""

from __future__ import annotations

import math

import pandas as pd

from singledir import stats
from singledir.experiments import jobs, verdicts
from singledir.experiments.context import ClaimResult, Context, Part
from singledir.reporting.figures import plot_scatter
from singledir.reporting.formatting import fmt_corr

NAME = "selectivity"
TITLE = "Class selectivity is a poor predictor of unit importance"
STATEMENT = (
    "A unit's class selectivity says little about how important it is to the network: the correlation "
    "between selectivity and the accuracy lost when the unit alone is ablated is near zero in late "
    "layers and negative in early ConvNet layers; the same holds for mutual information. Selectivity "
    "grows with depth (Morcos et al. 2018, Fig. 7 and appendix)."
)
BOUND = 0.3  # Cohen's "medium" correlation, declared before any result
RULE = (
    "Per layer with at least `min_units` live units (dead units left out) and per tuning measure "
    "(selectivity, mutual information): Spearman rho with importance = accuracy drop, and its 95% "
    f"bootstrap interval. A layer's part is reproduced if the interval's upper end is below {BOUND} (a "
    f"moderate positive predictive power is excluded), not reproduced if its lower end is above {BOUND} "
    "(the measure is at least a moderate positive predictor), else inconclusive. The claim is "
    "reproduced when every part is, not reproduced when any is. 'Selectivity by depth' (Spearman rho of "
    "mean selectivity vs layer depth in the ConvNet, claimed positive; sign + p < 0.05 rule) is reported "
    "but does not enter the verdict (it is an appendix claim about ResNet-50)."
)


def _bound_verdict(c: dict) -> tuple[str, str]:
    if not math.isfinite(c["ci_high"]):
        return verdicts.INCONCLUSIVE, "correlation undefined"
    if c["ci_high"] < BOUND:
        return verdicts.REPRODUCED, f"95% CI upper end {c['ci_high']:.2f} < {BOUND}"
    if c["ci_low"] > BOUND:
        return verdicts.NOT_REPRODUCED, f"95% CI lower end {c['ci_low']:.2f} > {BOUND}"
    return verdicts.INCONCLUSIVE, f"95% CI [{c['ci_low']:.2f}, {c['ci_high']:.2f}] contains {BOUND}"


def run(ctx: Context) -> ClaimResult:
    s = ctx.settings
    nets = {"MLP": s["mlp"]} | ({"ConvNet": s["convnet"]} if s.get("convnet") else {})

    # ---- train, then selectivity + single-unit importance of every unit
    dirs = ctx.train(list(nets.values()), "train")
    res = ctx.analyze(jobs.importance, dirs, s["importance"], desc="unit importance")
    parts, rows, frames = [], [], []
    for (kind, _), r in zip(nets.items(), res):
        units = r["units"].assign(network=kind)
        frames.append(units)
        live = units[~units["dead"].astype(bool)]
        for layer, g in live.groupby("layer", sort=False):
            for measure in ("selectivity", "mutual_info"):
                c = stats.spearman(g[measure], g["accuracy_drop"])
                v, why = _bound_verdict(c)
                parts.append(Part(f"{kind} {layer} {measure}", v, why, fmt_corr(c, f"({measure}, importance)"), c))
                rows.append({"network": kind, "layer": layer, "depth": int(g["depth"].iloc[0]), "measure": measure,
                             "n_units": c["n"], "rho": c["rho"], "p": c["p"], "ci_low": c["ci_low"],
                             "ci_high": c["ci_high"], "verdict": v})
    units = pd.concat(frames)
    table = pd.DataFrame(rows)

    # ---- selectivity by depth (ConvNet when present, else the MLP)
    kind = "ConvNet" if "ConvNet" in nets else "MLP"
    sel_dirs = [dirs[list(nets).index(kind)]]
    by_depth = ctx.analyze(jobs.selectivity, sel_dirs, dict(examples=s["importance"]["examples"], layers="all"),
                           desc="selectivity by depth")[0]["units"]
    by_depth = by_depth[~by_depth["dead"].astype(bool)]
    depth = by_depth.groupby("depth", as_index=False)["selectivity"].mean()
    c = stats.spearman(depth["depth"], depth["selectivity"])
    parts.append(Part(f"{kind} selectivity by depth", *verdicts.sign_verdict(c["rho"], c["p"], +1, n=c["n"], min_n=4),
                      fmt_corr(c, "(depth, mean selectivity)"), c, in_verdict=False))

    # ---- figures: Fig 7 scatter per network, layers coloured
    for kind in nets:
        sub = units[(units["network"] == kind) & ~units["dead"].astype(bool)]
        for measure in ("selectivity", "mutual_info"):
            ctx.figure(plot_scatter(sub, measure, "accuracy_drop", group="layer", title=f"{kind}: {measure} vs importance"),
                       f"{kind.lower()}-{measure.replace('_', '-')}",
                       f"Each point is one live unit of the {kind}; x: its {measure.replace('_', ' ')} (test set), y: "
                       f"the test accuracy lost when it alone is ablated. Spearman rho per layer in the legend. Paper Fig. 7.")

    verdict, reason = verdicts.combine({p.name: p.verdict for p in parts if p.in_verdict})
    n_in = [p for p in parts if p.in_verdict]
    key = (f"{sum(p.verdict == verdicts.REPRODUCED for p in n_in)}/{len(n_in)} layer x measure parts with rho CI "
           f"below {BOUND}; median rho {table['rho'].median():.2f}")
    return ClaimResult(NAME, TITLE, STATEMENT, RULE, verdict, reason, key, parts, s, ctx.figures,
                       {"per layer": table, "selectivity by depth": depth}, {}, [], runs=ctx.runs)
