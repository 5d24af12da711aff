"""Leases: exclusive, heartbeat-kept claims on a piece of work in a folder that many workers share.

A lease is a small JSON file (holder's host, pid, a random token, when it was taken) whose mtime is the
heartbeat: the holder touches it every ``heartbeat_s`` seconds from a background thread. Another worker
may take a lease over only when its holder is dead -- the pid no longer exists on this host, or the
heartbeat is older than ``stale_after_s`` (a holder on another host, or a frozen one) -- and every
take/take-over/release decision is made under a short ``filelock`` lock beside the lease, so two workers
never both believe they hold it. A worker killed with SIGKILL leaves its lease behind; the next one
takes it over and resumes the work. Plain files and ``flock`` are all that is needed, so this works on
a local disk and on a shared (NFS-style) folder.

Offers:

- :class:`Lease` -- ``Lease(path).acquire(wait=False)`` -> True/False; ``release()``; a context manager.
- :func:`holder` -- the holder's record of a lease file (or None): host, pid, token, taken, age_s.
- :func:`journal` -- append one event (``{"event": ..., host, pid, time, ...}``) to a JSON-lines log
  (safe without a lock only for the lease holder, which is how the runner uses it).

Example::

    lease = Lease(runs / ".leases" / name)
    if lease.acquire(wait=False):
        try:
            train(...)
        finally:
            lease.release()
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from filelock import FileLock

__all__ = ["HEARTBEAT_S", "STALE_AFTER_S", "Lease", "holder", "journal", "read_journal"]

HEARTBEAT_S = 5.0  # how often a holder touches its lease
STALE_AFTER_S = 60.0  # a lease untouched this long is taken over, whoever holds it


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def holder(path) -> dict | None:
    """The record in lease file ``path`` plus its heartbeat age (``age_s``), or None when there is none."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        rec["age_s"] = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # half-written by a holder killed while taking it: treat as stale
        return {"host": None, "pid": None, "token": None, "age_s": float("inf")}
    return rec


def _is_stale(rec: dict, stale_after_s: float) -> bool:
    if rec.get("age_s", 0.0) > stale_after_s:
        return True
    pid = rec.get("pid")
    return rec.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


class Lease:
    """An exclusive lease on ``path`` (see module doc); ``taken_over`` says whether a dead holder's was taken."""

    def __init__(self, path, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
                 poll_s: float = 0.5) -> None:
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.token = secrets.token_hex(8)
        self.held = False
        self.taken_over: dict | None = None  # the dead holder's record when this lease was taken over
        self._guard = FileLock(str(self.path) + ".lock")
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ---------------------------------------------------------------- acquire / release
    def _try(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard:
            rec = holder(self.path)
            if rec is not None and not _is_stale(rec, self.stale_after_s):
                return False
            self.taken_over = rec
            record = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                      "taken": time.time()}
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, self.path)
        self.held = True
        self._stop.clear()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lease:{self.path.name}", daemon=True)
        self._beat.start()
        return True

    def acquire(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Take the lease; ``wait``: poll until it is free (or ``timeout`` s pass). True when held."""
        t0 = time.monotonic()
        while True:
            if self._try():
                return True
            if not wait or (timeout is not None and time.monotonic() - t0 > timeout):
                return False
            time.sleep(self.poll_s)

    def wait_free(self, timeout: float | None = None) -> bool:
        """Wait (without taking it) until nobody live holds the lease; True when free."""
        t0 = time.monotonic()
        while True:
            rec = holder(self.path)
            if rec is None or _is_stale(rec, self.stale_after_s):
                return True
            if timeout is not None and time.monotonic() - t0 > timeout:
                return False
            time.sleep(self.poll_s)

    def release(self) -> None:
        """Give the lease up (only if this object still holds it: a taken-over lease is left alone)."""
        if not self.held:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        with self._guard:
            rec = holder(self.path)
            if rec is not None and rec.get("token") == self.token:
                self.path.unlink(missing_ok=True)
        self.held = False

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:  # removed under us (taken over after a long stall): nothing to keep alive
                return

    def __enter__(self) -> Lease:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------- the journal
def journal(path, event: str, **fields) -> None:
    """Append ``{"event": event, "host", "pid", "time", **fields}`` as one line to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {"event": event, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **fields}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(rec, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_journal(path) -> list[dict]:
    """The events in a journal written by :func:`journal` (a torn last line, from a kill, is skipped)."""
    out = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
