"""Analyse one trained network: ablation and noise curves, selectivity, importance, their correlation.

:func:`analyze` works on any model; :func:`analyze_run` on a run directory made by ``singledir train``
(it is what ``singledir analyze`` calls). Both return an :class:`Analysis` whose :meth:`Analysis.save`
writes ``ablation.parquet``, ``noise.parquet``, ``units.parquet``, ``correlations.parquet``, PNG figures
and ``summary.json`` into a folder, atomically (``summary.json`` is moved in last and only when every
other file is in place, so a ``summary.json`` always describes a complete analysis).

Defaults follow the paper (Morcos et al., ICLR 2018):

- layers: every unit layer of an MLP; the last three unit layers of a ConvNet or ResNet
  (:func:`default_layers`);
- cumulative ablation in ``orders`` (10) random orders over the layers' units pooled, clamped to zero,
  on the **training** split with the run's own (possibly corrupted) labels; noise on all units of the
  same layers, scaled by each unit's std over the training inputs;
- class selectivity, mutual information and single-unit importance (accuracy drop) on the **test**
  split (clean labels); Spearman correlations between them per layer and pooled;
- ``max_examples``: a fixed random subset (``torch.Generator`` seeded with ``seed``, indices kept in
  order) of each split, the same convention as the claims' per-run jobs.

The measurements themselves come from :mod:`singledir.analysis.jobs`, the one per-run analysis that
``singledir reproduce`` caches too: the unit table (:func:`~.jobs.unit_table`, one join rule), the noise
areas under their one name each (:func:`~.jobs.noise_auc`) and the one default noise grid
(:data:`singledir.reliance.noise.DEFAULT_SCALES`).
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from singledir.errors import SingledirError
from singledir.io import atomic_write_json, jsonable

__all__ = ["Analysis", "analyze", "analyze_run", "default_layers", "parse_layers", "subset"]

SPLITS = ("train", "test")

# run config fields copied into summary.json
_CONFIG_KEYS = (
    "dataset", "model", "width", "depth", "width_mult", "dropout", "batchnorm", "train_subset",
    "test_subset", "data_seed", "corrupt", "corrupt_method", "corrupt_seed", "seed", "optimizer", "lr",
    "momentum", "weight_decay", "batch_size", "epochs", "until_train_acc", "max_epochs",
)

FIGURES = {
    "ablation": "ablation curves (accuracy vs fraction of units ablated), mean +- std over orders",
    "noise": "accuracy vs noise scale (log x), mean +- std over noise draws",
    "selectivity_hist": "class selectivity index of every unit, per layer (test split)",
    "selectivity_vs_importance": "selectivity vs accuracy drop when the unit alone is ablated",
    "mutual_info_vs_importance": "mutual information vs accuracy drop when the unit alone is ablated",
}


# ---------------------------------------------------------------------------------------------- helpers
def default_layers(model, model_name: str | None = None) -> list[str]:
    """The paper's layers: every unit layer of an MLP, the last three of any other network."""
    from singledir.models import unit_layers

    names = unit_layers(model)
    name = model_name or getattr(model, "config", {}).get("name")
    if name == "mlp":
        return names
    return names[-3:]


def parse_layers(spec, model, model_name: str | None = None) -> list[str]:
    """Layers from a CLI-style spec: None (defaults), ``"all"``, ``"lastN"``, or ``"a,b,c"`` / a list.

    Names are checked against the model (unknown names raise :class:`SingledirError` listing valid ones).
    """
    from singledir.models import unit_layers
    from singledir.reliance.inputs import validate_layers

    if spec is None:
        return default_layers(model, model_name)
    if isinstance(spec, str):
        s = spec.strip()
        if s == "all":
            return unit_layers(model)
        if s.startswith("last") and s[4:].isdigit():
            n = int(s[4:])
            if n < 1:
                raise SingledirError(f"layers {s!r}: N of 'lastN' must be >= 1")
            return unit_layers(model)[-n:]
        spec = [p.strip() for p in s.split(",") if p.strip()]
    return validate_layers(model, list(spec))


def subset(x: torch.Tensor, y: torch.Tensor, max_examples: int | None, seed: int = 0):
    """``(x, y)`` or a fixed random subset of ``max_examples`` of them (seeded; original order kept)."""
    if max_examples is None or max_examples >= len(x):
        return x, y
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))[: int(max_examples)]
    idx = idx.sort().values
    return x[idx], y[idx]


def _records(df: pd.DataFrame) -> list[dict]:
    return jsonable(df)


def _check_out_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SingledirError(f"out_dir {out} is a file; pass a folder for the analysis outputs")
    return out


def _info(msg: str, progress: bool) -> None:
    if progress:
        print(f"analyze: {msg}", file=sys.stderr, flush=True)


def _check_int(value, name: str, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise SingledirError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------- result
@dataclass
class Analysis:
    """Results of :func:`analyze` / :func:`analyze_run`.

    ``ablation`` (:class:`~singledir.reliance.ablation.AblationResult`: ``.curves``, ``.auc()``),
    ``noise`` (:class:`~singledir.reliance.noise.NoiseResult` or None; its ``normalized_auc`` is
    :func:`singledir.stats.noise_auc_base_normalized`),
    ``units`` (one row per unit: selectivity, mutual_info, preferred_class, mean_activity, dead,
    accuracy_drop, loss_increase, ...), ``correlations`` (see
    :func:`singledir.reliance.correlation.selectivity_vs_importance`) and ``summary`` (JSON-able dict).
    """

    ablation: object
    noise: object | None
    units: pd.DataFrame
    correlations: pd.DataFrame
    summary: dict = field(default_factory=dict)

    def figures(self) -> dict:
        """``{name: matplotlib Figure}`` -- see :data:`FIGURES` for what each one shows."""
        from singledir.reporting.figures import plot_curves, plot_histogram, plot_scatter

        s = self.summary.get("settings", {})
        layers = ", ".join(s.get("layers", []))
        split = s.get("split", "train")
        acc_label = "training accuracy (run's labels)" if split == "train" else "test accuracy"
        figs = {}
        curves = self.ablation.curves
        figs["ablation"] = plot_curves(
            curves, "fraction", "accuracy", group="order" if "order" in curves else None,
            ylabel=acc_label, title=f"Cumulative ablation ({s.get('clamp', 'zero')} clamp): {layers}",
        )
        if self.noise is not None:
            figs["noise"] = plot_curves(
                self.noise.curves, "scale", "accuracy", logx=True, ylabel=acc_label,
                title=f"Gaussian noise on all units: {layers}",
            )
        live = self.units[~self.units["dead"]] if "dead" in self.units else self.units
        if len(live):
            figs["selectivity_hist"] = plot_histogram(
                live, "selectivity", group="layer", bins=20, range=(0.0, 1.0),
                title=f"Class selectivity (test split, {int(self.units['dead'].sum())} dead units left out)",
            )
            if "accuracy_drop" in live:
                figs["selectivity_vs_importance"] = plot_scatter(
                    live, "selectivity", "accuracy_drop", group="layer", title="Selectivity vs importance"
                )
                figs["mutual_info_vs_importance"] = plot_scatter(
                    live, "mutual_info", "accuracy_drop", group="layer",
                    title="Mutual information vs importance",
                )
        return figs

    def save(self, out_dir, *, figures: bool = True, progress: bool = False) -> list[Path]:
        """Write the tables, figures (PNG) and ``summary.json`` into ``out_dir`` atomically.

        Everything is written into a hidden temporary folder inside ``out_dir`` first; then an old
        ``summary.json`` is removed, the other files are moved into place, and ``summary.json`` comes
        last. Returns the final paths.
        """
        from singledir.reporting.figures import save_figure

        out = _check_out_dir(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-analyze-", dir=out))
        try:
            names = []
            self.ablation.curves.to_parquet(tmp / "ablation.parquet", index=False)
            names.append("ablation.parquet")
            if self.noise is not None:
                self.noise.curves.to_parquet(tmp / "noise.parquet", index=False)
                names.append("noise.parquet")
            self.units.to_parquet(tmp / "units.parquet", index=False)
            self.correlations.to_parquet(tmp / "correlations.parquet", index=False)
            names += ["units.parquet", "correlations.parquet"]
            if figures:
                _info("drawing figures", progress)
                for name, fig in self.figures().items():
                    save_figure(fig, tmp / name, formats=("png",))
                    names.append(f"{name}.png")
            summary = dict(self.summary)
            summary["files"] = sorted(names) + ["summary.json"]
            atomic_write_json(tmp / "summary.json", summary)
            # an old summary.json must not describe a mix of old and new files
            old = out / "summary.json"
            if old.exists():
                old.unlink()
            for name in names:
                os.replace(tmp / name, out / name)
            os.replace(tmp / "summary.json", out / "summary.json")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return [out / n for n in summary["files"]]


# ---------------------------------------------------------------------------------------------- analyses
def analyze(
    model,
    curve_data,
    unit_data,
    layers=None,
    *,
    stats_data=None,
    orders: int = 10,
    clamp: str = "zero",
    noise: bool = True,
    noise_repeats: int = 5,
    scales=None,
    bins: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    progress: bool = True,
) -> Analysis:
    """Run every measurement on ``model``.

    ``curve_data``: ``(x, y)`` for the ablation and noise curves (the paper: training inputs with the
    run's labels); ``unit_data``: ``(x, y)`` for selectivity, mutual information and single-unit
    importance (the paper: the test set); ``stats_data``: ``(x, y)`` whose unit statistics set the noise
    scale and the mean clamp (default ``curve_data``; the paper: the training set). ``layers`` default:
    :func:`default_layers`. ``orders`` random ablation orders; ``clamp`` "zero" or "mean";
    ``noise_repeats`` noise draws per scale over the engine's default ``scales``.
    """
    import singledir as sd
    from singledir import stats
    from singledir.analysis import jobs
    from singledir.reliance.correlation import selectivity_vs_importance
    from singledir.reliance.selectivity import DEFAULT_BINS

    orders = _check_int(orders, "orders", 1)  # named as here; the measurements call it ``repeats``
    noise_repeats = _check_int(noise_repeats, "noise_repeats", 1)
    names = default_layers(model) if layers is None else parse_layers(layers, model)
    bins = DEFAULT_BINS if bins is None else bins
    stats_data = curve_data if stats_data is None else stats_data
    timing = {}

    n_curve = len(curve_data[1]) if isinstance(curve_data, (tuple, list)) else None
    _info(f"cumulative ablation: {orders} random orders over the units of {', '.join(names)}"
          + (f" ({n_curve} examples)" if n_curve else ""), progress)
    t = time.perf_counter()
    abl = sd.ablation_curves(model, curve_data, names, order="random", repeats=orders, clamp=clamp, seed=seed,
                             stats_data=stats_data, progress=progress)
    timing["ablation_s"] = time.perf_counter() - t

    nres = None
    if noise:
        _info(f"noise: {noise_repeats} draws per scale on every unit of {', '.join(names)}", progress)
        t = time.perf_counter()
        kw = {} if scales is None else {"scales": scales}
        nres = sd.noise_curves(model, curve_data, names, repeats=noise_repeats, stats_data=stats_data, seed=seed,
                               progress=progress, **kw)
        timing["noise_s"] = time.perf_counter() - t

    _info("class selectivity, mutual information and single-unit importance (unit data)", progress)
    t = time.perf_counter()
    units = jobs.unit_table(model, unit_data, names, clamp=clamp, stats_data=stats_data, bins=bins,
                            progress=progress)
    timing["units_s"] = time.perf_counter() - t

    corr = selectivity_vs_importance(units=units, n_boot=n_boot, seed=seed)

    abl_auc = abl.auc()
    summary = {
        "singledir_version": sd.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "layers": names,
            "orders": orders,
            "clamp": clamp,
            "noise": bool(noise),
            "noise_repeats": noise_repeats if noise else None,
            "noise_scales": sorted(set(nres.curves["scale"].tolist())) if nres is not None else None,
            "bins": bins,
            "n_boot": n_boot,
            "seed": seed,
            "curve_examples": n_curve,
            "unit_examples": len(unit_data[1]) if isinstance(unit_data, (tuple, list)) else None,
            "mutual_info_estimator": f"quantile bins ({bins}) of non-zero activity + a zero bin, plug-in, bits",
            "correlation": "Spearman rho, percentile bootstrap CI over units; dead units left out",
            "p_value_rule": stats.P_VALUE_RULE,
            "noise_normalized_auc": "noise.auc's normalized_auc = noise.per_repeat's noise_auc_base_normalized: "
                                    "area under accuracy vs log10(scale) / log10 range / noise-free accuracy "
                                    "(singledir.stats.noise_auc_base_normalized)",
        },
        "ablation": {"auc": _records(abl_auc), "unablated_accuracy": _unablated(abl.curves)},
        "noise": {"auc": _records(nres.auc()),
                  "per_repeat": _records(jobs.noise_auc(nres.curves, nres.meta.get("base_accuracy")))}
        if nres is not None else None,
        "units": _unit_summary(units),
        "correlations": _records(corr),
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
    }
    return Analysis(ablation=abl, noise=nres, units=units, correlations=corr, summary=summary)


def _unablated(curves: pd.DataFrame):
    if "k" not in curves:
        return None
    first = curves[curves["k"] == 0]
    return float(first["accuracy"].mean()) if len(first) else None


def _unit_summary(units: pd.DataFrame) -> list[dict]:
    rows = []
    for layer, g in list(units.groupby("layer", sort=False)) + [("all", units)]:
        live = g[~g["dead"]]
        row = {
            "layer": layer,
            "units": len(g),
            "dead": int(g["dead"].sum()),
            "selectivity_mean": float(live["selectivity"].mean()) if len(live) else None,
            "selectivity_median": float(live["selectivity"].median()) if len(live) else None,
            "mutual_info_mean": float(live["mutual_info"].mean()) if len(live) else None,
        }
        if "accuracy_drop" in g:
            row["accuracy_drop_mean"] = float(live["accuracy_drop"].mean()) if len(live) else None
            row["accuracy_drop_max"] = float(live["accuracy_drop"].max()) if len(live) else None
        rows.append(row)
    return rows


def analyze_run(
    run,
    out_dir=None,
    *,
    epoch: int | None = None,
    layers=None,
    split: str = "train",
    orders: int = 10,
    clamp: str = "zero",
    noise: bool = True,
    noise_repeats: int = 5,
    scales=None,
    max_examples: int | None = None,
    bins: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    figures: bool = True,
    device=None,
    progress: bool = True,
) -> Analysis:
    """:func:`analyze` a training run (a run directory or a loaded ``Run``); save into ``out_dir`` if given.

    ``split``: data of the ablation and noise curves -- ``"train"`` (the run's own, possibly corrupted,
    labels; the paper's choice) or ``"test"``. Selectivity and importance always use the test split;
    unit statistics (noise scale, mean clamp) the training inputs. ``max_examples`` caps each split
    (fixed random subset from ``seed``). ``layers``: None (paper defaults), ``"all"``, ``"lastN"``,
    ``"a,b"`` or a list. ``summary.json`` records the settings, the run's config excerpt (seeds,
    corruption), the data fingerprint and the singledir version. ``device``: where the run's model is
    loaded and the analysis runs (``"cpu"``/``"cuda"``; default: the CPU, or where a given ``Run``'s
    model already is -- a given Run's model is copied, never moved).
    """
    from singledir.devices import model_device, resolve_device
    from singledir.reliance.inputs import check_choice
    from singledir.training import load_run

    check_choice(split, SPLITS, "split")
    if out_dir is not None:
        _check_out_dir(out_dir)  # before the work, not after it
    if max_examples is not None:
        max_examples = _check_int(max_examples, "max_examples", 1)
    _check_int(seed, "seed", 0)
    dev = None if device is None else resolve_device(device)
    if not hasattr(run, "model"):
        _info(f"loading run {run}" + (f" (epoch {epoch})" if epoch is not None else ""), progress)
        run = load_run(run, epoch=epoch, device=dev)
    elif epoch is not None and epoch != run.epoch:
        run = load_run(run.run_dir, epoch=epoch, device=dev or model_device(run.model))
    model = run.model
    if dev is not None and model_device(model) != dev:
        model = copy.deepcopy(model).to(dev)  # the caller's Run keeps its model where it was
    cfg = run.config
    names = parse_layers(layers, model, cfg.get("model"))
    data = run.data
    train = subset(data.x_train, data.y_train, max_examples, seed)
    test = subset(data.x_test, data.y_test, max_examples, seed)
    curve = train if split == "train" else test

    res = analyze(model, curve, test, names, stats_data=train, orders=orders, clamp=clamp, noise=noise,
                  noise_repeats=noise_repeats, scales=scales, bins=bins, n_boot=n_boot, seed=seed,
                  progress=progress)
    res.summary["settings"].update(
        {"split": split, "curve_labels": "run's training labels (corrupted where the run corrupted them)"
         if split == "train" else "clean test labels", "unit_split": "test", "stats_split": "train",
         "max_examples": max_examples, "device": str(model_device(model))}
    )
    final = getattr(run, "final", {}) or {}
    res.summary["run"] = {
        "run_dir": str(run.run_dir),
        "epoch": run.epoch,
        "config": {k: cfg.get(k) for k in _CONFIG_KEYS if k in cfg},
        "data": {**(cfg.get("data") or {}), "fingerprint": data.fingerprint, "name": data.name,
                 "num_train": int(len(data.y_train)), "num_test": int(len(data.y_test))},
        "corrupted_fraction": float(run.corrupted_mask.float().mean()) if len(run.corrupted_mask) else 0.0,
        "final": {k: final.get(k) for k in ("train_acc", "train_acc_clean", "test_acc", "test_loss",
                                            "stopped_reason") if k in final},
        "git_revision": cfg.get("git_revision"),
    }
    # put the run section first for readers of summary.json
    res.summary = {"singledir_version": res.summary.pop("singledir_version"), "run": res.summary.pop("run"),
                   **res.summary}
    if out_dir is not None:
        res.save(out_dir, figures=figures, progress=progress)
    return res
