"""`singledir train` and `singledir layers` end to end, resume through the CLI, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from singledir.cli import main
from singledir.training import train

FAST = ["--dataset", "digits", "--width", "16", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *FAST, "--epochs", "3", "--corrupt", "0.2", "--checkpoints", "1", "--out", str(out)]) == 0
    return out


def test_train_end_to_end(cli_run, capsys, tmp_path):
    for name in ("config.json", "history.csv", "model.safetensors", "corruption.safetensors", "state.pt",
                 "final.json", "COMPLETE", "checkpoints/epoch_0000.safetensors", "checkpoints/epoch_0001.safetensors"):
        assert (cli_run / name).is_file(), name
    cfg = json.loads((cli_run / "config.json").read_text())
    assert cfg["dataset"] == "digits" and cfg["width"] == 16 and cfg["epochs"] == 3 and cfg["corrupt"] == 0.2
    assert cfg["lr"] == 1e-3 and cfg["optimizer"] == "adam" and cfg["batch_size"] == 128 and cfg["model"] == "mlp"
    # a second identical command gives identical weights, and prints a one-line summary
    capsys.readouterr()
    out2 = tmp_path / "run2"
    assert main(["train", *FAST, "--epochs", "3", "--corrupt", "0.2", "--checkpoints", "1", "--out", str(out2)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert "trained 3 epochs" in lines[0] and "test acc" in lines[0] and str(out2) in lines[0]
    a, b = load_file(cli_run / "model.safetensors"), load_file(out2 / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_through_cli_matches_uninterrupted(cli_run, capsys, tmp_path):
    out = tmp_path / "int"
    cfg = json.loads((cli_run / "config.json").read_text())

    def stop(epoch, metrics, model):
        if epoch == 1:
            raise KeyboardInterrupt

    settings = {k: cfg[k] for k in ("dataset", "width", "seed", "epochs", "corrupt", "checkpoints")}
    with pytest.raises(KeyboardInterrupt):
        train(settings, out, progress=False, callbacks=[stop])
    # without --resume: refused with a hint
    assert main(["train", *FAST, "--epochs", "3", "--corrupt", "0.2", "--checkpoints", "1", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # flags that contradict the run are refused; matching ones are fine
    assert main(["train", "--resume", str(out), "--lr", "0.5", "--quiet"]) == 2
    assert "lr=0.5 (run has 0.001)" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--width", "16", "--quiet"]) == 0
    a, b = load_file(cli_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_layers(cli_run, capsys):
    assert main(["layers", str(cli_run)]) == 0
    out = capsys.readouterr().out
    assert "hidden.0" in out and "hidden.1" in out and "(16,)" in out
    assert main(["layers", str(cli_run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == [{"layer": "hidden.0", "units": 16, "shape": [16]}, {"layer": "hidden.1", "units": 16, "shape": [16]}]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--corrupt", "1.5"], r"corrupt must be a fraction in [0, 1], got 1.5"),
        (["--lr", "-1"], "lr must be a learning rate > 0, got -1"),
        (["--until-train-acc", "2"], "until_train_acc must be an accuracy in (0, 1], got 2"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1"),
        (["--checkpoints", "0,x"], "checkpoints must be 'log' or a comma list"),
        (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--epochs", "2", "--until-train-acc", "0.9"], "either epochs or until_train_acc"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_bad_train_flags_exit_2_with_one_line(argv, message, capsys, tmp_path):
    args = ["train", "--dataset", "digits", "--quiet", "--out", str(tmp_path / "r"), *argv]
    if "--dataset" in argv:
        args = ["train", "--quiet", "--out", str(tmp_path / "r"), *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("singledir: error: ") and message in err[0]
    assert not (tmp_path / "r").exists()


def test_bad_run_dirs_exit_2(cli_run, capsys, tmp_path):
    cases = [
        (["train", "--resume", str(tmp_path)], "not a run directory"),
        (["train", "--resume", str(tmp_path / "missing")], "does not exist"),
        (["train", *FAST, "--epochs", "3", "--out", str(cli_run)], "is a complete run; pass --overwrite"),
        (["train", "--resume", str(cli_run)], "already a complete run"),
        (["train", *FAST], "pass --out RUN_DIR"),
        (["layers", str(tmp_path / "missing")], "does not exist"),
        (["layers", str(tmp_path)], "not a run directory"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("singledir: error: ") and message in err[0], (argv, err)
    # --overwrite replaces the complete run
    assert main(["train", *FAST, "--epochs", "1", "--out", str(tmp_path / "o")]) == 0
    assert main(["train", *FAST, "--epochs", "2", "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert json.loads((tmp_path / "o" / "final.json").read_text())["epoch"] == 2


def test_subprocess_exit_codes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "singledir", "train", "--dataset", "digits", "--lr", "-1", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "singledir: error: lr must be a learning rate > 0, got -1"
    assert proc.stdout == ""


def test_cli_spells_library_parameters_as_flags():
    from singledir.cli import as_flags

    msg = "r is a complete run; pass overwrite=True to replace it or choose another out_dir"
    assert as_flags(msg) == "r is a complete run; pass --overwrite to replace it or choose another --out"
    assert as_flags("continue it with resume=True") == "continue it with --resume"
    assert as_flags("/data/out_dir/x is a file") == "/data/out_dir/x is a file"  # paths are left alone
