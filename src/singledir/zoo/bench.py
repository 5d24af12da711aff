"""The zoo benchmark: train a grid of models, compute every measure on each, score the measures, report.

Offers:

- :func:`run_zoo` -- ``run_zoo(out, preset="quick", dataset=None, data_dir=None, jobs=1, device="cpu")``:
  trains the grid with the run cache and job pool of ``singledir reproduce``
  (:class:`singledir.experiments.runner.Runner`, runs in ``OUT/runs``), computes the measures through the
  same cache (``runner.analyze``), writes ``models.parquet``, ``scores.json``, ``index.html`` and
  ``report.md``. A killed zoo resumes: finished runs and measure tables are reused.
- :func:`measure_frame` -- the cached per-run analysis (``{"measures": DataFrame}``).
- :func:`models_table` -- one row per model: axes, seed, accuracies, gap, converged, measures.
- :func:`score_measures` -- every protocol for every measure on the converged models.

Example::

    from singledir.zoo.bench import run_zoo
    scores = run_zoo("zoo-quick", preset="quick", jobs=2)
    scores["measures"]["reliance_ablation_nauc"]["psi"]
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from singledir.errors import SingledirError
from singledir.zoo import protocols
from singledir.zoo.grid import ZooPreset, get_preset, grid_configs, with_dataset

__all__ = ["measure_frame", "models_table", "run_zoo", "score_measures"]


def measure_frame(run_dir, settings: dict, device: str = "cpu") -> dict[str, pd.DataFrame]:
    """Every registered measure of one run (for ``Runner.analyze``; failures are rows with ``error``)."""
    from singledir.measures import MeasureSettings, measure_run

    df = measure_run(run_dir, settings=MeasureSettings(**settings), device=device)
    return {"measures": df[["name", "raw", "complexity", "seconds", "error"]].astype({"error": "object"})}


def models_table(run_dirs, frames, axes: list[str]) -> tuple[pd.DataFrame, dict[str, dict[str, str]]]:
    """(one row per model, {measure: {run name: reason it is missing}})."""
    from singledir.training import rundir as rd

    rows, missing = [], {}
    for d, fr in zip(run_dirs, frames):
        d = Path(d)
        cfg = rd.read_config(d)
        final = json.loads((d / rd.FINAL).read_text(encoding="utf-8"))
        row = {"run": d.name, **{a: cfg[a] for a in axes}, "seed": cfg["seed"],
               "train_acc": final["train_acc"], "test_acc": final["test_acc"],
               "gap": final["train_acc"] - final["test_acc"], "epochs": final["epoch"],
               "converged": final.get("stopped_reason") == "until_train_acc",
               "n_test": int(cfg.get("data", {}).get("num_test", 0))}
        for r in fr["measures"].itertuples(index=False):
            row[r.name] = r.complexity
            row[f"{r.name}_raw"] = r.raw
            row[f"{r.name}_seconds"] = r.seconds
            if isinstance(r.error, str) and r.error:
                missing.setdefault(r.name, {})[d.name] = r.error
        rows.append(row)
    return pd.DataFrame(rows), missing


def _nan_to_none(v):
    return None if isinstance(v, float) and math.isnan(v) else v


def score_measures(df: pd.DataFrame, measures: list[str], axes: list[str], *, n_test: int,
                   n_boot: int = 1000, seed: int = 0) -> dict:
    """Every protocol for every measure over the models of ``df`` (the converged ones).

    A measure's missing models are left out of its scores (their count is reported); a protocol that
    cannot be computed (e.g. CMI on a grid with missing cells) gets ``None`` and its reason."""
    out = {}
    for name in measures:
        d = df[np.isfinite(df[name].astype(float))] if name in df else df.iloc[:0]
        entry = {"column": name, "n_models": int(len(d)), "kendall_tau": None, "kendall_tau_ci": [None, None],
                 "psi": None, "psi_per_axis": {}, "cmi": None, "cmi_error": None, "sign_error_mean": None,
                 "sign_error_max": None, "sign_error_per_axis": {}, "n_environments": 0,
                 "seconds_per_model": _nan_to_none(float(df[f"{name}_seconds"].mean())) if f"{name}_seconds" in df else None,
                 "error": None}
        out[name] = entry
        if len(d) < 3:
            entry["error"] = f"only {len(d)} model(s) have a value; at least 3 are needed"
            continue
        try:
            entry["kendall_tau"] = protocols.kendall_tau(d[name], d["gap"])
            entry["kendall_tau_ci"] = list(protocols.kendall_tau_ci(d[name], d["gap"], n_boot=n_boot, seed=seed))
            psi, per = protocols.granulated_psi(d, name, "gap", axes)
            entry["psi"], entry["psi_per_axis"] = _nan_to_none(psi), {k: _nan_to_none(v) for k, v in per.items()}
            se = protocols.sign_error(d, name, "gap", axes, n_test=n_test)
            entry["sign_error_mean"], entry["sign_error_max"] = _nan_to_none(se["mean"]), _nan_to_none(se["max"])
            entry["sign_error_per_axis"] = {k: {kk: _nan_to_none(vv) for kk, vv in v.items()} for k, v in se["per_axis"].items()}
            entry["n_environments"] = se["n_environments"]
        except SingledirError as err:
            entry["error"] = str(err)
            continue
        try:
            entry["cmi"] = protocols.conditional_mutual_information(d, name, "gap", axes)
        except SingledirError as err:
            entry["cmi_error"] = str(err)
    return out


def run_zoo(out, preset: str | ZooPreset = "quick", *, dataset: str | None = None, data_dir=None, jobs: int = 1,
            device: str = "cpu", progress: bool = True, n_boot: int = 1000, backend: str = "local",
            address: str | None = None) -> dict:
    """Train, measure, score and report a zoo into ``out`` (resumable); returns the scores document."""
    from singledir.experiments.runner import Runner
    from singledir.io import atomic_write_json, atomic_write_parquet, jsonable
    from singledir.measures import MEASURES, MeasureSettings
    from singledir.zoo.report import write_report

    t0 = time.perf_counter()
    p = with_dataset(preset if isinstance(preset, ZooPreset) else get_preset(preset), dataset)
    from singledir.devices import resolve_device

    resolve_device(device)  # a one-line error before any work (unknown device, or CUDA missing)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    axes = list(p.axes)
    configs = grid_configs(p)
    settings = MeasureSettings(**p.measures)
    stages = ["train", "measure", "score + report"]
    from tqdm.auto import tqdm

    with Runner(out / "runs", jobs=jobs, progress=progress, data_dir=data_dir, device=device, backend=backend,
                address=address) as runner, \
            tqdm(total=len(stages), desc=f"zoo {p.name}", unit="stage", disable=not progress, position=0,
                 dynamic_ncols=True) as bar:
        bar.set_postfix_str(stages[0])
        dirs = runner.train(configs, desc=f"train {len(configs)} models")
        bar.update(1)
        bar.set_postfix_str(stages[1])
        params = {"settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__}, "device": device}
        frames = runner.analyze(measure_frame, dirs, params, desc="measures")
        bar.update(1)
        bar.set_postfix_str(stages[2])
        table, missing = models_table(dirs, frames, axes)
        atomic_write_parquet(out / "models.parquet", table)
        names = list(MEASURES)
        conv = table[table["converged"]]
        unconverged = table.loc[~table["converged"], ["run", *axes, "seed", "train_acc", "epochs"]].to_dict("records")
        n_test = int(table["n_test"].iloc[0]) if len(table) else 0
        flat = [a for a in axes if conv[a].nunique() < 2]
        if flat:
            scores = {}
            score_error = (f"after dropping {len(unconverged)} unconverged models, axis {flat[0]!r} has fewer than 2 "
                           f"values; raise the epoch cap (max_epochs) or change the grid")
        else:
            scores = score_measures(conv, names, axes, n_test=n_test, n_boot=n_boot)
            score_error = None
        doc = {
            "preset": p.name,
            "description": p.description,
            "dataset": p.dataset,
            "axes": axes,
            "grid": {a: list(v) for a, v in p.axes.items()},
            "seeds": list(p.seeds),
            "base_config": p.base,
            "measure_settings": params["settings"],
            "n_models": int(len(table)),
            "n_converged": int(len(conv)),
            "n_test": n_test,
            "n_train": int(p.base.get("train_subset") or 0) or None,
            "unconverged": unconverged,
            "missing": missing,
            "score_error": score_error,
            "measures": scores,
            "trained_now": len(runner.trained),
            "reused": len(runner.reused),
            "wall_seconds": time.perf_counter() - t0,
        }
        doc = jsonable(doc)
        atomic_write_json(out / "scores.json", doc)
        write_report(out, doc, table)
        bar.update(1)
    return doc
