"""Misuse that used to give a traceback, a silent clamp or a meaningless number (#18 "Why" 3-6): each is
now a one-line ``singledir: error: ...`` with exit status 2 -- one test per case."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch

from singledir.cli import main
from singledir.training import load_run, train

TINY = {"dataset": "digits", "width": 16, "epochs": 2, "seed": 1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("errs") / "run"
    train(TINY, out, progress=False)
    return out


def one_line_error(capsys, argv, *match) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("singledir: error: ") and err.count("\n") == 1, err
    for m in match:
        assert m in err, err
    return err


# ---------------------------------------------------------------------------------------- 3: paths
def test_a_relative_data_dir_is_recorded_absolute(tmp_path, monkeypatch):
    src = Path(__file__).parent  # any folder: digits ignore data_dir, the recorded path is what counts
    monkeypatch.chdir(src.parent)
    from singledir.training import TrainConfig

    cfg = TrainConfig(dataset="digits", data_dir="tests")
    assert cfg.data_dir == str(src)


def test_analyze_and_measures_accept_data_dir(run_dir, tmp_path, capsys):
    # digits need no files, so any folder works -- the flag must exist and reach load_run
    assert main(["measures", str(run_dir), "--only", "path_norm", "--data-dir", str(tmp_path)]) == 0
    assert main(["analyze", str(run_dir), "--out", str(tmp_path / "a"), "--data-dir", str(tmp_path), "--orders", "1",
                 "--no-noise", "--no-figures", "--quiet", "--max-examples", "100"]) == 0
    assert load_run(run_dir, data_dir=tmp_path).data_dir == tmp_path


def test_moved_data_are_still_checked_by_fingerprint(run_dir, tmp_path):
    cfg = json.loads((run_dir / "config.json").read_text())
    run = load_run(run_dir)
    run.config = {**cfg, "data": {**cfg["data"], "fingerprint": "0" * 64}}
    from singledir.errors import RunDirError

    with pytest.raises(RunDirError, match="fingerprint"):
        run.data


# ---------------------------------------------------------------------------------------- 4: refuse
@pytest.mark.parametrize("layer", ["hidden.0.0", "out"])
def test_selectivity_on_a_layer_with_negative_activity_is_refused(run_dir, tmp_path, capsys, layer):
    one_line_error(capsys, ["analyze", str(run_dir), "--out", str(tmp_path / "a"), "--layers", layer, "--quiet"],
                   "below zero", layer, "non-negative")
    assert not (tmp_path / "a").exists()


def test_last_n_beyond_the_layers_is_an_error(run_dir, tmp_path, capsys):
    one_line_error(capsys, ["analyze", str(run_dir), "--out", str(tmp_path / "a"), "--layers", "last99"],
                   "last99", "only 2 unit layers")


def test_checkpoints_after_the_last_epoch_are_an_error(tmp_path, capsys):
    one_line_error(capsys, ["train", "--dataset", "digits", "--epochs", "2", "--checkpoints", "1,50", "--out",
                            str(tmp_path / "r"), "--quiet"], "checkpoints 50", "epochs = 2")
    assert not (tmp_path / "r").exists()


def test_config_and_weights_must_agree(run_dir, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["width"] = cfg["model_config"]["width"] = 64
    (bad / "config.json").write_text(json.dumps(cfg))
    for argv in (["layers", str(bad)], ["measures", str(bad), "--only", "path_norm"],
                 ["analyze", str(bad), "--out", str(tmp_path / "a"), "--quiet"]):
        one_line_error(capsys, argv, "does not match the weights", "(64,)", "(16,)")
    from singledir.errors import RunDirError

    with pytest.raises(RunDirError, match="does not match the weights"):
        load_run(bad)


# ---------------------------------------------------------------------------------------- 5: tracebacks
def test_a_width_too_large_to_allocate(tmp_path, capsys):
    one_line_error(capsys, ["train", "--dataset", "digits", "--width", "100000000", "--epochs", "1", "--out",
                            str(tmp_path / "r"), "--quiet"], "out of memory", "--width")


def test_out_under_a_read_only_parent(tmp_path, capsys, monkeypatch):
    # we may run as root (permissions do not bind): make the file system refuse instead
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):
        if str(self).startswith(str(tmp_path / "ro")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(Path, "mkdir", refuse)
    monkeypatch.setattr("filelock.UnixFileLock._acquire", lambda self: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", self.lock_file)))
    one_line_error(capsys, ["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "ro" / "r"),
                            "--quiet"], "Permission denied")


def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, ["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "afile" / "run"),
                            "--quiet"], "which is a file")


def test_out_is_a_dangling_symlink(tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    one_line_error(capsys, ["train", "--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "link"),
                            "--quiet"], "symbolic link", "does not exist")


def test_overwrite_through_a_symlink_replaces_the_run_it_names(tmp_path, capsys):
    train(TINY, tmp_path / "real", progress=False)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert main(["train", "--dataset", "digits", "--width", "8", "--epochs", "1", "--out", str(tmp_path / "link"),
                 "--overwrite", "--quiet"]) == 0
    assert (tmp_path / "link").is_symlink() and load_run(tmp_path / "link").config["width"] == 8


@pytest.mark.parametrize("command", ["reproduce", "zoo"])
def test_report_out_is_a_file(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, [command, "--preset", "smoke", "--out", str(tmp_path / "afile")], "is a file")
    assert (tmp_path / "afile").read_text() == "x"


def test_measures_json_is_a_folder(run_dir, tmp_path, capsys):
    one_line_error(capsys, ["measures", str(run_dir), "--only", "path_norm", "--json", str(tmp_path)],
                   "is a folder")


def test_an_idx_header_that_overflows_to_zero_elements(tmp_path):
    from singledir.data.formats import read_idx
    from singledir.errors import DataFormatError

    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBB", 0, 0, 8, 4) + struct.pack(">4I", 65536, 65536, 65536, 65536))
    with pytest.raises(DataFormatError, match="size mismatch"):
        read_idx(path)


# ---------------------------------------------------------------------------------------- 6: leftovers
def test_a_run_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, ["layers", str(tmp_path / "afile")], "is a file, not a run directory")
    one_line_error(capsys, ["train", "--resume", str(tmp_path / "afile"), "--quiet"], "is a file")


def test_a_junk_state_file_names_what_is_wrong(tmp_path, capsys):
    from singledir.training.rundir import CONFIG

    out = tmp_path / "r"
    train({**TINY, "epochs": 3}, out, progress=False)
    (out / "COMPLETE").unlink()
    (out / "state.pt").write_bytes(os.urandom(64))
    err = one_line_error(capsys, ["train", "--resume", str(out), "--quiet"], "state.pt", "Error", "--overwrite")
    assert (out / CONFIG).is_file()
    assert "(" in err  # the exception's kind, not a bare number


def test_a_failed_zoo_leaves_no_files(tmp_path, capsys):
    one_line_error(capsys, ["zoo", "--preset", "smoke", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                            "--out", str(tmp_path / "z"), "--quiet"], "mnist")
    assert not (tmp_path / "z").exists()


def test_train_accepts_cuda_n_like_analyze(monkeypatch):
    from singledir.devices import check_device_name
    from singledir.training import TrainConfig

    assert TrainConfig(dataset="digits", device="cuda:1").device == "cuda:1"
    assert check_device_name("CUDA:0") == "cuda:0"
    from singledir.errors import SingledirError

    with pytest.raises(SingledirError, match="unknown device"):
        TrainConfig(dataset="digits", device="gpu")
    if not torch.cuda.is_available():  # the same one-line refusal from train and analyze on a CPU machine
        from singledir.devices import resolve_device

        with pytest.raises(SingledirError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_leftovers_of_a_killed_writer_are_removed_by_the_next(tmp_path, capsys):
    out = tmp_path / "r"
    (out / "checkpoints").mkdir(parents=True)  # killed between creating checkpoints/ and writing config.json
    assert main(["train", "--dataset", "digits", "--width", "8", "--epochs", "2", "--out", str(out), "--quiet"]) == 0

    def stop(epoch, _metrics, _model):
        raise KeyboardInterrupt

    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        train({**TINY, "checkpoints": "1,2"}, again, progress=False, callbacks=[stop])
    junk = [again / ".state.pt.tmp999999", again / "checkpoints" / ".epoch_0002.safetensors.tmp999998"]
    for p in junk:  # what kill -9 during a write leaves
        p.write_bytes(b"half")
    assert main(["train", "--resume", str(again), "--quiet"]) == 0
    assert not any(p.exists() for p in junk)


@pytest.mark.parametrize("flags, match", [
    (["--model", "convnet", "--width", "64"], "--width 64 applies only to --model mlp"),
    (["--width-mult", "0.5"], "--width-mult 0.5 applies only to convnet/resnet"),
    (["--momentum", "0.5"], "--momentum 0.5 applies only to --optimizer sgd"),
    (["--max-epochs", "5"], "--max-epochs 5 caps --until-train-acc only"),
    (["--corrupt-seed", "3"], "--corrupt-seed 3 has no effect without --corrupt"),
    (["--corrupt-method", "uniform"], "--corrupt-method uniform has no effect"),
])
def test_a_flag_that_would_be_ignored_is_an_error(tmp_path, capsys, flags, match):
    one_line_error(capsys, ["train", "--dataset", "digits", "--out", str(tmp_path / "r"), "--quiet", *flags], match)
    assert not (tmp_path / "r").exists()
