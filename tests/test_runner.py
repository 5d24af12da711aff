"""The run cache (singledir.experiments.runner): analyses recomputed when the measurement code changes,
which results came from the cache, unreadable resume states moved aside (never deleted), the device
passed to analyses, two concurrent `reproduce` processes training every run once, and a SIGKILLed
worker's run resumed by another process to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import singledir
from singledir.experiments import codehash
from singledir.experiments import runner as runner_mod
from singledir.experiments.leases import read_journal
from singledir.experiments.runner import Runner, journal_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = dict(dataset="digits", model="mlp", width=16, depth=1, epochs=2)


def count_calls(run_dir, *, log: str, device: str = "cpu") -> dict[str, pd.DataFrame]:
    """A per-run analysis that records each call (and the device it was given) in ``log``."""
    with open(log, "a") as f:
        f.write(json.dumps({"run": Path(run_dir).name, "device": device}) + "\n")
    return {"rows": pd.DataFrame({"run": [Path(run_dir).name]})}


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# ---------------------------------------------------------------------------- analysis cache key
def test_analysis_cache_is_keyed_on_the_measurement_code_and_the_device(tmp_path, monkeypatch):
    log = tmp_path / "calls.jsonl"
    r = Runner(tmp_path / "runs", progress=False)
    dirs = r.train([TINY])
    r.analyze(count_calls, dirs, dict(log=str(log)))
    r.analyze(count_calls, dirs, dict(log=str(log)))
    assert len(_calls(log)) == 1  # cached the second time
    assert [a["cached"] for a in r.analyses] == [False, True]

    # an edit to the measurement code (no version to bump by hand): computed again
    code = tmp_path / "measurement.py"
    code.write_text("X = 1\n")
    monkeypatch.setattr(codehash, "MEASUREMENT_CODE", (*codehash.MEASUREMENT_CODE, str(code)))
    r.analyze(count_calls, dirs, dict(log=str(log)))
    assert len(_calls(log)) == 2 and r.analyses[-1]["cached"] is False
    r.analyze(count_calls, dirs, dict(log=str(log)))
    assert len(_calls(log)) == 2 and r.analyses[-1]["cached"] is True
    code.write_text("X = 2\n")
    r.analyze(count_calls, dirs, dict(log=str(log)))
    assert len(_calls(log)) == 3 and r.analyses[-1]["cached"] is False

    # another device: computed again, then cached on that device
    r.device = "meta"
    r.analyze(count_calls, dirs, dict(log=str(log)))
    r.analyze(count_calls, dirs, dict(log=str(log)))
    assert len(_calls(log)) == 4 and [a["cached"] for a in r.analyses[-2:]] == [False, True]

    monkeypatch.setattr(singledir, "__version__", singledir.__version__ + ".post1")  # a new release
    r.analyze(count_calls, dirs, dict(log=str(log)))
    assert len(_calls(log)) == 5 and r.analyses[-1]["cached"] is False


def test_leases_a_killed_writer_left_on_finished_work_are_removed_when_it_is_reused(tmp_path):
    """A group member is complete (and an analysis written) before its killed writer released the leases:
    the next runner reuses the work and removes the dead holder's leases; a live holder's lease stays."""
    import socket

    from singledir.experiments.leases import writer_lock_path
    from singledir.experiments.runner import _cache_paths, lease_path

    log = tmp_path / "calls.jsonl"
    r = Runner(tmp_path / "runs", progress=False)
    (run,) = r.train([TINY])
    r.analyze(count_calls, [run], dict(log=str(log)))
    folder, stem = _cache_paths(run, count_calls, dict(log=str(log)))
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = {"host": socket.gethostname(), "pid": int(child.stdout), "token": "t", "beat": 0}  # that process exited
    leases = [lease_path(run), writer_lock_path(run), folder / f"{stem}.lease"]
    for path in leases:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dead))
    r2 = Runner(tmp_path / "runs", progress=False)
    r2.train([TINY])
    r2.analyze(count_calls, [run], dict(log=str(log)))
    assert r2.reused == [run.name] and r2.analyses[-1]["cached"] is True
    assert [p for p in leases if p.exists()] == []

    alive = dict(dead, pid=os.getpid())  # a live holder (this process): its leases are kept
    for path in leases:
        path.write_text(json.dumps(alive))
    r2.train([TINY])
    r2.analyze(count_calls, [run], dict(log=str(log)))
    assert all(p.exists() for p in leases)


def test_measurement_code_hash_covers_the_reliance_package():
    import singledir.reliance

    files = codehash._source_files(count_calls)
    root = Path(singledir.reliance.__file__).parent
    assert set(root.rglob("*.py")) <= set(files)
    assert Path(__file__).resolve() in files  # the analysis function's own module


def test_reproduce_report_lists_the_analyses_taken_from_the_cache(tmp_path):
    from singledir.cli import main

    out = tmp_path / "rep"
    argv = ["reproduce", "hyperparameters", "--preset", "smoke", "--jobs", "1", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads((out / "results.json").read_text())["cache"]["analyses"]
    assert first and not any(a["cached"] for a in first)
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    assert [a["key"] for a in doc["cache"]["analyses"]] == [a["key"] for a in first]
    assert all(a["cached"] for a in doc["cache"]["analyses"])
    assert f"0 computed by this invocation, {len(first)} from the cache" in (out / "index.html").read_text()


def test_analysis_gets_the_runner_device(tmp_path):
    log = tmp_path / "calls.jsonl"
    r = Runner(tmp_path / "runs", progress=False)
    dirs = r.train([TINY])
    r.device = "meta"  # any name: it is passed through, not used, by this analysis
    r.analyze(count_calls, dirs, dict(log=str(log)))
    assert _calls(log) == [{"run": dirs[0].name, "device": "meta"}]


# ---------------------------------------------------------------------------- unreadable resume state
def test_unreadable_resume_state_is_moved_aside_not_deleted(tmp_path, capsys):
    r = Runner(tmp_path / "runs", progress=False)
    cfg = dict(TINY, epochs=3)
    (run,) = r.train([cfg])
    reference = load_file(str(run / "model.safetensors"))
    for name in ("COMPLETE", "final.json", "model.safetensors"):  # interrupted ...
        (run / name).unlink()
    (run / "state.pt").write_bytes(b"not a torch file")  # ... with a damaged resume state

    (again,) = Runner(tmp_path / "runs", progress=False).train([cfg])

    err = capsys.readouterr().err
    assert again == run and (run / "COMPLETE").is_file()
    aside = [p for p in run.parent.iterdir() if p.name.startswith(run.name + ".unreadable-")]
    assert len(aside) == 1 and (aside[0] / "state.pt").read_bytes() == b"not a torch file"
    assert (aside[0] / "config.json").is_file()  # the partial run is kept whole
    assert "cannot resume" in err and str(aside[0]) in err
    assert [e["event"] for e in read_journal(journal_path(run))] == ["train", "resume", "moved-aside", "train"]
    new = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(new[k], reference[k]) for k in reference)  # retrained from scratch, same seed


# ---------------------------------------------------------------------------- concurrent processes
def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg",
               OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow
def test_a_second_reproduce_on_one_out_waits_and_trains_nothing_again(tmp_path):
    """One report writer per folder (#18): the second waits for the first, then finishes from its cache."""
    out = tmp_path / "shared"
    argv = [sys.executable, "-m", "singledir", "reproduce", "ensemble", "hyperparameters", "--preset", "smoke",
            "--jobs", "1", "--quiet", "--out", str(out)]
    procs = [subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    errs = []
    for proc in procs:
        assert proc.wait(timeout=300) == 0
        errs.append(proc.stderr.read())
    doc = json.loads((out / "results.json").read_text())

    runs = [p for p in (out / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(runs) == 14  # 6 ensemble + 8 hyperparameter networks (2 lr x 2 batch sizes x 2 seeds)
    pids = set()
    for run in runs:
        events = read_journal(journal_path(run))
        assert [e["event"] for e in events] == ["train"], run.name  # trained exactly once, never resumed
        pids.add(events[0]["pid"])
        for j in (run / "analysis").glob("*.jsonl"):
            assert [e["event"] for e in read_journal(j)] == ["analyze"], j  # each analysis computed once
    (winner,) = pids  # one process did all the work ...
    waiter = [e for p, e in zip(procs, errs) if p.pid != winner]
    assert len(waiter) == 1 and f"waiting for pid {winner} on host" in waiter[0]  # ... the other waited for it
    assert doc["complete"] and sorted(doc["cache"]["reused"]) == sorted(r.name for r in runs)


KILL_CFG = dict(dataset="digits", model="mlp", width=64, epochs=40, checkpoints=[10, 20, 30])
_TRAIN_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from singledir.experiments.runner import Runner
Runner(sys.argv[1], progress=False).train([{cfg!r}])
"""


@pytest.mark.slow
def test_sigkilled_worker_run_is_resumed_to_the_uninterrupted_weights(tmp_path):
    runs = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT.format(cfg=KILL_CFG), str(runs)], env=_env())
    (run,) = [Runner(runs).run_dir(KILL_CFG)]
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoints" / "epoch_0010.safetensors").is_file():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # mid-run: after epoch 10, before epoch 40
    proc.wait()
    assert not (run / "COMPLETE").is_file() and (runs / ".leases" / run.name).is_file()  # a dead holder's lease

    resumer = Runner(runs, progress=False)
    resumer.train([KILL_CFG])  # the lease's pid is dead on this host: taken over at once, the run resumed
    events = read_journal(journal_path(run))
    assert [e["event"] for e in events] == ["train", "resume"]
    assert events[0]["pid"] == proc.pid and events[1]["taken_over_from"]["pid"] == proc.pid
    assert resumer.trained == [run.name] and json.loads((run / "config.json").read_text())["resumes"]

    (ref,) = Runner(tmp_path / "reference", progress=False).train([KILL_CFG])  # uninterrupted
    for name in ("model.safetensors", "checkpoints/epoch_0030.safetensors"):
        a, b = load_file(str(run / name)), load_file(str(ref / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
