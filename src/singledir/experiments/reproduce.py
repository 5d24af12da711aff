"""The main job: run the paper's claims with a preset and write the report (``singledir reproduce``).

Reads top to bottom: pick claims and settings -> check the data is there -> for each claim, train its
networks (cached under ``REPORT_DIR/runs``), analyse them (cached per run), compute its statistics and
verdict, draw its figures -> write ``index.html``, ``report.md`` and ``results.json`` (after every
claim, so an interrupted reproduction still leaves a report of what finished).

A claim that fails with a bug does not stop the others: it is reported with the outcome ``error`` (never a
verdict) and its traceback, and :func:`reproduce` lists it in ``doc["errors"]`` (the CLI then exits 1). A
claim that does not apply to the settings returns the outcome ``skipped`` with its reason. User
errors (:class:`SingledirError`, e.g. missing data) stop the job with their one-line message.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from singledir import stats
from singledir.errors import SingledirError
from singledir.experiments import CLAIMS, OPT_IN_CLAIMS, verdicts
from singledir.experiments.context import ClaimResult, Context
from singledir.experiments.presets import NOTES, get_preset, shift_seeds, training_dicts
from singledir.experiments.runner import Runner, run_name, timer
from singledir.io import jsonable


def check_claims(claims) -> list[str]:
    """The claims to run (all of :data:`CLAIMS` when none given; opt-in ones only when named), in the
    canonical order; unknown -> SingledirError."""
    if not claims:
        return list(CLAIMS)
    known = {**CLAIMS, **OPT_IN_CLAIMS}
    bad = [c for c in claims if c not in known]
    if bad:
        raise SingledirError(f"unknown claim {', '.join(map(repr, bad))}; choose from {', '.join(known)}")
    return [c for c in known if c in set(claims)]


def machine(device: str, jobs: int) -> dict:
    import torch

    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
            "cuda": torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None,
            "jobs": jobs}


def code_version() -> dict:
    from singledir import __version__
    from singledir.training.rundir import git_revision

    return {"singledir": __version__, "git_revision": git_revision()}


def _check_data(settings: dict, data_dir) -> list[str]:
    """Fail fast (one line) when a dataset is missing; cap subsets larger than their dataset (noted)."""
    from singledir.data import load_dataset

    notes, sizes = [], {}
    for cfg in training_dicts(settings):
        name = cfg["dataset"]
        if name not in sizes:
            ds = load_dataset(name, data_dir=data_dir)
            sizes[name] = (len(ds.y_train), len(ds.y_test))
        for key, size in zip(("train_subset", "test_subset"), sizes[name]):
            if cfg.get(key) is not None and cfg[key] >= size:
                notes.append(f"{key}={cfg[key]} is not smaller than {name}'s {size} examples: all are used")
                cfg[key] = None
    return sorted(set(notes))


def _error_result(name: str, settings: dict, err: BaseException, ctx: Context) -> ClaimResult:
    module = importlib.import_module({**CLAIMS, **OPT_IN_CLAIMS}[name])
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return ClaimResult(name, module.TITLE, module.STATEMENT, module.RULE, verdicts.ERROR,
                       f"the experiment raised {type(err).__name__}: {err} (traceback below)",
                       f"error: {type(err).__name__}: {err}", [], settings,
                       ctx.figures,
                       notes=[tb], runs=ctx.runs, error=f"{type(err).__name__}: {err}")


def _runs_info(runs_dir: Path, names) -> tuple[dict, dict]:
    """Per-run config/final numbers and the data fingerprints, read back from the run directories."""
    from singledir.training import read_summary
    from singledir.training.rundir import is_complete

    runs, data = {}, {}
    for name in dict.fromkeys(names):
        d = runs_dir / name
        if not is_complete(d):
            continue
        summary = read_summary(d)
        cfg, final = summary.config, summary.final
        info = cfg.get("data", {})
        fp = info.get("fingerprint")
        if fp:
            data[fp] = info
        keys = ("dataset", "model", "train_subset", "test_subset", "data_seed", "corrupt", "corrupt_method",
                "seed", "width", "width_mult", "dropout", "batchnorm", "optimizer", "lr", "batch_size",
                "weight_decay", "epochs", "until_train_acc", "max_epochs", "checkpoints")
        runs[name] = {"config": {k: cfg.get(k) for k in keys}, "final": final, "data_fingerprint": fp,
                      "corruption": cfg.get("corruption"), "git_revision": cfg.get("git_revision")}
    return runs, data


def reproduce(out, claims=None, *, preset: str = "quick", dataset: str | None = None, data_dir=None,
              device: str = "cpu", jobs: int = 1, progress: bool = True, command: str | None = None,
              backend: str = "local", address: str | None = None, seed_offset: int = 0) -> dict:
    """Run ``claims`` (all when None) with ``preset`` and write the report to ``out``; return results.json's dict.

    ``device`` (``"cpu"``/``"cuda"``) is where every network is trained and analysed; ``backend``
    (``"local"`` or ``"ray"``, with ``address``) is where the jobs run.
    ``seed_offset``: added to every network's seed (see :func:`singledir.experiments.presets.shift_seeds`).
    """
    from tqdm.auto import tqdm

    from singledir.reporting.report import write_report

    from singledir.devices import resolve_device

    claims = check_claims(claims)
    settings = shift_seeds(get_preset(preset, dataset), seed_offset)  # checks the preset and dataset names
    for c in claims:  # opt-in claims bring their own settings (no training configs for the run cache)
        if c in OPT_IN_CLAIMS:
            settings[c] = importlib.import_module(OPT_IN_CLAIMS[c]).preset_settings(preset)
    device = str(resolve_device(device))  # one clear error before any work when CUDA is absent
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_notes = _check_data({c: settings[c] for c in claims if c not in OPT_IN_CLAIMS}, data_dir)

    elapsed = timer()
    doc = {
        "schema": 1,
        "command": command,
        "preset": preset,
        "dataset_override": dataset,
        "preset_notes": [NOTES[preset], *data_notes]
        + ([f"dataset override {dataset}: every network uses {dataset} instead of the preset's dataset"]
           if dataset else [])
        + ([f"seed offset {seed_offset}: every network's seed is the preset's plus {seed_offset}"] if seed_offset else []),
        "seed_offset": seed_offset,
        "claims_requested": claims,
        "settings": {c: settings[c] for c in claims},
        "code": code_version(),
        "statistics": {"p_value_rule": stats.P_VALUE_RULE,
                       "intervals": f"{stats.CONFIDENCE:.0%} central; each records its method as ci_method beside "
                                    "it (methods used: see interval methods)",
                       "alpha": stats.ALPHA},
        "machine": machine(device, jobs),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    results: list[ClaimResult] = []
    errors = []
    with Runner(out / "runs", jobs=jobs, progress=progress, data_dir=data_dir, device=device, backend=backend,
                address=address) as runner, \
            tqdm(total=len(claims), desc="reproduce", unit="claim", position=0, disable=not progress,
                 dynamic_ncols=True) as bar:
        for name in claims:
            bar.set_postfix_str(name)
            ctx = Context(name, preset, settings[name], runner, out / "figures", progress)
            t, cpu0, wcpu0 = timer(), time.process_time(), runner.worker_cpu_seconds
            try:
                result = importlib.import_module({**CLAIMS, **OPT_IN_CLAIMS}[name]).run(ctx)
            except SingledirError:
                raise
            except Exception as err:  # noqa: BLE001 - a bug in one claim must not lose the others
                result = _error_result(name, settings[name], err, ctx)
                errors.append(f"{name}: {result.error}")
            result.rule_history = getattr(importlib.import_module(CLAIMS[name]), "RULE_HISTORY", None)
            if result.verdict in verdicts.VERDICTS:
                result.stability = verdicts.stability_lines(result.parts)
            result.wall_seconds = t()
            result.cpu_seconds = time.process_time() - cpu0 + runner.worker_cpu_seconds - wcpu0
            results.append(result)
            msg = (f"[{name}] {result.verdict} -- {result.key_statistic} ({result.wall_seconds:.0f} s wall, "
                   f"{result.cpu_seconds:.0f} s CPU)")
            tqdm.write(msg, file=sys.stderr)
            bar.update(1)
            _finish(doc, results, errors, out, elapsed(), runner)
            write_report(out, doc)
    doc["complete"] = True
    write_report(out, doc)
    return doc


def interval_methods(obj, counts: dict | None = None) -> dict[str, int]:
    """``{ci_method: how many intervals use it}`` over every dict nested in ``obj`` (the report's header)."""
    counts = {} if counts is None else counts
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.endswith("ci_method") and isinstance(v, str):
                counts[v] = counts.get(v, 0) + 1
            else:
                interval_methods(v, counts)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            interval_methods(v, counts)
    return counts


def _finish(doc: dict, results: list[ClaimResult], errors: list[str], out: Path, wall: float, runner) -> None:
    names = [r for res in results for r in res.runs]
    runs, data = _runs_info(out / "runs", names)
    doc.update(jsonable(dict(
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        wall_seconds=wall,
        cpu_seconds=sum(r.cpu_seconds for r in results),
        complete=False,
        summary=[{"claim": r.name, "title": r.title, "verdict": r.verdict, "key_statistic": r.key_statistic,
                  "wall_seconds": r.wall_seconds, "cpu_seconds": r.cpu_seconds} for r in results],
        claims={r.name: r.to_dict() for r in results},
        runs=runs,
        data=data,
        cache={"trained_now": sorted(set(runner.trained)), "reused": sorted(set(runner.reused)),
               "analyses": runner.analyses, "backend": runner.backend_name},
        errors=errors,
    )))
    methods = interval_methods(doc["claims"])
    doc["statistics"]["interval_methods"] = "; ".join(f"{m} ({n})" for m, n in sorted(methods.items())) or "none"


__all__ = ["reproduce", "check_claims", "run_name"]
