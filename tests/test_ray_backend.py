"""The Ray backend: the smoke reproduction on a local Ray instance gives exactly the local backend's
numbers; Ctrl-C leaves a cache the next run resumes; without Ray, a one-line error says how to install it.

The Ray tests skip only where ray is absent outside CI; in CI (``CI=true``) they run, and fail if the
``ray`` extra was not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from singledir.cli import main
from singledir.experiments.leases import Lease, read_journal
from singledir.experiments.runner import journal_path

SRC = str(Path(__file__).resolve().parents[1] / "src")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None and not IN_CI,
                               reason="ray is not installed (pip install 'singledir[ray]'); CI installs it")


def _untimed(obj):
    """``obj`` without its timings (keys ending in ``seconds``): what two runs of the same work share."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not k.endswith("seconds")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _numbers(doc: dict) -> dict:
    return {name: _untimed({k: c[k] for k in ("verdict", "key_statistic", "parts", "tables", "numbers", "runs")})
            for name, c in doc["claims"].items()}


def test_ray_backend_without_ray_is_a_one_line_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when it is not installed
    out = tmp_path / "r"
    assert main(["reproduce", "ensemble", "--preset", "smoke", "--backend", "ray", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'singledir[ray]'" in err
    assert not out.exists()


def test_address_needs_the_ray_backend(capsys, tmp_path):
    assert main(["reproduce", "--address", "auto", "--quiet", "--out", str(tmp_path / "r")]) == 2
    assert "--backend ray" in capsys.readouterr().err


@needs_ray
@pytest.mark.slow
def test_smoke_on_local_ray_gives_exactly_the_local_numbers(tmp_path):
    """Every claim of the smoke preset, trained and analysed as Ray tasks (2 CPUs, one torch thread each)
    vs in this process (one torch thread): the same verdicts, statistics and per-network tables."""
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    assert main(["reproduce", "--preset", "smoke", "--backend", "ray", "--jobs", "2", "--quiet",
                 "--out", str(ray_out)]) == 0
    assert main(["reproduce", "--preset", "smoke", "--jobs", "1", "--quiet", "--out", str(local_out)]) == 0
    ray_doc = json.loads((ray_out / "results.json").read_text())
    local_doc = json.loads((local_out / "results.json").read_text())
    assert ray_doc["cache"]["backend"] == "ray" and ray_doc["complete"] and not ray_doc["errors"]
    assert _numbers(ray_doc) == _numbers(local_doc)
    # the Ray workers were other processes: every training and analysis was logged by a pid not ours
    pids = {e["pid"] for j in (ray_out / "runs" / ".journal").glob("*.jsonl") for e in read_journal(j)}
    assert pids and os.getpid() not in pids


def _ctrl_c_as_from_a_shell() -> None:
    """In the child before exec: SIGINT's default action, as for a command started from a shell. A process
    inherits an ignored or blocked SIGINT, and the test process may have one (two full-suite runs under
    pytest-xdist had the child finish both claims after its Ctrl-C; the same test alone passed every time)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@needs_ray
@pytest.mark.slow
def test_ctrl_c_under_ray_leaves_a_cache_the_next_run_resumes(tmp_path):
    out = tmp_path / "rep"
    argv = [sys.executable, "-m", "singledir", "reproduce", "ensemble", "hyperparameters", "--preset", "smoke",
            "--backend", "ray", "--jobs", "2", "--quiet", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_ctrl_c_as_from_a_shell)
    deadline = time.time() + 180
    while not list((out / "runs").glob("*/config.json")) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # Ctrl-C while the first networks train
    assert proc.wait(timeout=120) == 130, proc.stderr.read()
    assert not (out / "results.json").exists() or not json.loads((out / "results.json").read_text())["complete"]
    for lease in (out / "runs" / ".leases").glob("*[!k]"):  # (not the *.lock guards)
        assert Lease(lease).wait_free(timeout=30), lease  # every worker stopped or is dead
    names = {p.name for p in (out / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")}
    names |= {p.stem for p in (out / "runs" / ".journal").glob("*.jsonl")}  # (stopped before its folder was made)
    runs = [out / "runs" / n for n in names]
    before = {p.name: ((p / "COMPLETE").is_file(), (p / "config.json").is_file(),
                       len(read_journal(journal_path(p)))) for p in runs}

    assert main(["reproduce", "ensemble", "hyperparameters", "--preset", "smoke", "--jobs", "1", "--quiet",
                 "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["complete"] and len(doc["runs"]) == 14  # 6 ensemble + 8 hyperparameter networks
    for name in doc["runs"]:
        complete, started, n = before.get(name, (False, False, 0))
        events = read_journal(journal_path(out / "runs" / name))
        new = [e["event"] for e in events][n:]
        if complete:
            assert new == [], name  # finished before Ctrl-C: reused
        elif started:
            assert new == ["resume"], (name, new)  # interrupted mid-run: resumed, not trained again
        else:
            assert new == ["train"], (name, events, before.get(name))  # not started (or stopped before writing anything)
    assert any(c for c, _, _ in before.values()) or any(s for _, s, _ in before.values())

