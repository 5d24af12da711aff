"""`singledir reproduce`: the smoke preset end to end, the report's structure, numbers recomputable from the
stored runs, the run cache after an interruption, the process pool, and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from singledir import stats
from singledir.cli import main
from singledir.analysis import jobs
from singledir.experiments import CLAIMS, verdicts
from singledir.experiments.runner import run_name

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


def _reproduce(out, *extra) -> int:
    return main(["reproduce", *extra, "--preset", "smoke", "--jobs", "1", "--quiet", "--out", str(out)])


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _table(doc: dict, claim: str, name: str) -> pd.DataFrame:
    return pd.DataFrame(doc["claims"][claim]["tables"][name])


def _part(doc: dict, claim: str, name: str) -> dict:
    return next(p for p in doc["claims"][claim]["parts"] if p["name"] == name)


# ---------------------------------------------------------------------------- the smoke preset end to end
@pytest.mark.slow
def test_smoke_end_to_end(tmp_path):
    """One smoke reproduction of every claim (digits, tiny networks; ~20 s), then every check on it.

    (One test rather than a module fixture, so that pytest-xdist never runs the reproduction twice.)
    """
    smoke = tmp_path / "smoke"
    assert _reproduce(smoke) == 0
    check_report_structure(smoke)
    check_label_corruption_numbers_recompute_from_runs(smoke)
    check_other_claims_numbers_recompute(smoke)
    check_rerun_after_interruption_retrains_only_the_missing_run(smoke, tmp_path / "rerun")


def check_report_structure(smoke):
    doc = _results(smoke)
    for key in ("schema", "command", "preset", "settings", "code", "machine", "started", "finished",
                "wall_seconds", "summary", "claims", "runs", "data", "cache", "errors", "complete"):
        assert key in doc, key
    assert doc["complete"] and doc["preset"] == "smoke" and doc["errors"] == []
    assert doc["code"]["singledir"] and "torch" in doc["machine"]
    # every interval names its method, and the header lists the methods that appear
    missing = []

    def walk(obj, where):
        if isinstance(obj, dict):
            if "ci_low" in obj and "ci_method" not in obj:
                missing.append(where)
            for k, v in obj.items():
                walk(v, f"{where}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")

    walk(doc["claims"], "claims")
    assert not missing, missing[:5]
    assert "Fisher z" in doc["statistics"]["interval_methods"]
    assert "percentile bootstrap" in doc["statistics"]["interval_methods"]
    assert "interval methods" in (smoke / "index.html").read_text()
    # every decided claim says how stable its verdict is
    for name, claim in doc["claims"].items():
        if claim["verdict"] in verdicts.VERDICTS:
            assert claim["stability"], name
    assert "How stable is this verdict" in (smoke / "index.html").read_text()
    assert [s["claim"] for s in doc["summary"]] == list(CLAIMS)
    # one n per line: a correlation and its power numbers state n once (issue 16 item 14)
    lines = [s["key_statistic"] for s in doc["summary"]]
    lines += [p["statistic"] for c in doc["claims"].values() for p in c["parts"]]
    twice = [t for t in lines if len(re.findall(r"\bn ?= ?\d", t)) > 1]
    assert not twice, twice[:3]
    # the summary gives each claim's deciding numbers: over training, the seeds' verdicts and the early-
    # stopping interval that the non-inferiority margin is judged on (not only the rho of every seed)
    td = next(s["key_statistic"] for s in doc["summary"] if s["claim"] == "training-dynamics")
    n_seeds = len(doc["claims"]["training-dynamics"]["settings"]["seeds"])
    assert f"of {n_seeds} reproduced" in td and "95% CI" in td and "margin -0.01" in td, td
    for name, claim in doc["claims"].items():
        assert claim["verdict"] in VERDICTS, name
        for key in ("statement", "rule", "reason", "key_statistic", "parts", "settings", "runs", "wall_seconds"):
            assert claim[key] is not None, (name, key)
        assert claim["figures"], name
        for fig in claim["figures"]:
            assert (smoke / fig["png"]).stat().st_size > 1000 and (smoke / fig["svg"]).is_file()
        for run in claim["runs"]:
            assert run in doc["runs"] and (smoke / "runs" / run / "COMPLETE").is_file()
    for info in doc["runs"].values():
        assert info["data_fingerprint"] in doc["data"]

    page = (smoke / "index.html").read_text()
    assert "id='summary-table'" in page and page.count("<tr>") > len(CLAIMS)
    assert "data:image/png;base64," in page  # self-contained
    for name, claim in doc["claims"].items():
        start = page.index(f"<section class='claim' id='{name}'>")
        section = page[start:page.index("</section>", start)]
        assert f">{claim['verdict']}</span>" in section and "Rule (fixed in the code before this run)" in section
    md = (smoke / "report.md").read_text()
    assert "## Summary" in md and all(f"## {name}:" in md for name in CLAIMS)
    assert "figures/label-corruption-mlp-ablation.png" in md


# ---------------------------------------------------------------------------- numbers are recomputable
def _spearman_scipy(x, y) -> tuple[float, float, float]:
    """rho and p recomputed without singledir.stats: scipy's rho; p under the report's rule (exact
    permutation for n <= 8 done here by brute force, scipy's permutation test up to 10, scipy's t above),
    with the tolerance each p allows (0 for exact ones, Monte Carlo error for random permutations)."""
    import itertools

    from scipy import stats as sps

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho = float(sps.spearmanr(x, y).statistic)
    n = len(x)
    if n > 10:
        return rho, float(sps.spearmanr(x, y).pvalue), 1e-12
    rx, ry = sps.rankdata(x), sps.rankdata(y)
    if n <= 8:
        perms = np.array(list(itertools.permutations(range(n))))
        vals = np.array([np.corrcoef(rx, ry[p])[0, 1] for p in perms])
        return rho, float(np.mean(np.abs(vals) >= abs(rho) - 1e-12)), 1e-12
    res = sps.permutation_test((ry,), lambda v: sps.spearmanr(rx, v).statistic, permutation_type="pairings",
                               n_resamples=20000, random_state=1)
    return rho, float(res.pvalue), 0.02


def check_label_corruption_numbers_recompute_from_runs(smoke):
    doc = _results(smoke)
    claim = doc["claims"]["label-corruption"]
    nets = _table(doc, "label-corruption", "MLP networks")
    # the verdict's correlation, from the per-run values
    rho, p, tol = _spearman_scipy(nets["corrupt"], nets["auc"])
    part = _part(doc, "label-corruption", "MLP ablation")["numbers"]
    assert rho == pytest.approx(part["rho"]) and p == pytest.approx(part["p"], abs=tol)
    # a per-run value, from the stored run (reloaded and ablated again, bypassing the cache)
    row = nets.iloc[-1]
    again = jobs.ablation(smoke / "runs" / row["run"], split="train", **claim["settings"]["ablation"])
    assert again["auc"]["auc"].mean() == pytest.approx(row["auc"], abs=1e-9)
    from singledir.training import load_run

    run = load_run(smoke / "runs" / row["run"])
    assert run.config["corrupt"] == row["corrupt"]
    assert run.history["train_acc"].iloc[-1] == pytest.approx(row["train_acc"])
    assert doc["runs"][row["run"]]["data_fingerprint"] == run.data.fingerprint


def check_other_claims_numbers_recompute(smoke):
    doc = _results(smoke)
    ens = _table(doc, "ensemble", "networks")
    rho, _, _ = _spearman_scipy(ens["nauc"], ens["test_acc"])
    assert rho == pytest.approx(_part(doc, "ensemble", "AUC vs test accuracy")["numbers"]["rho"])
    assert np.allclose(ens["gap"], ens["train_acc"] - ens["test_acc"])

    grid = _table(doc, "hyperparameters", "networks")
    _, p, tol = _spearman_scipy(grid["nauc"], grid["test_acc"])
    assert p == pytest.approx(_part(doc, "hyperparameters", "nAUC vs test accuracy")["numbers"]["p"], abs=tol)

    ckpt = _table(doc, "training-dynamics", "checkpoints")
    from singledir.training import load_run

    for row in _table(doc, "training-dynamics", "per network").to_dict("records"):
        hist = load_run(smoke / "runs" / row["run"]).history.set_index("epoch")
        a = ckpt[ckpt["run"] == row["run"]]
        rho, _, _ = _spearman_scipy(a["auc"], hist.loc[a["epoch"], "test_loss"])
        assert rho == pytest.approx(row["rho"])

    bn = _table(doc, "batchnorm", "networks")
    from scipy import stats as sps

    mw = sps.mannwhitneyu(bn.loc[bn["batchnorm"], "nauc"], bn.loc[~bn["batchnorm"], "nauc"], alternative="two-sided")
    assert mw.pvalue == pytest.approx(_part(doc, "batchnorm", "ablation robustness")["numbers"]["p"])


# ---------------------------------------------------------------------------- cache / interruption
def check_rerun_after_interruption_retrains_only_the_missing_run(smoke, out):
    shutil.copytree(smoke, out)  # copy2 keeps mtimes
    before = _results(out)
    victim = out / "runs" / before["claims"]["ensemble"]["runs"][0]
    for name in ("COMPLETE", "final.json", "model.safetensors"):  # killed after the last epoch's state was saved
        (victim / name).unlink()
    others = [p for p in (out / "runs").rglob("*")  # (the victim's lease and journal are its own)
              if p.is_file() and victim not in p.parents and not p.name.startswith(victim.name)]
    mtimes = {p: p.stat().st_mtime_ns for p in others}
    report_mtime = (out / "results.json").stat().st_mtime_ns

    assert _reproduce(out, "ensemble") == 0  # the claim that owns the interrupted run

    assert (victim / "COMPLETE").is_file()
    assert {p: p.stat().st_mtime_ns for p in others} == mtimes  # nothing else was rewritten
    after = _results(out)
    assert (out / "results.json").stat().st_mtime_ns != report_mtime
    assert after["cache"]["trained_now"] == [victim.name]
    assert list(after["claims"]) == ["ensemble"] and after["complete"]
    # the resumed run is bit-identical, so every number is the same
    assert after["claims"]["ensemble"]["parts"] == before["claims"]["ensemble"]["parts"]
    assert after["claims"]["ensemble"]["tables"] == before["claims"]["ensemble"]["tables"]


# ---------------------------------------------------------------------------- errors, names, rules
@pytest.mark.parametrize(
    "argv, words",
    [
        (["reproduce", "no-such-claim", "--out", "X"], ["unknown claim", "label-corruption"]),
        (["reproduce", "--preset", "huge", "--out", "X"], ["unknown preset", "smoke"]),
        (["reproduce", "--dataset", "imagenet", "--out", "X"], ["unknown dataset"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, words, capsys, tmp_path):
    argv = [a if a != "X" else str(tmp_path / "r") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("singledir: error:")
    assert all(w in err for w in words)
    assert not (tmp_path / "r").exists()


def test_bad_jobs_is_a_usage_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "--jobs", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "--jobs must be a positive integer" in capsys.readouterr().err


def test_a_claim_that_raises_is_an_error_with_its_traceback_and_exit_1(tmp_path, monkeypatch):
    import importlib

    def boom(ctx):
        raise ZeroDivisionError("a bug in the claim")

    monkeypatch.setattr(importlib.import_module(CLAIMS["ensemble"]), "run", boom)
    out = tmp_path / "rep"
    assert _reproduce(out, "ensemble") == 1
    doc = _results(out)
    claim = doc["claims"]["ensemble"]
    assert claim["verdict"] == verdicts.ERROR == "error" and doc["summary"][0]["verdict"] == "error"
    assert claim["verdict"] not in verdicts.VERDICTS
    assert doc["errors"] and "ZeroDivisionError" in doc["errors"][0]
    page = (out / "index.html").read_text()
    assert "Traceback (most recent call last)" in page and "a bug in the claim" in page
    assert "Traceback (most recent call last)" in (out / "report.md").read_text()


def test_a_claim_that_does_not_apply_is_skipped_not_inconclusive(tmp_path):
    import importlib

    from singledir.experiments.context import Context

    ctx = Context("batchnorm", "smoke", {"skip": "the ConvNets of this claim need image inputs"}, None,
                  tmp_path, progress=False)
    result = importlib.import_module(CLAIMS["batchnorm"]).run(ctx)
    assert result.verdict == verdicts.SKIPPED == "skipped"
    assert "image inputs" in result.reason


def test_run_names_are_deterministic_and_complete():
    a = dict(dataset="digits", model="mlp", width=32, epochs=3)
    assert run_name(a) == run_name(dict(a, lr=1e-3))  # defaults filled in before hashing
    assert run_name(a) == run_name(dict(a, data_dir="/elsewhere", device="cuda"))  # not part of the result
    assert run_name(a) != run_name(dict(a, seed=1)) != run_name(dict(a, lr=1e-2))
    assert run_name(a).startswith("mlp-digits-w32-p0-s0-")


def test_run_names_change_with_the_training_code(monkeypatch):
    from singledir.experiments import codehash, runner

    a = dict(dataset="digits", model="mlp", width=32, epochs=3)
    before = run_name(a)
    assert runner.training_code_hash() == codehash._code_hash(codehash._package_files(codehash.TRAINING_CODE))
    assert any(f.name == "grouped.py" for f in codehash._package_files(codehash.TRAINING_CODE))
    monkeypatch.setattr(runner, "training_code_hash", lambda: "another-engine")
    assert run_name(a) != before  # a run trained by other training code is never taken from the cache


def test_verdict_rules():
    assert verdicts.sign_verdict(-0.9, 0.01, -1)[0] == "reproduced"
    assert verdicts.sign_verdict(0.9, 0.01, -1)[0] == "not reproduced"
    assert verdicts.sign_verdict(-0.9, 0.2, -1)[0] == "inconclusive"
    assert verdicts.sign_verdict(-0.9, 0.01, -1, target_reached=False)[0] == "inconclusive"
    assert verdicts.sign_verdict(-0.9, 0.01, -1, n=3, min_n=4)[0] == "inconclusive"
    assert verdicts.sign_verdict(float("nan"), 0.01, -1)[0] == "inconclusive"
    assert verdicts.combine({"a": "reproduced", "b": "reproduced"})[0] == "reproduced"
    assert verdicts.combine({"a": "reproduced", "b": "not reproduced"})[0] == "not reproduced"
    assert verdicts.combine({"a": "reproduced", "b": "inconclusive"})[0] == "inconclusive"
    # the verdicts read singledir.stats results: a perfectly monotone 6-point relation (exact p = 2/720)
    c = stats.spearman([0, 0.2, 0.4, 0.6, 0.8, 1.0], [6, 5, 4, 3, 2, 1])
    assert verdicts.sign_verdict(c["rho"], c["p"], -1, n=c["n"])[0] == "reproduced"
    undefined = stats.spearman([1, 1, 1], [1, 2, 3])
    assert verdicts.sign_verdict(undefined["rho"], undefined["p"], -1)[0] == "inconclusive"


# ---------------------------------------------------------------------------- the process pool
@pytest.mark.slow
def test_parallel_jobs_give_the_same_numbers(tmp_path):
    """Training and analysis in 2 spawned worker processes give exactly the in-process numbers."""
    pooled, inline = tmp_path / "pooled", tmp_path / "inline"
    assert main(["reproduce", "hyperparameters", "--preset", "smoke", "--jobs", "2", "--quiet", "--out", str(pooled)]) == 0
    assert _reproduce(inline, "hyperparameters") == 0
    doc = _results(pooled)
    assert list(doc["claims"]) == ["hyperparameters"] and doc["machine"]["jobs"] == 2
    ours = _table(doc, "hyperparameters", "networks").set_index("run")
    ref = _table(_results(inline), "hyperparameters", "networks").set_index("run")
    assert list(ours.index) == list(ref.index)
    assert np.allclose(ours["auc"], ref["auc"]) and np.allclose(ours["test_acc"], ref["test_acc"])


def test_device_reaches_the_per_run_jobs_and_is_checked_first(tmp_path, monkeypatch):
    """Context.analyze hands the reproduction's device to every per-run job; absent CUDA fails before any work."""
    import torch

    from singledir.experiments.context import Context
    from singledir.experiments.reproduce import reproduce
    from singledir.experiments.runner import Runner
    from singledir.errors import SingledirError

    runs = tmp_path / "runs"
    with Runner(runs, jobs=1, progress=False, device="cpu") as runner:
        ctx = Context("ensemble", "smoke", {}, runner, tmp_path / "figures", progress=False)
        [d] = ctx.train([dict(dataset="digits", model="mlp", width=8, epochs=1)], "train")
        [res] = ctx.analyze(_record_device, [d], {"tag": 1}, desc="record")
    assert res["device"]["device"].tolist() == ["cpu"]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SingledirError, match="CUDA is not available"):
        reproduce(tmp_path / "r", ["ensemble"], preset="smoke", device="cuda", progress=False)
    assert not (tmp_path / "r").exists()


def _record_device(run_dir, *, tag, device="not given"):
    return {"device": pd.DataFrame({"device": [device]})}


def test_report_opening_defines_every_rule_kind_the_claims_use_and_rules_carry_no_history():
    import importlib

    from singledir.reporting.report import render_html, render_markdown

    for name, mod in CLAIMS.items():
        rule = importlib.import_module(mod).RULE
        assert "Changed after" not in rule and "changed after" not in rule, name  # history is kept apart
    claim = {"title": "t", "statement": "s", "rule": "r", "rule_history": "Changed after a run X.",
             "verdict": "not reproduced", "reason": "why", "parts": [], "figures": []}
    doc = {"preset": "smoke", "claims": {"ensemble": claim}, "summary": []}
    page, md = render_html(Path("."), doc), render_markdown(doc)
    for text in (page, md):
        assert "excludes every rho of at least 0.3" in text  # not reproduced by the equivalence bound
        assert "inside (-0.3, 0.3)" in text  # the no-effect claims
        assert "significant the other way" in text
        assert "Rule history" in text and "Changed after a run X." in text
        assert "declared before the results" not in text


def test_report_tables_put_key_columns_first_fold_long_ones_and_keep_pipes():
    from singledir.reporting.report import render_html, render_markdown

    rows = [{"run": f"mlp-fashion-w128-p0-s{i}-abcdef1234", "train_seconds": 1.0, "seed": i, "nauc": 0.5,
             "test_acc": 0.9} for i in range(20)]
    claim = {"title": "t", "statement": "s", "rule": "r", "verdict": "reproduced", "reason": "why", "parts": [],
             "figures": [], "tables": {"networks": rows}}
    doc = {"preset": "smoke", "claims": {"ensemble": claim},
           "summary": [{"claim": "ensemble", "title": "t", "verdict": "reproduced",
                        "key_statistic": "partial rho(a, b | c) = 0.1", "wall_seconds": 1.0}]}
    page, md = render_html(Path("."), doc), render_markdown(doc)
    head = page[page.index("<h3>networks</h3>"):]
    assert head.index("<th>seed</th>") < head.index("<th>nauc</th>") < head.index("<th>run</th>")
    assert "<details><summary>20 rows" in head and "class=\"id\"" in head
    assert "partial rho(a, b \\| c)" in md and "(a, b / c)" not in md


def test_report_tables_key_columns_first_run_id_unwrapped_long_tables_folded():
    """Per-network tables (issue 16 item 14): what a row is and its deciding numbers first (a p-value next
    to its rho, the network and depth before the layer), the run id last in an unwrapped cell, tables of
    more than FOLD_ROWS rows folded, and '|' escaped in report.md, never turned into '/'."""
    from singledir.reporting.report import CSS, FOLD_ROWS, _html_table, _md_table

    rows = [{"p": 0.01, "layer": "features.2", "measure": "selectivity", "rho": 0.5, "network": "convnet",
             "depth": 1, "n_units": 8, "statistic": "rho(x | z)", "run": f"convnet-digits-x0.125-p0-s{i}-0123456789"}
            for i in range(FOLD_ROWS + 1)]
    header = _md_table(rows).splitlines()[0]
    assert header == ("| network | depth | layer | measure | rho | p | n_units | statistic | run |"), header
    assert "rho(x \\| z)" in _md_table(rows) and "rho(x / z)" not in _md_table(rows)
    page = _html_table(rows)
    assert page.startswith("<details>") and f'<td class="id">{rows[0]["run"]}</td>' in page
    assert "td.id{white-space:nowrap" in CSS
    assert "<details>" not in _html_table(rows[:FOLD_ROWS])
