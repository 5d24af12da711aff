"""The per-run measurements: the building blocks of :func:`singledir.analysis.analyze` and the claims' jobs.

One home for what one run's analysis computes, so ``singledir analyze`` and ``singledir reproduce``
give the same number under the same name: :func:`unit_table` (selectivity, mutual information and
single-unit importance, one join rule), :func:`noise_auc` (the noise areas, each under one name) and
the default noise grid (:data:`singledir.reliance.noise.DEFAULT_SCALES`).

Offers the jobs :func:`ablation`, :func:`noise`, :func:`selectivity`, :func:`importance` -- each takes a
run directory and keyword settings and returns ``{name: DataFrame}``, so
:meth:`~singledir.experiments.runner.Runner.analyze` can run it in a worker and cache the frames next to
the run (plain module-level functions, picklable for spawned workers) -- and the helpers
:func:`run_summary` (one table row per run, read through :func:`singledir.training.read_summary`),
:func:`curve_auc`, :func:`noise_auc`, :func:`eval_data`, :func:`pick_layers`, :func:`fraction_levels`,
:func:`unit_levels`.

Decisions stated in the report:

- Device: every job takes ``device`` (``"cpu"``/``"cuda"``): the run's model is loaded there and the
  measurement runs there (``Context.analyze`` passes the reproduction's device).
- Evaluation examples: a fixed random subset (``torch.Generator`` seeded with 0) of the split; for the
  training split the labels are the run's own (corrupted) labels.
- AUC (:func:`singledir.stats.ablation_auc`): area under accuracy vs fraction of units ablated (x in
  [0, 1]), trapezoid rule, per ablation order; ``nauc`` = AUC / unablated accuracy of the same curve.
- Noise areas (:func:`noise_auc`), per noise repeat, each with one name: ``noise_auc`` (area under
  accuracy vs log10 scale), ``noise_auc_range_normalized`` (that area / the log10 range: the mean
  accuracy over the log-spaced scales; what the label-corruption claim uses) and
  ``noise_auc_base_normalized`` (also divided by the noise-free accuracy; 1 = no loss at any scale; the
  ``normalized_auc`` of :meth:`singledir.reliance.noise.NoiseResult.auc`).
- Noise scales: :data:`singledir.reliance.noise.DEFAULT_SCALES` unless a preset names others.
- Units: selectivity and importance are computed on the same layers and joined one-to-one on
  ``(layer, unit)``; a unit missing from either is an error, never a silently dropped or empty row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from singledir import stats
from singledir.analysis import parse_layers, subset
from singledir.errors import SingledirError


# ---------------------------------------------------------------------------- helpers
def eval_data(data, split: str, examples: int | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of ``split`` ("train": the run's labels, "test": clean), a fixed random subset of ``examples``."""
    if split == "train":
        x, y = data.x_train, data.y_train
    elif split == "test":
        x, y = data.x_test, data.y_test
    else:  # pragma: no cover - settings come from presets
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return subset(x, y, examples, seed)


def pick_layers(model, which) -> list[str]:
    """``"all"`` -> every unit layer; ``"lastN"`` -> the last N; a list -> itself (checked)."""
    return parse_layers(list(which) if isinstance(which, (list, tuple)) else which, model)


def fraction_levels(levels: int) -> list[float]:
    """``levels`` fractions evenly spaced in [0, 1] (0 and 1 included)."""
    return [float(f) for f in np.linspace(0.0, 1.0, int(levels))]


def unit_levels(model, layers: list[str], levels: int) -> list[int]:
    """The numbers of ablated units k nearest to ``levels`` even fractions of the pooled units."""
    from singledir.models import unit_counts

    counts = unit_counts(model)
    total = sum(counts[n] for n in layers)
    return sorted({int(round(f * total)) for f in fraction_levels(levels)})


def curve_auc(curves: pd.DataFrame, by=("order", "repeat")) -> pd.DataFrame:
    """:func:`singledir.stats.ablation_auc` of each curve: ``auc``, ``acc0`` (accuracy at fraction 0), ``nauc``."""
    rows = []
    by = [c for c in by if c in curves.columns]
    for key, g in curves.groupby(by, sort=True):
        a = stats.ablation_auc(g["fraction"], g["accuracy"])
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "auc": a["auc"], "acc0": a["base_accuracy"], "nauc": a["normalized_auc"]})
    return pd.DataFrame(rows)


def noise_auc(curves: pd.DataFrame, base_accuracy: float | None = None) -> pd.DataFrame:
    """Per noise repeat: ``noise_auc``, ``noise_auc_range_normalized`` and (with the noise-free
    ``base_accuracy``) ``noise_auc_base_normalized`` -- see the module docstring."""
    rows = []
    for rep, g in curves.groupby("repeat", sort=True):
        g = g.groupby("scale", as_index=False)["accuracy"].mean()
        rows.append({"repeat": rep, "noise_auc": stats.noise_auc(g["scale"], g["accuracy"]),
                     "noise_auc_range_normalized": stats.noise_auc_range_normalized(g["scale"], g["accuracy"]),
                     "noise_auc_base_normalized": (stats.noise_auc_base_normalized(g["scale"], g["accuracy"], base_accuracy)
                                                   if base_accuracy is not None else float("nan"))})
    return pd.DataFrame(rows)


def unit_table(model, data, names, *, importance: bool = True, clamp: str = "zero", stats_data=None,
               bins: int | None = None, progress: bool = False) -> pd.DataFrame:
    """One row per unit of ``names`` on ``data``: class selectivity and mutual information, and (with
    ``importance``) the accuracy drop and loss rise when the unit alone is ablated, joined one-to-one on
    ``(layer, unit)`` (a unit missing from either side raises: nothing is dropped or left empty silently)."""
    import singledir as sd
    from singledir.reliance.selectivity import DEFAULT_BINS

    sel = sd.class_selectivity(model, data, names, bins=DEFAULT_BINS if bins is None else bins, progress=progress)
    if not importance:
        return sel
    imp = sd.unit_importance(model, data, names, clamp=clamp, stats_data=stats_data, progress=progress)
    keep = [c for c in imp.columns if c not in sel.columns or c in ("layer", "unit")]
    units = sel.merge(imp[keep], on=["layer", "unit"], how="outer", validate="one_to_one", indicator=True)
    lost = units[units["_merge"] != "both"]
    if len(lost):
        raise SingledirError(f"selectivity and importance cover different units ({len(lost)} unmatched, e.g. "
                             f"{lost.iloc[0]['layer']}:{lost.iloc[0]['unit']}); this is a bug")
    return units.drop(columns="_merge").reset_index(drop=True)


def _tag(df: pd.DataFrame, **cols) -> pd.DataFrame:
    df = df.copy()
    for k, v in cols.items():
        df[k] = v
    return df


# ---------------------------------------------------------------------------- per-run analyses
def ablation(run_dir, *, split: str = "train", examples: int | None = 2000, orders: int = 10,
             levels: int = 33, layers="all", epochs: list[int] | None = None, seed: int = 0,
             device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Cumulative random-order ablation curves (clamp to zero) and their AUC, for one run.

    ``epochs``: checkpoint epochs to analyse (default: the final weights only); the rows carry ``epoch``.
    """
    import singledir as sd
    from singledir.training import load_run

    run = load_run(run_dir, device=device)
    x, y = eval_data(run.data, split, examples)
    curves, aucs = [], []
    for epoch in epochs if epochs is not None else [run.epoch]:
        model = run.model if epoch == run.epoch else run.model_at(epoch)
        names = pick_layers(model, layers)
        res = sd.ablation_curves(model, (x, y), names, order="random", repeats=orders, clamp="zero",
                                 levels=unit_levels(model, names, levels), seed=seed, progress=False)
        c = res.curves[[c for c in ("order", "repeat", "k", "fraction", "accuracy", "loss") if c in res.curves]]
        curves.append(_tag(c, epoch=epoch, split=split))
        aucs.append(_tag(curve_auc(c), epoch=epoch))
    return {"curves": pd.concat(curves, ignore_index=True), "auc": pd.concat(aucs, ignore_index=True)}


def noise(run_dir, *, split: str = "train", examples: int | None = 2000, scales=None, repeats: int = 3,
          layers="all", seed: int = 0, device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Accuracy under Gaussian noise of ``scale x`` each unit's training std, added to every unit.

    ``scales``: default :data:`singledir.reliance.noise.DEFAULT_SCALES` (the one default grid)."""
    import singledir as sd
    from singledir.reliance.noise import DEFAULT_SCALES
    from singledir.training import load_run

    run = load_run(run_dir, device=device)
    x, y = eval_data(run.data, split, examples)
    train = eval_data(run.data, "train", examples)
    scales = DEFAULT_SCALES if scales is None else scales
    res = sd.noise_curves(run.model, (x, y), pick_layers(run.model, layers), scales=[float(v) for v in scales],
                          repeats=repeats, stats_data=train, seed=seed, progress=False)
    curves = res.curves[[c for c in ("scale", "repeat", "accuracy", "loss") if c in res.curves]]
    return {"curves": curves, "auc": noise_auc(curves, res.meta.get("base_accuracy"))}


def selectivity(run_dir, *, examples: int | None = None, layers="all", device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Class selectivity index and mutual information of every unit, on the (clean) test set."""
    import singledir as sd
    from singledir.training import load_run

    run = load_run(run_dir, device=device)
    x, y = eval_data(run.data, "test", examples)
    names = pick_layers(run.model, layers)
    df = unit_table(run.model, (x, y), names, importance=False)
    df["depth"] = df["layer"].map({n: i + 1 for i, n in enumerate(run.model.unit_layers)})
    return {"units": df}


def importance(run_dir, *, examples: int | None = None, layers="all", min_units: int = 0,
               device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Selectivity, mutual information and single-unit importance (ablate one unit alone) on the test set.

    Only layers with at least ``min_units`` units are analysed (too few units give no usable correlation).
    """
    import singledir as sd
    from singledir.models import unit_counts
    from singledir.training import load_run

    run = load_run(run_dir, device=device)
    x, y = eval_data(run.data, "test", examples)
    counts = unit_counts(run.model)
    names = [n for n in pick_layers(run.model, layers) if counts[n] >= min_units]
    df = unit_table(run.model, (x, y), names)
    df["depth"] = df["layer"].map({n: i + 1 for i, n in enumerate(run.model.unit_layers)})
    return {"units": df}


def run_summary(run) -> dict:
    """One row of facts about a run (a run directory, a loaded ``Run`` or a ``RunSummary``) for the per-run tables."""
    from singledir.training import read_summary

    if hasattr(run, "summary"):
        run = run.summary
    elif not hasattr(run, "final"):
        run = read_summary(run)
    cfg = run.config
    return {
        "run": run.name,
        "model": cfg["model"],
        "seed": cfg["seed"],
        "corrupt": cfg["corrupt"],
        "epochs": run.epoch,
        "stopped": run.metric("stopped_reason"),
        "target_reached": run.target_reached,
        "train_acc": run.metric("train_acc"),
        "train_acc_clean": run.metric("train_acc_clean"),
        "test_acc": run.metric("test_acc"),
        "test_loss": run.metric("test_loss"),
        "train_loss": run.metric("train_loss"),
        "train_seconds": run.metric("train_seconds"),
    }
