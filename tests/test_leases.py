"""Leases (singledir.experiments.leases): exclusive between processes, kept alive by a heartbeat, taken
over only from a dead holder (dead pid on this host, or no heartbeat for the stale time)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from singledir.experiments.leases import Lease, holder, journal, read_journal


def _try_once(path: str, start_at: float) -> int | None:
    """Wait until ``start_at``, try the lease once; return this pid if it was won (kept: never released)."""
    while time.time() < start_at:
        time.sleep(0.001)
    lease = Lease(path)
    return os.getpid() if lease.acquire(wait=False) else None


def test_only_one_of_many_racing_processes_gets_the_lease(tmp_path):
    path = str(tmp_path / "leases" / "run")
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        start = time.time() + 3.0  # all four try at the same instant
        winners = [w for w in pool.map(_try_once, [path] * 4, [start] * 4) if w is not None]
    assert len(winners) == 1
    assert holder(path)["pid"] == winners[0]


def test_busy_lease_is_refused_then_free_after_release(tmp_path):
    a, b = Lease(tmp_path / "x"), Lease(tmp_path / "x")
    assert a.acquire(wait=False)
    rec = holder(tmp_path / "x")
    assert rec["host"] == socket.gethostname() and rec["pid"] == os.getpid() and rec["token"] == a.token
    assert not b.acquire(wait=False)
    assert not b.acquire(wait=True, timeout=0.6)
    a.release()
    assert b.acquire(wait=False) and b.taken_over is None
    b.release()


def test_lease_of_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)  # that process has exited
    path = tmp_path / "x"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "token": "t", "taken": time.time()}))
    lease = Lease(path)
    assert lease.acquire(wait=False)
    assert lease.taken_over["pid"] == dead
    lease.release()


def test_live_holder_on_another_host_is_respected_until_its_heartbeat_stops(tmp_path):
    path = tmp_path / "x"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "taken": time.time()}))
    assert not Lease(path, stale_after_s=30).acquire(wait=False)  # fresh heartbeat
    old = time.time() - 31
    os.utime(path, (old, old))  # no heartbeat for 31 s
    lease = Lease(path, stale_after_s=30)
    assert lease.acquire(wait=False) and lease.taken_over["host"] == "elsewhere"
    lease.release()


def test_heartbeat_keeps_the_lease_fresh(tmp_path):
    lease = Lease(tmp_path / "x", heartbeat_s=0.1)
    assert lease.acquire(wait=False)
    old = time.time() - 100
    os.utime(lease.path, (old, old))
    time.sleep(0.5)
    assert holder(lease.path)["age_s"] < 5
    assert not Lease(tmp_path / "x", stale_after_s=5).acquire(wait=False)
    lease.release()


def test_release_leaves_a_lease_that_was_taken_over(tmp_path):
    a = Lease(tmp_path / "x", heartbeat_s=60)
    assert a.acquire(wait=False)
    old = time.time() - 1000
    os.utime(a.path, (old, old))  # a stalled holder
    b = Lease(tmp_path / "x", stale_after_s=10)
    assert b.acquire(wait=False)
    a.release()  # the stalled one wakes up and lets go: must not remove b's lease
    assert holder(tmp_path / "x")["token"] == b.token
    b.release()
    assert holder(tmp_path / "x") is None


def test_journal_appends_events_and_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "j" / "run.jsonl"
    journal(path, "train", run="r")
    journal(path, "resume", taken_over_from={"pid": 3})
    with open(path, "a") as f:
        f.write('{"event": "tr')  # killed mid-write
    events = read_journal(path)
    assert [e["event"] for e in events] == ["train", "resume"]
    assert events[0]["pid"] == os.getpid() and events[1]["taken_over_from"] == {"pid": 3}
