"""The runner's training jobs: leave a complete run in a run directory -- reuse, resume or train it -- under its lease.

- :func:`train_one` -- one run: reused when complete, resumed when interrupted, trained when missing.
- :func:`train_group_task` -- the same for several MLPs at once, the ones to train or resume trained as one
  stacked group (:func:`singledir.training.grouped.train_group`); :func:`plan_groups` cuts the configs
  into such tasks of at most :data:`GROUP_SIZE`.
- A partial run whose resume state cannot be read is moved aside (:func:`move_aside`, never deleted) and
  trained again; every training and resume is logged in the run's journal (:func:`journal_path`).

These run in the workers of :mod:`.backends`; :class:`.runner.Runner` hands them out.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from singledir.experiments.leases import BUSY, Lease, clear_if_dead, journal

__all__ = ["GROUP_SIZE", "journal_path", "lease_path", "move_aside", "plan_groups", "release_dead_leases",
           "train_group_task", "train_one"]


def lease_path(run_dir) -> Path:
    run_dir = Path(run_dir)
    return run_dir.parent / ".leases" / run_dir.name


def journal_path(run_dir) -> Path:
    """``runs/.journal/<name>.jsonl``: one line per training or resume of the run (see :mod:`.leases`)."""
    run_dir = Path(run_dir)
    return run_dir.parent / ".journal" / f"{run_dir.name}.jsonl"


def move_aside(run_dir) -> Path:
    """Rename ``run_dir`` to ``<run_dir>.unreadable-<UTC time>`` (never delete a run); returns the new path."""
    run_dir = Path(run_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    aside = run_dir.with_name(f"{run_dir.name}.unreadable-{stamp}")
    os.rename(run_dir, aside)
    return aside


# ---------------------------------------------------------------------------- work done in workers
def _taken_over(lease: Lease) -> dict:
    """The journal fields naming the dead holder whose lease was taken over (none when it was free)."""
    return {"taken_over_from": {k: lease.taken_over.get(k) for k in ("host", "pid")}} if lease.taken_over else {}


def _set_aside(out: Path, err: Exception) -> None:
    """Move the partial run ``out`` whose resume state cannot be read aside, journal it and say so on stderr."""
    aside = move_aside(out)
    journal(journal_path(out), "moved-aside", to=aside.name, reason=str(err))
    print(f"singledir: cannot resume the partial run {out} ({err}); moved it to {aside} and "
          f"training it again", file=sys.stderr, flush=True)


def release_dead_leases(run_dir) -> None:
    """Remove the leases a killed writer left on the complete run ``run_dir``.

    A network of a group is complete as soon as it reaches its stopping point, but its run lease and its
    writer lease are held until the whole group ends; a group killed in between leaves them behind on a
    run that is reused untouched afterwards. Each is taken over (and so removed) only when its holder is
    dead: a live holder keeps it.
    """
    from singledir.errors import LockedError
    from singledir.experiments.leases import writer_lock_path
    from singledir.training import rundir as rd

    clear_if_dead(lease_path(run_dir))
    if writer_lock_path(run_dir).exists():
        try:
            with rd.run_lock(run_dir):
                pass
        except LockedError:
            pass


def train_one(config: dict, run_dir: str, wait: bool = False) -> str:
    """Leave a complete run in ``run_dir``: reuse it, resume it, or train it, under the run's lease.

    Returns ``"reused"`` (complete already, or finished by another worker), ``"resumed"``, ``"trained"``,
    or ``"busy"`` when another live worker holds the lease and ``wait`` is false.
    """
    from singledir.errors import RunDirError
    from singledir.training import rundir as rd
    from singledir.training import train

    out = Path(run_dir)
    if rd.is_complete(out):
        release_dead_leases(out)
        return "reused"
    lease = Lease(lease_path(out))
    if not lease.acquire(wait=wait):
        return BUSY
    try:
        if rd.is_complete(out):  # the holder we waited for finished it
            return "reused"
        took = _taken_over(lease)
        if (out / rd.CONFIG).is_file():
            journal(journal_path(out), "resume", **took)
            try:
                train(config, out, resume=True, progress=False)
                return "resumed"
            except RunDirError as err:  # unreadable resume state: keep it for a post-mortem, train again
                _set_aside(out, err)
        elif out.exists():  # killed before its config was written: nothing of a run in it yet
            shutil.rmtree(out)
        journal(journal_path(out), "train", **took)
        train(config, out, progress=False)
        return "trained"
    finally:
        lease.release()


def train_group_task(configs: list[dict], run_dirs: list[str], wait: bool = False) -> list[str]:
    """Leave a complete run in each of ``run_dirs``, training the missing ones as one group (one task).

    Like :func:`train_one` for each network -- under each run's lease, reused when complete, resumed when
    interrupted (an unreadable one moved aside and trained again), trained when missing -- except that
    the networks to train or resume are trained together by :func:`singledir.training.grouped.train_group`
    (bit-identical to training each alone). Returns one status per network (``"busy"`` for a run whose
    lease another live worker holds when ``wait`` is false).
    """
    from singledir.training import rundir as rd
    from singledir.training.grouped import GroupMemberError, group_key, train_group

    if any(group_key(c) is None for c in configs):  # not stackable (ConvNets, batch norm): one by one
        return [train_one(c, d, wait) for c, d in zip(configs, run_dirs)]
    status: list[str | None] = [None] * len(configs)
    held: dict[int, Lease] = {}
    try:
        for i, d in enumerate(run_dirs):
            out = Path(d)
            if rd.is_complete(out):
                release_dead_leases(out)
                status[i] = "reused"
                continue
            lease = Lease(lease_path(out))
            if not lease.acquire(wait=wait):
                status[i] = BUSY
                continue
            if rd.is_complete(out):
                lease.release()
                status[i] = "reused"
                continue
            held[i] = lease
        todo = sorted(held)
        resume = {}
        for i in todo:
            out = Path(run_dirs[i])
            lease = held[i]
            took = _taken_over(lease)
            if (out / rd.CONFIG).is_file():
                resume[i] = True
                journal(journal_path(out), "resume", group=len(todo), **took)
            else:
                if out.exists():  # killed before its config was written: nothing of a run in it yet
                    shutil.rmtree(out)
                resume[i] = False
                journal(journal_path(out), "train", group=len(todo), **took)
        while todo:
            try:
                train_group([configs[i] for i in todo], [run_dirs[i] for i in todo],
                            resume=[resume[i] for i in todo], progress=False)
                break
            except GroupMemberError as err:  # unreadable resume state: keep it for a post-mortem, train again
                i = todo[err.index]
                out = Path(run_dirs[i])
                if not resume[i]:
                    raise
                _set_aside(out, err)
                resume[i] = False
                journal(journal_path(out), "train", group=len(todo))
        for i in todo:
            status[i] = "resumed" if resume[i] else "trained"
    finally:
        for lease in held.values():
            lease.release()
    return status


#: the most networks trained as one group (one task)
GROUP_SIZE = 32


def plan_groups(configs: Sequence[dict], jobs: int = 1, size: int = GROUP_SIZE) -> list[list[int]]:
    """Indices of ``configs`` split into training tasks: stackable configs with one group key together.

    Each key's configs are cut into ``max(ceil(n / size), min(jobs, n // 2))`` near-equal groups (so
    ``jobs`` workers share a large group's work), rounded up to a multiple of ``jobs`` when there are
    more groups than workers, in their given order; a config the stacked engine
    does not train (ConvNets, batch norm) is a task of its own.
    """
    from singledir.training.grouped import group_key

    keyed: dict[str, list[int]] = {}
    tasks: list[list[int]] = []
    for i, c in enumerate(configs):
        key = group_key(c)
        if key is None:
            tasks.append([i])
        else:
            keyed.setdefault(key, []).append(i)
    for idx in keyed.values():
        n = len(idx)
        jobs = max(1, jobs)
        parts = max(-(-n // size), min(jobs, n // 2), 1)
        if parts > jobs:  # a multiple of the workers, so that none waits on a last group alone
            parts = min(-(-parts // jobs) * jobs, max(1, n // 2))
        base, extra = divmod(n, parts)
        start = 0
        for p in range(parts):
            m = base + (1 if p < extra else 0)
            tasks.append(idx[start: start + m])
            start += m
    return tasks
