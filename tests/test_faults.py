"""Fault injection (#18): kill -9 training, analyze, a reproduction and a zoo at seeded random points,
run two writers at once, and check the invariants after each:

- a run directory's files all come from one training; a second writer gets a one-line error naming the
  first (host, pid), and a resumed run ends with exactly the weights of an uninterrupted one;
- an output folder holds the previous complete result or the new complete one, never a mix; a killed
  writer leaves at most a hidden, plainly incomplete ``.NAME.new-*`` sibling;
- after the next run nothing is left over: no ``.NAME.tmp<pid>`` file, no writer lease, no runner lease.

Each killed process is a real ``python -m singledir`` child; the kill comes a seeded random time after
it took its writer lease (i.e. once it has started writing).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from singledir.cli import main
from singledir.experiments.leases import writer_lock_path
from singledir.training import load_run, train

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
RNG = random.Random(18)
DIGITS = ["--dataset", "digits", "--quiet", "--threads", "1"]
TINY_ZOO = """
import sys
from singledir.zoo import grid
grid.PRESETS["tiny"] = grid.ZooPreset(name="tiny", dataset="digits",
    base={"until_train_acc": 0.99, "model": "mlp", "optimizer": "adam", "train_subset": 100, "max_epochs": 2},
    axes={"width": [8, 16]}, seeds=(0,),
    measures={"n_reliance": 50, "reliance_repeats": 1, "n_flatness": 50, "mc_samples": 1, "search_depth": 2,
              "sharpness_depth": 2, "sharpness_steps": 1, "n_jacobian": 8, "n_db": 50})
from singledir.cli import main
sys.exit(main(["zoo", "--preset", "tiny", "--jobs", "1", "--quiet", *sys.argv[1:]]))
"""


def start(*argv: str, script: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-c", script, *argv] if script else [sys.executable, "-m", "singledir", *argv]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_writing(proc: subprocess.Popen, folder: Path, timeout: float = 60) -> bool:
    """True once ``proc`` holds ``folder``'s writer lease; False if it ended first."""
    lease = writer_lock_path(folder)
    t0 = time.monotonic()
    while not lease.exists():
        if proc.poll() is not None:
            return False
        assert time.monotonic() - t0 < timeout, "the child never started writing"
        time.sleep(0.02)
    return True


def kill_after(proc: subprocess.Popen, folder: Path, delay: float) -> bool:
    """kill -9 ``proc`` ``delay`` s after it started writing ``folder``; True if it was killed while running."""
    wait_until_writing(proc, folder)
    t0 = time.monotonic()
    while time.monotonic() - t0 < delay and proc.poll() is None:
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    return killed


def leftovers(root: Path) -> list[Path]:
    """Temporary files of writers, writer leases and runner leases anywhere under (and beside) ``root``."""
    found = []
    for p in [*root.rglob("*"), *root.parent.glob(f".{root.name}.*")]:
        if re.match(r"^\..+\.tmp\d+$", p.name) or p.name.endswith(".writer") or re.search(r"\.(new|old)-\d+-", p.name):
            found.append(p)
        elif p.parent.name == ".leases" and not p.name.endswith(".lock") or p.name.endswith(".lease"):
            found.append(p)
    return found


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


# ------------------------------------------------------------------------------------------ training
TRAIN = ["--width", "32", "--epochs", "15", "--checkpoints", "log", "--seed", "4"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must equal, bit for bit."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", *DIGITS, *TRAIN, "--out", str(out)]) == 0
    return out


def test_training_killed_at_random_points_resumes_to_the_uninterrupted_weights(reference, tmp_path):
    killed = []
    for i in range(3):
        out = tmp_path / f"run{i}"
        proc = start("train", *DIGITS, *TRAIN, "--out", str(out))
        killed.append(kill_after(proc, out, RNG.uniform(0.0, 2.0)))
        if (out / "config.json").is_file() and not (out / "COMPLETE").is_file():
            assert main(["train", "--resume", str(out), "--quiet", "--threads", "1"]) == 0
        elif not (out / "COMPLETE").is_file():  # killed while it set the directory up: start it again
            assert main(["train", *DIGITS, *TRAIN, "--out", str(out)]) == 0
        assert same_weights(out, reference)
        a, b = (load_run(d).history.drop(columns="seconds") for d in (out, reference))
        assert a.equals(b)
        assert leftovers(out) == []
    assert any(killed)  # at least one kill came while it was writing


def test_two_trainings_into_one_out_leave_one_whole_run(tmp_path, capsys):
    out = tmp_path / "run"
    first = start("train", *DIGITS, "--width", "64", "--epochs", "40", "--seed", "0", "--out", str(out))
    assert wait_until_writing(first, out)
    capsys.readouterr()
    assert main(["train", *DIGITS, "--epochs", "2", "--seed", "1", "--corrupt", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {first.pid} on host " in err and "being written" in err
    assert first.wait() == 0, first.stderr.read()
    run = load_run(out)  # every file from the first training
    assert run.config["seed"] == 0 and run.config["corrupt"] == 0 and run.epoch == 40
    assert int(run.corrupted_mask.sum()) == 0 and len(run.history) == 41
    assert leftovers(out) == []


def test_two_resumes_of_one_run_train_it_once(reference, tmp_path, capsys):
    out = tmp_path / "run"

    def stop(epoch, _metrics, _model):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train({"dataset": "digits", "width": 32, "epochs": 15, "checkpoints": "log", "seed": 4}, out,
              progress=False, callbacks=[stop])
    first = start("train", "--resume", str(out), "--quiet", "--threads", "1")
    assert wait_until_writing(first, out)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--quiet"]) == 2
    assert f"pid {first.pid}" in capsys.readouterr().err
    assert first.wait() == 0, first.stderr.read()
    assert same_weights(out, reference)
    assert len(json.loads((out / "config.json").read_text())["resumes"]) == 1  # resumed once, not twice


# ------------------------------------------------------------------------------------------ analyze
ANALYZE = ["--orders", "2", "--noise-repeats", "1", "--max-examples", "300", "--quiet"]


def whole_analysis(folder: Path) -> dict:
    """The summary of ``folder`` after checking that it is one whole analysis: exactly the files it lists."""
    summary = json.loads((folder / "summary.json").read_text())
    assert sorted(p.name for p in folder.iterdir()) == sorted(summary["files"])
    return summary


def test_analyze_killed_at_random_points_leaves_the_old_or_the_new_analysis(tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        runs.append(tmp_path / f"run{seed}")
        train({"dataset": "digits", "width": 16, "epochs": 2, "seed": seed}, runs[-1], progress=False)
    new_run, old_run = (str(r.absolute()) for r in runs)
    out = tmp_path / "analysis"
    assert main(["analyze", old_run, "--out", str(out), *ANALYZE]) == 0
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    outcomes = set()
    for i in range(3):
        proc = start("analyze", new_run, "--out", str(out), *ANALYZE)
        if i == 0:  # a second writer while the first one works: refused, naming it
            assert wait_until_writing(proc, out)
            capsys.readouterr()
            assert main(["analyze", old_run, "--out", str(out), *ANALYZE]) == 2
            assert f"pid {proc.pid}" in capsys.readouterr().err
        kill_after(proc, out, RNG.uniform(0.0, 4.0))
        summary = whole_analysis(out)
        if summary["run"]["run_dir"] == old_run:
            assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # untouched
            outcomes.add("old")
        else:
            assert summary["run"]["run_dir"] == new_run
            outcomes.add("new")
            break  # D now holds the new analysis; later kills could only show that again
    assert main(["analyze", new_run, "--out", str(out), *ANALYZE]) == 0  # the next writer
    assert whole_analysis(out)["run"]["run_dir"] == new_run
    assert leftovers(out) == [] and not list(tmp_path.glob(".analysis.new-*"))
    assert outcomes


# ------------------------------------------------------------------------------------------ reproduce, zoo
def _reproduce(out: Path) -> list:
    return ["reproduce", "label-corruption", "--preset", "smoke", "--dataset", "digits", "--jobs", "1", "--quiet",
            "--out", str(out)]


def test_reproduction_killed_at_a_random_point_finishes_as_if_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    proc = start(*_reproduce(killed))
    kill_after(proc, killed, RNG.uniform(0.5, 4.0))
    assert main(_reproduce(killed)) == 0
    assert main(_reproduce(tmp_path / "clean")) == 0
    a, b = (json.loads((d / "results.json").read_text())["claims"]["label-corruption"] for d in (killed, tmp_path / "clean"))
    assert (a["verdict"], a["key_statistic"]) == (b["verdict"], b["key_statistic"])
    for name in a["runs"]:
        assert same_weights(killed / "runs" / name, tmp_path / "clean" / "runs" / name)
    assert leftovers(killed) == []


def test_zoo_killed_at_a_random_point_finishes_as_if_uninterrupted(tmp_path):
    import pandas as pd

    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = start("--out", str(killed), script=TINY_ZOO)
    kill_after(proc, killed, RNG.uniform(0.5, 5.0))
    for out in (killed, clean):
        done = start("--out", str(out), script=TINY_ZOO)
        assert done.wait() == 0, done.stderr.read()
    a, b = (pd.read_parquet(d / "models.parquet").sort_values("run").reset_index(drop=True) for d in (killed, clean))
    keep = [c for c in a.columns if "second" not in c and c not in ("run_dir",)]
    pd.testing.assert_frame_equal(a[keep], b[keep])
    assert leftovers(killed) == []


# ------------------------------------------------------------------------------------------ the swap itself
def _write(folder: Path, tag: str) -> None:
    for name in ("a.parquet", "summary.json"):
        (folder / name).write_text(tag)


@pytest.mark.parametrize("exchange", [True, False])
def test_atomic_directory_swaps_in_a_whole_folder(tmp_path, monkeypatch, exchange):
    from singledir import io

    if not exchange:  # a file system without renameat2(RENAME_EXCHANGE): two renames
        monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    with io.atomic_directory(out, "analysis") as tmp:
        _write(tmp, "one")
    with pytest.raises(RuntimeError):
        with io.atomic_directory(out, "analysis") as tmp:
            _write(tmp, "two")
            (tmp / "extra.png").write_text("two")
            raise RuntimeError("killed half-way")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.parquet": "one", "summary.json": "one"}
    with io.atomic_directory(out, "analysis") as tmp:
        _write(tmp, "three")
    assert {p.name: p.read_text() for p in out.iterdir()} == {"a.parquet": "three", "summary.json": "three"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_writer_killed_between_the_two_renames_leaves_the_old_result_for_the_next(tmp_path):
    from singledir import io

    out = tmp_path / "out"
    (tmp_path / ".out.old-123-abcd").mkdir()
    _write(tmp_path / ".out.old-123-abcd", "old")  # the previous result, moved aside
    (tmp_path / ".out.new-123-abcd").mkdir()  # the new one, never moved in
    with io.atomic_directory(out, "analysis") as tmp:
        assert (out / "summary.json").read_text() == "old"  # restored before anything else
        _write(tmp, "new")
    assert (out / "summary.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_never_replaces_a_folder_it_did_not_write(tmp_path):
    from singledir import io
    from singledir.errors import SingledirError

    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(SingledirError, match="not an earlier analysis"):
        with io.atomic_directory(tmp_path / "home", "analysis"):
            pass
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"


def test_a_trainer_whose_lease_was_taken_over_stops_at_the_next_epoch(tmp_path):
    """#16 item 8 in training: a stalled writer that lost its lease must not keep writing the run."""
    from singledir.experiments.leases import LeaseLostError

    out = tmp_path / "run"
    seen = []

    def take_over(epoch, _metrics, _model):
        seen.append(epoch)
        if epoch == 2:  # another worker decided this one was dead and took the lease
            writer_lock_path(out).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "theirs", "beat": 0}))

    with pytest.raises(LeaseLostError, match="lost the lease"):
        train({"dataset": "digits", "width": 8, "epochs": 10}, out, progress=False, callbacks=[take_over])
    assert seen == [1, 2] and not (out / "COMPLETE").exists()
    assert json.loads(writer_lock_path(out).read_text())["token"] == "theirs"  # the winner's lease is left alone
