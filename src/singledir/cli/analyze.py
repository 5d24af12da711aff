"""``singledir analyze RUN_DIR --out OUT_DIR``: reliance on single directions of one trained network.

Writes into OUT_DIR: ``ablation.parquet`` (cumulative ablation curves), ``noise.parquet`` (noise
curves), ``units.parquet`` (selectivity, mutual information, importance per unit),
``correlations.parquet`` (Spearman rho per layer and pooled), PNG figures and ``summary.json`` (AUCs,
correlations, settings, run config excerpt with seeds and data fingerprint, singledir version).
``summary.json`` is written last: when it exists, the analysis is complete. See
:mod:`singledir.analysis` for the defaults (the paper's).
"""

from __future__ import annotations

from pathlib import Path

from singledir.cli.argtypes import int_at_least


_positive_int = int_at_least(1)
_nonneg_int = int_at_least(0)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="measure a trained network's reliance on single directions",
        description=(
            "Cumulative ablation curves (random orders), noise curves, class selectivity, mutual information "
            "and single-unit importance of a run's network, with their correlations, tables, figures and a "
            "summary.json. Defaults follow Morcos et al. 2018: all unit layers of an MLP, the last three of a "
            "ConvNet/ResNet; curves on the training split with the run's own (possibly corrupted) labels; "
            "selectivity and importance on the test split."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path, help="a run directory made by `singledir train`")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                   help="folder for the outputs (created; files of the same names are replaced)")
    p.add_argument("--epoch", type=_nonneg_int, default=None,
                   help="analyse the weights of this checkpoint epoch (default: the final model)")
    p.add_argument("--layers", default=None,
                   help="comma list of unit layers (see `singledir layers RUN_DIR`), 'all' or 'lastN' "
                        "(default: all for an MLP, last3 otherwise)")
    p.add_argument("--split", choices=("train", "test"), default="train",
                   help="data for the ablation and noise curves: train (the run's labels; default) or test")
    p.add_argument("--orders", type=_positive_int, default=10,
                   help="number of random ablation orders (default 10)")
    p.add_argument("--clamp", choices=("zero", "mean"), default="zero",
                   help="value ablated units are clamped to: zero (default, the paper's) or the unit's mean")
    p.add_argument("--no-noise", dest="noise", action="store_false", help="skip the noise curves")
    p.add_argument("--noise-repeats", type=_positive_int, default=5,
                   help="noise draws per noise scale (default 5)")
    p.add_argument("--max-examples", type=_positive_int, default=None, metavar="N",
                   help="use a fixed random subset of at most N examples of each split (default: all)")
    p.add_argument("--bins", type=_positive_int, default=16,
                   help="quantile bins of non-zero activity for the mutual information (default 16)")
    p.add_argument("--seed", type=_nonneg_int, default=0,
                   help="seed of the ablation orders, noise draws, example subset and bootstrap (default 0)")
    p.add_argument("--device", default="cpu",
                   help="device the model is loaded on and the analysis runs on: cpu (default), cuda or cuda:N")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    p.set_defaults(func=run)


def run(args) -> int:
    from singledir.analysis import analyze_run

    res = analyze_run(
        args.run_dir,
        args.out,
        epoch=args.epoch,
        layers=args.layers,
        split=args.split,
        orders=args.orders,
        clamp=args.clamp,
        noise=args.noise,
        noise_repeats=args.noise_repeats,
        max_examples=args.max_examples,
        bins=args.bins,
        seed=args.seed,
        figures=args.figures,
        device=args.device,
        progress=not args.quiet,
    )
    print(_report(res.summary, args.out))
    return 0


def _fmt(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def _report(summary: dict, out: Path) -> str:
    """A short human-readable digest of summary.json (printed to stdout)."""
    s = summary["settings"]
    lines = [f"analysis of {summary.get('run', {}).get('run_dir', '?')} -> {out}",
             f"layers: {', '.join(s['layers'])}; curves on the {s.get('split', '?')} split"]
    acc0 = summary["ablation"].get("unablated_accuracy")
    lines.append(f"unablated accuracy: {_fmt(acc0)}")
    for row in summary["ablation"]["auc"]:
        lines.append(
            f"ablation AUC ({row.get('order')}, {row.get('n_curves')} curves): {_fmt(row.get('auc_mean'))} "
            f"+- {_fmt(row.get('auc_std'))}; normalized {_fmt(row.get('normalized_auc_mean'))} "
            f"+- {_fmt(row.get('normalized_auc_std'))}"
        )
    if summary.get("noise"):
        for row in summary["noise"]["auc"]:
            lines.append(
                f"noise AUC ({row.get('n_curves')} draws), per log10 range and noise-free accuracy: "
                f"{_fmt(row.get('normalized_auc_mean'))} +- {_fmt(row.get('normalized_auc_std'))}"
            )
    for row in summary["units"]:
        if row["layer"] == "all":
            lines.append(f"selectivity (mean, live units): {_fmt(row['selectivity_mean'])}; mutual info "
                         f"{_fmt(row['mutual_info_mean'])} bits; dead units {row['dead']}/{row['units']}")
    for row in summary["correlations"]:
        if row["layer"] == "all":
            lines.append(f"{row['measure']} vs {row['importance']}: Spearman rho={_fmt(row['rho'], '+.3f')} "
                         f"(p={_fmt(row['p_value'], '.2g')}, 95% CI {_fmt(row['ci_low'], '+.2f')}.."
                         f"{_fmt(row['ci_high'], '+.2f')}){' ' + row['note'] if row.get('note') else ''}")
    return "\n".join(lines)
