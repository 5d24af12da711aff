"""Leases: exclusive, heartbeat-kept claims on a piece of work in a folder that many workers share.

A lease is a small JSON file: the holder's host, pid, a random token, when it was taken, and a heartbeat
counter ``beat``. The holder rewrites the file every ``heartbeat_s`` seconds from a background thread,
adding one to ``beat`` -- but only after checking, under the guard lock, that the file still carries its
own token: a holder whose lease was taken over stops beating and learns that it lost it (``lost``,
:meth:`Lease.check`). Another worker may take a lease over only when its holder is dead: the pid no
longer exists on this host, or the waiter has watched ``(token, beat)`` stay the same for
``stale_after_s`` seconds of *its own* monotonic clock (a holder on another host, or a frozen one). No
decision compares this machine's clock with a file's mtime or with a time another host wrote, so clock
skew between hosts of a shared file system cannot cause a false take-over. What a process has watched
is remembered per lease file for the life of the process, so a worker that comes back to a busy lease
later continues its watch. Every take/take-over/release/heartbeat decision is made under a short
``filelock`` lock beside the lease, so two workers never both believe they hold it. A worker killed with
SIGKILL leaves its lease behind; the next one takes it over and resumes the work. Plain files and
``flock`` are all that is needed, so this works on a local disk and on a shared (NFS-style) folder.

Offers:

- :class:`Lease` -- ``Lease(path).acquire(wait=False)`` -> True/False; ``release()``; ``lost`` /
  ``check()``; a context manager.
- :func:`writer_lock` -- one writer per folder: a context manager that holds the lease beside a folder or
  raises :class:`~singledir.errors.LockedError` naming the live holder (host, pid).
- :func:`holder` -- the holder's record of a lease file (or None): host, pid, token, taken, beat.
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

import contextlib
import json
import os
import secrets
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock

from singledir.errors import LockedError, SingledirError
from singledir.io import atomic_write_text

__all__ = ["BUSY", "HEARTBEAT_S", "STALE_AFTER_S", "Lease", "LeaseLostError", "clear_if_dead", "holder", "journal",
           "read_journal", "writer_lock", "writer_lock_path"]

HEARTBEAT_S = 5.0  # how often a holder rewrites its lease (beat + 1)
STALE_AFTER_S = 60.0  # a lease whose beat nobody saw change this long (waiter's own clock) is taken over
BUSY = "busy"  # what a job returns when it found its lease held by another live worker


class LeaseLostError(SingledirError):
    """The lease this process held was taken over by another worker (it was stalled or presumed dead)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _now() -> float:
    """The waiter's own clock (monotonic; a test may replace it)."""
    return time.monotonic()


def holder(path) -> dict | None:
    """The record in lease file ``path`` (host, pid, token, taken, beat), or None when there is none.

    A file that cannot be parsed (half-written by a holder killed while taking it) gives
    ``{"host": None, "pid": None, "token": None, "unreadable": True}``.
    """
    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict):
            raise ValueError("not a lease record")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"host": None, "pid": None, "token": None, "unreadable": True}
    return rec


# path -> (token, beat, when this process first saw that pair, on its own clock)
_WATCHED: dict[str, tuple] = {}
_WATCHED_LOCK = threading.Lock()


def _unchanged_for(path: Path, rec: dict) -> float:
    """Seconds (this process's clock) since ``rec``'s (token, beat) was first seen here unchanged."""
    key = str(Path(path).absolute())
    seen = (rec.get("token"), rec.get("beat"))
    now = _now()
    with _WATCHED_LOCK:
        old = _WATCHED.get(key)
        if old is None or old[:2] != seen:
            _WATCHED[key] = (*seen, now)
            return 0.0
        return now - old[2]


def _holder_dead_here(rec: dict) -> bool:
    pid = rec.get("pid")
    return rec.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


def _is_stale(path: Path, rec: dict, stale_after_s: float) -> bool:
    if rec.get("unreadable") or _holder_dead_here(rec):
        return True
    return _unchanged_for(path, rec) > stale_after_s


class Lease:
    """An exclusive lease on ``path`` (see module doc); ``taken_over`` says whether a dead holder's was taken."""

    def __init__(self, path, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S,
                 poll_s: float = 0.5, guard=None) -> None:
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self.token = secrets.token_hex(8)
        self.held = False
        self.lost = False  # set by the heartbeat when another worker took the lease over
        self.beat = 0
        self.taken_over: dict | None = None  # the dead holder's record when this lease was taken over
        self._guard = FileLock(str(self.path) + ".lock" if guard is None else str(guard))
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _record(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token, "taken": self.taken,
                "beat": self.beat, "heartbeat_s": self.heartbeat_s}

    # ---------------------------------------------------------------- acquire / release
    def _try(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._guard:
            rec = holder(self.path)
            if rec is not None and not _is_stale(self.path, rec, self.stale_after_s):
                return False
            self.taken_over = rec
            self.taken = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.beat = 0
            atomic_write_text(self.path, json.dumps(self._record()))
        self.held = True
        self.lost = False
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
            if rec is None or _is_stale(self.path, rec, self.stale_after_s):
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
            else:
                self.lost = True
        self.held = False

    def check(self, *_args) -> None:
        """Raise :class:`LeaseLostError` when another worker has taken this lease over (usable as a callback).

        Reads the lease file (no lock: it is replaced atomically), so a take-over is noticed at the next
        check, not only at the next heartbeat.
        """
        if self.held and not self.lost:
            rec = holder(self.path)
            self.lost = rec is None or rec.get("token") != self.token
        if self.lost:
            raise LeaseLostError(
                f"lost the lease {self.path} to another worker (this one was stalled or presumed dead); "
                f"stopping so that two workers never write the same files"
            )

    def beat_once(self) -> bool:
        """One heartbeat: beat + 1 if the lease file still carries this lease's token; False (and ``lost``) if not."""
        with self._guard:
            rec = holder(self.path)
            if rec is None or rec.get("token") != self.token:
                self.lost = True
                return False
            self.beat += 1
            atomic_write_text(self.path, json.dumps(self._record()))
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not self.beat_once():
                    return
            except OSError:  # the shared folder hiccupped: try again at the next beat
                continue

    def __enter__(self) -> Lease:
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------- one writer per folder
WRITERS_GUARD = ".singledir-writers.lock"  # one short-lived guard per parent folder for all its writer leases


def clear_if_dead(path) -> None:
    """Remove the lease file ``path`` when its holder is dead; a live holder keeps it.

    The cleanup for work found finished: a writer killed after it wrote its result but before it released
    its lease leaves the lease beside a complete result that the next worker reuses without taking it.
    """
    path = Path(path)
    if path.exists():
        lease = Lease(path)
        if lease.acquire(wait=False):
            lease.release()


def writer_lock_path(folder) -> Path:
    """The lease file that guards ``folder``: ``.<name>.writer`` beside it (symlinks resolved).

    It exists only while a writer holds it (or after a writer was killed); the decisions about it are
    made under one guard file per parent folder, ``.singledir-writers.lock``.
    """
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.writer")


def _describe(rec: dict) -> str:
    return f"pid {rec.get('pid')} on host {rec.get('host')}, since {rec.get('taken')}"


@contextlib.contextmanager
def writer_lock(folder, what: str = "folder", *, wait: bool = False, stale_after_s: float = STALE_AFTER_S,
                heartbeat_s: float = HEARTBEAT_S, poll_s: float = 0.5):
    """Hold the lease beside ``folder`` while the block runs: one writer per folder.

    A live holder makes this raise :class:`~singledir.errors.LockedError` (one line naming its host and
    pid) -- or, with ``wait``, wait until it is gone. A holder on this host whose pid is dead is taken
    over at once; a holder on another host is watched for up to ``stale_after_s`` seconds: as soon as its
    heartbeat moves it is known to be alive (error), and when it does not move at all it is taken over.
    Yields the :class:`Lease` (its :meth:`Lease.check` raises once the lease was lost).
    """
    path = writer_lock_path(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SingledirError(f"cannot create {path.parent}: {err.strerror or err}; choose another place") from None
    lease = Lease(path, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s, poll_s=poll_s,
                  guard=path.with_name(WRITERS_GUARD))
    first, told = None, False
    while True:
        try:
            if lease.acquire(wait=False):
                break
        except OSError as err:
            raise SingledirError(f"cannot write the lock {path}: {err.strerror or err}; choose a writable place") from None
        rec = holder(path) or {}
        first = first or (rec.get("token"), rec.get("beat"))
        alive = rec.get("host") == socket.gethostname() or (rec.get("token"), rec.get("beat")) != first
        if alive and not wait:
            raise LockedError(
                f"{what} {folder} is being written by another process ({_describe(rec)}); wait for it to "
                f"finish or stop it, then try again"
            )
        if alive and not told:
            print(f"singledir: waiting for {_describe(rec)} to finish writing {folder}", file=sys.stderr, flush=True)
            told = True
        time.sleep(poll_s)
    try:
        yield lease
    finally:
        lease.release()


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
