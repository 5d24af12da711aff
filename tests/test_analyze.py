"""``singledir analyze`` and :mod:`singledir.analysis`: outputs, defaults, the run's labels, atomicity, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from singledir import analysis
from singledir.cli import main
from singledir.errors import SingledirError
from singledir.models import build_model

FAST = ["--orders", "2", "--noise-repeats", "1", "--max-examples", "150", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny MLP trained one epoch on digits with half of its training labels corrupted."""
    from singledir.training import train

    out = tmp_path_factory.mktemp("runs") / "mlp"
    train(
        {"dataset": "digits", "model": "mlp", "width": 12, "epochs": 1, "train_subset": 400, "corrupt": 0.5,
         "seed": 3},
        out,
        progress=False,
    )
    return out


@pytest.fixture(scope="module")
def analysed(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis") / "a"
    assert main(["analyze", str(run_dir), "--out", str(out), *FAST]) == 0
    return out


def test_cli_writes_every_output(analysed, capsys):
    names = sorted(p.name for p in analysed.iterdir())
    assert names == sorted(
        ["ablation.parquet", "noise.parquet", "units.parquet", "correlations.parquet", "summary.json",
         "ablation.png", "noise.png", "selectivity_hist.png", "selectivity_vs_importance.png",
         "mutual_info_vs_importance.png"]
    )
    for png in analysed.glob("*.png"):
        assert png.stat().st_size > 2000
    abl = pd.read_parquet(analysed / "ablation.parquet")
    assert {"order", "repeat", "k", "fraction", "accuracy", "loss"} <= set(abl.columns)
    assert sorted(abl.repeat.unique()) == [0, 1] and abl.k.max() == 24  # all levels of 2 x 12 units
    noise = pd.read_parquet(analysed / "noise.parquet")
    assert {"scale", "repeat", "accuracy"} <= set(noise.columns)
    units = pd.read_parquet(analysed / "units.parquet")
    assert {"layer", "unit", "selectivity", "mutual_info", "preferred_class", "dead", "accuracy_drop",
            "loss_increase"} <= set(units.columns)
    assert len(units) == 24 and set(units.layer) == {"hidden.0", "hidden.1"}
    corr = pd.read_parquet(analysed / "correlations.parquet")
    assert set(corr.layer) == {"hidden.0", "hidden.1", "all"}


def test_summary_records_settings_run_and_results(analysed, run_dir):
    s = json.loads((analysed / "summary.json").read_text())
    assert s["singledir_version"]
    assert s["run"]["config"]["seed"] == 3 and s["run"]["config"]["corrupt"] == 0.5
    cfg = json.loads((run_dir / "config.json").read_text())
    assert s["run"]["data"]["fingerprint"] == cfg["data"]["fingerprint"]
    st = s["settings"]
    assert st["layers"] == ["hidden.0", "hidden.1"]  # MLP default: every unit layer
    assert st["split"] == "train" and st["unit_split"] == "test" and st["orders"] == 2
    assert st["max_examples"] == 150 and st["clamp"] == "zero" and st["bins"] == 16
    auc = s["ablation"]["auc"][0]
    assert auc["order"] == "random" and auc["n_curves"] == 2 and 0 <= auc["auc_mean"] <= 1
    assert s["noise"]["auc"][0]["n_curves"] == 1
    assert {r["layer"] for r in s["correlations"]} == {"hidden.0", "hidden.1", "all"}
    assert "summary.json" in s["files"] and "units.parquet" in s["files"]
    json.dumps(s, allow_nan=False)  # strict JSON: NaN written as null


def test_curves_use_the_runs_own_corrupted_labels(analysed, run_dir):
    from singledir.training import load_run

    run = load_run(run_dir)
    x, y = analysis.subset(run.data.x_train, run.data.y_train, 150, 0)
    assert not torch.equal(y, analysis.subset(run.data.x_train, run.clean_train_labels, 150, 0)[1])
    with torch.no_grad():
        acc = (run.model(x).argmax(1) == y).float().mean().item()
    s = json.loads((analysed / "summary.json").read_text())
    assert s["ablation"]["unablated_accuracy"] == pytest.approx(acc)


def test_options_split_layers_no_noise_no_figures(run_dir, tmp_path):
    out = tmp_path / "b"
    rc = main(["analyze", str(run_dir), "--out", str(out), "--split", "test", "--layers", "hidden.1",
               "--no-noise", "--no-figures", "--clamp", "mean", *FAST])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "ablation.parquet", "correlations.parquet", "summary.json", "units.parquet"]
    s = json.loads((out / "summary.json").read_text())
    assert s["settings"]["layers"] == ["hidden.1"] and s["settings"]["split"] == "test"
    assert s["noise"] is None and s["settings"]["clamp"] == "mean"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--layers", "hidden.0,nope"], "unknown layer 'nope'"),
        (["--epoch", "7"], "epoch"),
    ],
)
def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys, extra, match):
    rc = main(["analyze", str(run_dir), "--out", str(tmp_path / "o"), *extra, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("singledir: error:") and match in err[0]
    assert not (tmp_path / "o" / "summary.json").exists()


def test_bad_run_dir_and_out_file(tmp_path, capsys, run_dir):
    assert main(["analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["analyze", str(run_dir), "--out", str(f), "--quiet"]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --orders must be a positive int
        main(["analyze", str(run_dir), "--out", str(tmp_path / "o"), "--orders", "0"])


def test_failed_save_leaves_previous_outputs_and_no_temp_files(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "c"
    res = analysis.analyze_run(run_dir, out, orders=1, noise=False, max_examples=100, n_boot=50, progress=False,
                               figures=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import singledir.reporting.figures as figures

    def boom(*_a, **_k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(figures, "save_figure", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        res.save(out, figures=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched, no .tmp-* left


def test_default_and_parsed_layers():
    mlp = build_model("mlp", (1, 8, 8), 10, width=4, depth=3)
    conv = build_model("convnet", (1, 8, 8), 10, width_mult=0.0625)
    res = build_model("resnet", (1, 8, 8), 10, width_mult=0.0625)
    assert analysis.default_layers(mlp) == ["hidden.0", "hidden.1", "hidden.2"]
    assert analysis.default_layers(conv) == conv.unit_layers[-3:] == ["features.26", "features.29", "features.32"]
    assert analysis.default_layers(res) == ["layer3.1", "layer4.0", "layer4.1"]
    assert analysis.parse_layers("last1", conv) == ["features.32"]
    assert analysis.parse_layers("all", mlp) == mlp.unit_layers
    assert analysis.parse_layers(" hidden.2, hidden.0 ", mlp) == ["hidden.2", "hidden.0"]
    with pytest.raises(SingledirError, match="unknown layer"):
        analysis.parse_layers("hidden.9", mlp)


def test_analyze_works_on_any_model():
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, width=6, seed=0)
    x = torch.randn(90, 1, 4, 4)
    y = torch.arange(90) % 3
    res = analysis.analyze(model, (x, y), (x, y), orders=2, noise=False, n_boot=20, progress=False)
    assert res.noise is None and len(res.units) == 12
    assert np.isclose(res.summary["ablation"]["unablated_accuracy"], res.ablation.meta["base_accuracy"])
    assert set(res.figures()) == {"ablation", "selectivity_hist", "selectivity_vs_importance",
                                  "mutual_info_vs_importance"}


def test_device_is_checked_once_with_a_clear_error(run_dir, tmp_path, capsys, monkeypatch):
    """--device reaches the analysis: asking for CUDA where there is none is one clear line, exit 2."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "d"
    assert main(["analyze", str(run_dir), "--out", str(out), "--device", "cuda", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err and not out.exists()


def test_analysis_runs_on_the_device_asked_for(run_dir, monkeypatch):
    """The model handed to the measurements is on the requested device, and a given Run's model is not moved.

    A second device is simulated with "meta" (the model's tensors have no data there), so a device
    argument that were ignored would leave the model on the CPU and fail the test."""
    import singledir.devices as devices
    import singledir.training.rundir as rundir
    from singledir.training import load_run

    class Reached(Exception):
        pass

    seen = []

    def spy(model, *a, **k):
        seen.append(next(model.parameters()).device)
        raise Reached

    monkeypatch.setattr(analysis, "analyze", spy)
    for module in (devices, rundir):
        monkeypatch.setattr(module, "resolve_device", lambda name: torch.device(name))
    with pytest.raises(Reached):
        analysis.analyze_run(run_dir, orders=1, noise=False, max_examples=60, progress=False, device="meta")
    assert seen == [torch.device("meta")]
    run = load_run(run_dir)
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    with pytest.raises(Reached):
        analysis.analyze_run(run, orders=1, noise=False, max_examples=60, progress=False, device="meta")
    assert seen[-1] == torch.device("meta") and next(run.model.parameters()).device == torch.device("cpu")
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())


# ---------------------------------------------------------------------------- one per-run analysis
def test_analyze_and_the_claims_jobs_share_one_unit_table_and_one_noise_grid(monkeypatch):
    import singledir as sd
    from singledir.analysis import jobs
    from singledir.experiments.presets import NOISE_SCALES
    from singledir.reliance.noise import DEFAULT_SCALES

    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, width=6, seed=0)
    x = torch.randn(90, 1, 4, 4)
    y = torch.arange(90) % 3
    res = analysis.analyze(model, (x, y), (x, y), orders=2, noise_repeats=1, n_boot=20, progress=False)
    pd.testing.assert_frame_equal(res.units, jobs.unit_table(model, (x, y), res.summary["settings"]["layers"],
                                                             stats_data=(x, y)))
    # one default noise grid: analyze, the claims' noise job and the presets
    assert np.allclose(res.summary["settings"]["noise_scales"], DEFAULT_SCALES)
    assert np.allclose(NOISE_SCALES, DEFAULT_SCALES)
    # one name per noise area: the base-normalized area is NoiseResult.auc()'s normalized_auc
    per = pd.DataFrame(res.summary["noise"]["per_repeat"])
    assert {"noise_auc", "noise_auc_range_normalized", "noise_auc_base_normalized"} <= set(per.columns)
    assert per["noise_auc_base_normalized"].mean() == pytest.approx(res.summary["noise"]["auc"][0]["normalized_auc_mean"])

    real = sd.unit_importance
    monkeypatch.setattr(sd, "unit_importance", lambda *a, **k: real(*a, **k).iloc[1:])  # a unit lost: a bug
    with pytest.raises(SingledirError, match="different units"):
        jobs.unit_table(model, (x, y), ["hidden.0"])


def test_noise_job_defaults_to_the_one_grid(run_dir):
    from singledir.analysis import jobs
    from singledir.reliance.noise import DEFAULT_SCALES

    out = jobs.noise(run_dir, examples=60, repeats=1)
    assert np.allclose(sorted(out["curves"]["scale"].unique()), DEFAULT_SCALES)
    assert {"noise_auc", "noise_auc_range_normalized", "noise_auc_base_normalized"} <= set(out["auc"].columns)
