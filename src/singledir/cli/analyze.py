"""``singledir analyze RUN_DIR --out OUT_DIR``: reliance on single directions of one trained network.

Writes into OUT_DIR: ``ablation.parquet`` (cumulative ablation curves), ``noise.parquet`` (noise
curves), ``units.parquet`` (selectivity, mutual information, importance per unit),
``correlations.parquet`` (Spearman rho per layer and pooled), PNG figures and ``summary.json`` (AUCs,
correlations, settings, run config excerpt with seeds and data fingerprint, singledir version).
Everything is written into a hidden temporary folder beside OUT_DIR and swapped in at the end, under
OUT_DIR's writer lock: OUT_DIR always holds one whole analysis (the previous one until the new one is
complete), a second ``analyze`` into the same OUT_DIR gets a one-line error naming the first, and a
killed one leaves only a hidden ``.OUT_DIR.new-*`` folder that the next one removes. See
:mod:`singledir.analysis` for the defaults (the paper's).

Refused with a one-line error, before any work: ``--layers lastN`` with N larger than the model's
number of unit layers, and a layer whose activity on the test split goes below zero (class selectivity
and mutual information are defined for non-negative activity, e.g. after a ReLU: a pre-activation or
the logits would give numbers without meaning -- ``singledir layers RUN_DIR`` lists the unit layers).
"""

from __future__ import annotations

from pathlib import Path

from singledir.cli.argtypes import int_at_least
from singledir.errors import SingledirError


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
                   help="folder for the outputs: new, empty, or an earlier analysis (replaced as a whole when the new "
                        "one is complete)")
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
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="where the run's dataset files are now, if they moved (checked against the run's "
                        "data fingerprint; default: the data_dir recorded in the run)")
    p.add_argument("--device", default="cpu",
                   help="device the model is loaded on and the analysis runs on: cpu (default), cuda or cuda:N")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    p.set_defaults(func=run)


def run(args) -> int:
    from singledir.analysis import analyze_run, subset
    from singledir.cli.outputs import check_out, whole_output
    from singledir.devices import resolve_device
    from singledir.training import load_run

    out = check_out(args.out)
    dev = resolve_device(args.device)
    with whole_output(out, "analysis") as tmp:  # the lock first: a second writer fails before any work
        run = load_run(Path(args.run_dir).absolute(), epoch=args.epoch, device=dev, data_dir=args.data_dir)
        layers = check_layer_spec(args.layers, run.model)
        test = subset(run.data.x_test, run.data.y_test, args.max_examples, args.seed)
        check_nonnegative(run.model, test[0], layers)
        res = analyze_run(
            run,
            layers=layers,
            split=args.split,
            orders=args.orders,
            clamp=args.clamp,
            noise=args.noise,
            noise_repeats=args.noise_repeats,
            max_examples=args.max_examples,
            bins=args.bins,
            seed=args.seed,
            figures=args.figures,
            device=dev,
            progress=not args.quiet,
        )
        res.save(tmp, figures=args.figures, progress=not args.quiet)
    print(_report(res.summary, out))
    return 0


def check_layer_spec(spec, model) -> list[str]:
    """The layers a ``--layers`` value names; ``lastN`` with N above the number of unit layers is an error."""
    from singledir.analysis import parse_layers
    from singledir.models import unit_layers

    if isinstance(spec, str) and spec.strip().startswith("last") and spec.strip()[4:].isdigit():
        n, have = int(spec.strip()[4:]), len(unit_layers(model))
        if n > have:
            raise SingledirError(f"--layers {spec.strip()}: the model has only {have} unit layers; "
                                 f"pass last{have} or all (see `singledir layers RUN_DIR`)")
    return parse_layers(spec, model, getattr(model, "config", {}).get("name"))


def negative_activity(model, x, layers, batch_size: int = 1024) -> dict[str, float]:
    """``{layer: min activity}`` for each of ``layers`` whose activity on inputs ``x`` goes below zero."""
    import torch

    from singledir.devices import model_device

    mins: dict[str, float] = {}

    def hook(name):
        def record(_module, _inputs, out):
            low = float(out.detach().min()) if out.numel() else 0.0
            mins[name] = min(mins.get(name, 0.0), low)
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in layers]
    was_training, dev = model.training, model_device(model)
    try:
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(dev))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: v for n, v in mins.items() if v < 0}


def check_nonnegative(model, x, layers) -> None:
    """One-line error when a layer's activity goes below zero (selectivity and MI would mean nothing)."""
    bad = negative_activity(model, x, layers)
    if bad:
        which = ", ".join(f"{n} (min {v:.3g})" for n, v in bad.items())
        raise SingledirError(
            f"layer activity below zero in {which}: class selectivity and mutual information are defined for "
            f"non-negative activity (e.g. after a ReLU); choose post-ReLU unit layers (`singledir layers RUN_DIR`)"
        )


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
