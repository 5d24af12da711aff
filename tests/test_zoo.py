"""The zoo benchmark: presets, the smoke zoo end to end, resume after a kill, bad input, the CLIs."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from singledir.cli import main
from singledir.errors import SingledirError
from singledir.experiments.runner import Runner
from singledir.measures import MEASURES
from singledir.zoo import protocols
from singledir.zoo.bench import measure_frame, run_zoo, score_measures
from singledir.zoo.grid import PRESETS, ZooPreset, grid_configs


def test_presets_are_complete_grids_of_the_promised_size():
    assert PRESETS["smoke"].n_models >= 16
    quick = PRESETS["quick"]
    assert quick.n_models >= 64 and len(quick.axes) >= 5 and len(quick.seeds) >= 4
    assert all(2 <= len(v) <= 3 for v in quick.axes.values())
    assert PRESETS["paper"].n_models >= 500
    for p in PRESETS.values():
        cfgs = grid_configs(p)
        assert len(cfgs) == p.n_models
        assert all(c["until_train_acc"] == 0.99 for c in cfgs)
        df = pd.DataFrame(cfgs)
        protocols.check_complete_grid(df, list(p.axes))  # raises if a cell were missing


def test_a_preset_axis_with_one_value_is_an_error():
    with pytest.raises(SingledirError, match="axis 'width' has fewer than 2 values"):
        ZooPreset(name="x", dataset="digits", base={}, axes={"width": [8]}, seeds=(0,))
    with pytest.raises(SingledirError, match="unknown zoo axis 'colour'"):
        ZooPreset(name="x", dataset="digits", base={}, axes={"colour": [1, 2]}, seeds=(0,))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "smoke"
    doc = run_zoo(out, "smoke", jobs=1, progress=False, n_boot=200)
    return out, doc


def test_smoke_zoo_outputs(smoke):
    out, doc = smoke
    for f in ("models.parquet", "scores.json", "index.html", "report.md", "figures/psi_heatmap.png"):
        assert (out / f).is_file(), f
    table = pd.read_parquet(out / "models.parquet")
    axes = list(PRESETS["smoke"].axes)
    assert len(table) == 16
    for col in [*axes, "seed", "train_acc", "test_acc", "gap", "converged"]:
        assert col in table
    pd.testing.assert_series_equal(table["gap"], table["train_acc"] - table["test_acc"], check_names=False)
    for name in MEASURES:
        assert name in table and f"{name}_raw" in table
    # reliance enters as 1 - nAUC
    ok = table["reliance_ablation_nauc_raw"].notna()
    assert ((table.loc[ok, "reliance_ablation_nauc"] - (1 - table.loc[ok, "reliance_ablation_nauc_raw"])).abs() < 1e-12).all()
    scores = json.loads((out / "scores.json").read_text())
    assert scores["axes"] == axes
    m = scores["measures"]["reliance_ablation_nauc"]
    for key in ("column", "kendall_tau", "kendall_tau_ci", "psi", "psi_per_axis", "cmi", "sign_error_mean",
                "sign_error_max", "seconds_per_model"):
        assert key in m
    conv = table[table["converged"]]
    # the stored scores are the protocols applied to the stored table
    assert m["kendall_tau"] == pytest.approx(protocols.kendall_tau(conv["reliance_ablation_nauc"], conv["gap"]))
    assert m["psi"] == pytest.approx(protocols.granulated_psi(conv, "reliance_ablation_nauc", "gap", axes)[0])
    assert m["kendall_tau_ci"][0] <= m["kendall_tau"] <= m["kendall_tau_ci"][1]
    md = (out / "report.md").read_text()
    assert "reliance_ablation_nauc" in md and "published" in md.lower() and "zoos" in md


def test_smoke_zoo_resumes_after_a_kill(smoke, tmp_path):
    out, doc = smoke
    copy = tmp_path / "zoo"
    shutil.copytree(out, copy)
    runs = sorted(p for p in (copy / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))
    # "kill" one run before it finished, and lose another run's measure table
    (runs[0] / "COMPLETE").unlink()
    shutil.rmtree(runs[1] / "analysis")
    doc2 = run_zoo(copy, "smoke", jobs=1, progress=False, n_boot=200)
    assert doc2["trained_now"] == 1 and doc2["reused"] == 15
    a = pd.read_parquet(out / "models.parquet").set_index("run")
    b = pd.read_parquet(copy / "models.parquet").set_index("run")
    # the retrained run reproduces its weights, so every number comes back (seconds aside)
    cols = [c for c in a.columns if not c.endswith("_seconds")]
    pd.testing.assert_frame_equal(a[cols].sort_index(), b[cols].sort_index())


def test_measure_frame_goes_through_the_run_cache(smoke):
    out, _ = smoke
    run = sorted(p for p in (out / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    params = {"settings": {"n_reliance": 50, "reliance_repeats": 1, "n_flatness": 50, "mc_samples": 1,
                           "search_depth": 2, "sharpness_depth": 2, "sharpness_steps": 1, "n_jacobian": 8,
                           "n_db": 50, "seed": 0}, "device": "cpu"}
    with Runner(out / "runs", jobs=1, progress=False) as r:
        first = r.analyze(measure_frame, [run], params)[0]["measures"]
    with Runner(out / "runs", jobs=1, progress=False) as r:
        again = r.analyze(measure_frame, [run], params)[0]["measures"]
    pd.testing.assert_frame_equal(first, again)
    assert list(first["name"]) == list(MEASURES)


def test_scores_on_an_incomplete_grid_name_the_missing_cells(smoke):
    out, _ = smoke
    table = pd.read_parquet(out / "models.parquet")
    axes = list(PRESETS["smoke"].axes)
    holed = table[~((table.width == 64) & (table.depth == 1) & (table.lr == 0.001) & (table.batch_size == 32))]
    s = score_measures(holed, ["margin_p10"], axes, n_test=360, n_boot=50)
    assert s["margin_p10"]["cmi"] is None
    assert "no model at width=64, depth=1, lr=0.001, batch_size=32" in s["margin_p10"]["cmi_error"]
    assert s["margin_p10"]["kendall_tau"] is not None


def test_cli_zoo_bad_preset(capsys):
    assert main(["zoo", "--preset", "huge", "--out", "/tmp/never-written"]) == 2
    assert "unknown zoo preset 'huge'" in capsys.readouterr().err


def test_cli_measures_on_a_run(smoke, capsys, tmp_path):
    out, _ = smoke
    run = sorted(p for p in (out / "runs").iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    target = tmp_path / "m.json"
    assert main(["measures", str(run), "--only", "margin_p10,path_norm", "--json", str(target)]) == 0
    text = capsys.readouterr().out
    assert "margin_p10" in text and "path_norm" in text
    assert [r["name"] for r in json.loads(target.read_text())] == ["margin_p10", "path_norm"]


def test_cli_measures_bad_run_dir(capsys, tmp_path):
    assert main(["measures", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_unknown_dataset_fails_before_any_training(tmp_path):
    with pytest.raises(SingledirError, match="unknown dataset 'nope'"):
        run_zoo(tmp_path / "z", "smoke", dataset="nope", progress=False)
    assert not any((tmp_path / "z" / "runs").glob("*/COMPLETE"))


def test_zoo_report_flags_a_constant_measure_and_uses_the_report_style(tmp_path, monkeypatch):
    import pandas as pd

    from singledir.reporting.report import CSS
    from singledir.zoo import report as zoo_report
    from singledir.zoo.report import write_report

    monkeypatch.setattr(zoo_report, "_figures", lambda *a: [])  # the figures need a whole zoo
    doc = {"preset": "t", "description": "d", "grid": {"lr": [0.1, 0.01]}, "axes": ["lr"], "seeds": [0],
           "base_config": {"until_train_acc": 0.99, "max_epochs": 5}, "n_converged": 3, "n_models": 3, "n_test": 100,
           "unconverged": [], "missing": {}, "measure_settings": {}, "wall_seconds": 1.0, "trained_now": 0,
           "reused": 3, "score_error": None,
           "measures": {"flat": {"psi": 0.0, "kendall_tau": 0.0}, "path_norm": {"psi": 0.5, "kendall_tau": 0.4}}}
    table = pd.DataFrame({"converged": [True] * 3, "flat": [1.0, 1.0, 1.0], "path_norm": [1.0, 2.0, 3.0]})
    write_report(tmp_path, doc, table)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "index.html").read_text()
    assert "Constant over the scored models" in md and ": flat." in md and "path_norm." not in md
    assert "| flat (constant) |" in md and "path_norm (constant)" not in md  # flagged in its row too
    assert CSS.strip()[:40] in page


def test_zoo_report_groups_measures_by_family_and_cites_published_numbers(tmp_path, monkeypatch):
    import pandas as pd

    from singledir.zoo import report as zoo_report
    from singledir.zoo.report import REFERENCES, leaderboard, write_report

    monkeypatch.setattr(zoo_report, "_figures", lambda *a: [])  # the figures need a whole zoo
    psi = {"distance_from_init": 0.5, "margin_p10": 0.4, "reliance_ablation_nauc": 0.3, "path_norm": 0.1}
    doc = {"preset": "t", "description": "d", "grid": {"lr": [0.1, 0.01]}, "axes": ["lr"], "seeds": [0],
           "base_config": {"until_train_acc": 0.99, "max_epochs": 5}, "n_converged": 3, "n_models": 3, "n_test": 100,
           "unconverged": [], "missing": {}, "measure_settings": {}, "wall_seconds": 1.0, "trained_now": 0,
           "reused": 3, "score_error": None, "measures": {n: {"psi": v, "kendall_tau": v} for n, v in psi.items()}}
    table = pd.DataFrame({"converged": [True] * 3, **{n: [1.0, 2.0, 3.0] for n in psi}})
    board = leaderboard(doc)
    assert dict(zip(board["measure"], board["family"]))["path_norm"] == "norm-based"
    write_report(tmp_path, doc, table)
    md, page = (tmp_path / "report.md").read_text(), (tmp_path / "index.html").read_text()
    # families in the order of their best measure, the two norm-based measures together, ranks kept global
    order = ["**norm-based**", "| 1 | distance_from_init |", "| 4 | path_norm |", "**margin-based**",
             "| 2 | margin_p10 |", "**reliance on single directions**", "**reliance_ablation_nauc**"]
    at = [md.index(s) for s in order]
    assert at == sorted(at), md
    assert page.count("<tr class='family'>") == 3
    # a published number carries the number of its source, and the source is listed under the table
    k = list(REFERENCES).index("pgdl") + 1
    row = next(line for line in md.splitlines() if "| distance_from_init |" in line)
    assert "4.92" in row and f"[{k}]" in row
    assert f"[{k}] PGDL baselines" in md and "cadurosar/pgdl README" in md and "cadurosar/pgdl README" in page
    assert "from memory" not in md
