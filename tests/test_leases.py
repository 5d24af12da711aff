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

import pytest

from singledir.errors import LockedError
from singledir.experiments.leases import (
    Lease,
    LeaseLostError,
    holder,
    journal,
    read_journal,
    writer_lock,
    writer_lock_path,
)


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


class _Clock:
    """A fake monotonic clock for the waiter (leases._now)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _fake_clock(monkeypatch):
    from singledir.experiments import leases

    clock = _Clock()
    monkeypatch.setattr(leases, "_now", clock)
    monkeypatch.setattr(leases, "_WATCHED", {})
    return clock


def test_live_holder_on_another_host_is_respected_until_its_heartbeat_stops(tmp_path, monkeypatch):
    clock = _fake_clock(monkeypatch)
    path = tmp_path / "x"
    rec = {"host": "elsewhere", "pid": 1, "token": "t", "taken": "2026-01-01T00:00:00+00:00", "beat": 0}
    path.write_text(json.dumps(rec))
    assert not Lease(path, stale_after_s=30).acquire(wait=False)  # first sight: watch it
    clock.t += 20
    rec["beat"] = 1
    path.write_text(json.dumps(rec))  # it beats: alive
    assert not Lease(path, stale_after_s=30).acquire(wait=False)  # the waiter sees the new beat
    clock.t += 20
    assert not Lease(path, stale_after_s=30).acquire(wait=False)  # 20 s since the beat moved
    clock.t += 11  # 31 s without a beat, on the waiter's clock
    lease = Lease(path, stale_after_s=30)
    assert lease.acquire(wait=False) and lease.taken_over["host"] == "elsewhere"
    lease.release()


def test_a_skewed_clock_on_the_shared_folder_causes_no_takeover(tmp_path, monkeypatch):
    """#16 item 8: an mtime far in the past (the file server's clock behind ours) is not staleness."""
    _fake_clock(monkeypatch)
    path = tmp_path / "x"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "beat": 7}))
    old = time.time() - 10_000
    os.utime(path, (old, old))
    assert not Lease(path, stale_after_s=30).acquire(wait=False)
    assert holder(path)["token"] == "t"


def test_heartbeat_keeps_the_lease_fresh(tmp_path, monkeypatch):
    clock = _fake_clock(monkeypatch)
    lease = Lease(tmp_path / "x", heartbeat_s=0.05)
    assert lease.acquire(wait=False)
    other = Lease(tmp_path / "x", stale_after_s=5)
    assert not other.acquire(wait=False)
    for _ in range(3):  # the waiter's clock runs 4 s per look; the holder beats in between
        beat = holder(lease.path)["beat"]
        deadline = time.time() + 5
        while holder(lease.path)["beat"] == beat and time.time() < deadline:
            time.sleep(0.01)
        clock.t += 4
        assert not other.acquire(wait=False)
    assert holder(lease.path)["beat"] >= 3
    lease.release()


def test_release_leaves_a_lease_that_was_taken_over(tmp_path, monkeypatch):
    clock = _fake_clock(monkeypatch)
    a = Lease(tmp_path / "x", heartbeat_s=60)
    assert a.acquire(wait=False)
    b = Lease(tmp_path / "x", stale_after_s=10)
    assert not b.acquire(wait=False)
    clock.t += 11  # a stalled holder: no beat for 11 s
    assert b.acquire(wait=False)
    a.release()  # the stalled one wakes up and lets go: must not remove b's lease
    assert a.lost
    assert holder(tmp_path / "x")["token"] == b.token
    b.release()
    assert holder(tmp_path / "x") is None


def test_a_holder_whose_lease_was_taken_over_stops_beating_and_learns_it_lost(tmp_path, monkeypatch):
    """#16 item 8: the heartbeat checks its token before it touches the lease."""
    clock = _fake_clock(monkeypatch)
    a = Lease(tmp_path / "x", heartbeat_s=3600)  # its thread will not beat during the test
    assert a.acquire(wait=False)
    b = Lease(tmp_path / "x", stale_after_s=10)
    assert not b.acquire(wait=False)
    clock.t += 11
    assert b.acquire(wait=False)
    before = (tmp_path / "x").read_text()
    assert a.beat_once() is False and a.lost  # the stalled holder wakes: it must not keep b's lease alive
    assert (tmp_path / "x").read_text() == before
    with pytest.raises(LeaseLostError):
        a.check()
    assert b.beat_once() and holder(tmp_path / "x")["beat"] == 1
    a.release()
    b.release()


def test_writer_lock_names_the_live_holder(tmp_path):
    folder = tmp_path / "out"
    with writer_lock(folder, "run directory"):
        with pytest.raises(LockedError, match=rf"run directory .*out is being written by another process "
                                              rf"\(pid {os.getpid()} on host "):
            with writer_lock(folder, "run directory"):
                pass
    with writer_lock(folder):  # free again
        pass


def test_writer_lock_of_a_dead_process_is_taken_over(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "out"
    writer_lock_path(folder).write_text(json.dumps({"host": socket.gethostname(), "pid": int(child.stdout),
                                                    "token": "t", "beat": 3}))
    with writer_lock(folder) as lease:
        assert lease.taken_over["pid"] == int(child.stdout)


def test_writer_lock_takes_over_a_silent_holder_on_another_host(tmp_path):
    folder = tmp_path / "out"
    writer_lock_path(folder).write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "beat": 3}))
    t0 = time.monotonic()
    with writer_lock(folder, stale_after_s=0.5, poll_s=0.05) as lease:
        assert lease.taken_over["host"] == "elsewhere"
    assert time.monotonic() - t0 >= 0.5


def test_journal_appends_events_and_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "j" / "run.jsonl"
    journal(path, "train", run="r")
    journal(path, "resume", taken_over_from={"pid": 3})
    with open(path, "a") as f:
        f.write('{"event": "tr')  # killed mid-write
    events = read_journal(path)
    assert [e["event"] for e in events] == ["train", "resume"]
    assert events[0]["pid"] == os.getpid() and events[1]["taken_over_from"] == {"pid": 3}
