"""The run cache and the job pool: train what is missing, analyse what is not cached, in parallel.

- :func:`run_name` -- a deterministic directory name for a training config (readable prefix + hash).
- analysis cache keys and run names include source hashes of the code behind them
  (:mod:`.codehash`): any edit to that code changes them, so a result made by other code is never reused.
- :class:`Runner` -- owns ``REPORT_DIR/runs`` and a backend (this process, a process pool, or Ray; see
  :mod:`.backends`):

  - ``runner.train(configs)`` makes sure every config has a complete run in ``runs/<run_name>``: a
    complete run (``COMPLETE`` marker) is reused untouched, an interrupted one is resumed, a missing one
    is trained. MLPs that differ only in per-network settings (seed, labels, lr, stopping, ...; see
    :func:`singledir.training.grouped.group_key`) are trained as one stacked group of up to
    :data:`GROUP_SIZE` (:func:`plan_groups`, :func:`train_group_task`): one task, each network under its
    own lease, bit-identical to training it alone. Tasks run in parallel when ``jobs > 1``. A partial run whose resume state
    cannot be read is moved aside to ``runs/<name>.unreadable-<UTC time>`` (never deleted) and trained
    again; stderr says so.
  - ``runner.analyze(fn, run_dirs, params)`` calls ``fn(run_dir, **params) -> {name: DataFrame}`` for
    each run (with ``device=`` the runner's device when ``fn`` takes it and ``params`` do not name one), caching the frames in
    ``runs/<name>/analysis/<fn>-<key>.<name>.parquet``. The key (:func:`analysis_key`) hashes ``fn``'s
    name, ``params``, the run's ``COMPLETE`` stamp, the device and :func:`measurement_code_hash`, so a
    retrained run, an edited measurement or another device is analysed again, and nothing finished is
    ever computed twice. ``runner.analyses`` lists, per run and analysis, whether the
    result came from the cache (``cached``) -- the report shows it.

Safe under concurrency: several processes (or Ray workers on many hosts) may share one ``runs`` folder.
Each training and each analysis is done under a lease (:mod:`.leases`: ``runs/.leases/<name>``,
``runs/<name>/analysis/<stem>.lease``); a worker that finds a lease held moves on to other work and
comes back to wait for it at the end; a dead holder's lease is taken over and its partial run resumed.
Every training, resume and analysis is logged in ``runs/.journal/<name>.jsonl`` / ``<stem>.jsonl``
(who, where, when), so one can check that nothing was done twice.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from singledir.experiments.backends import import_ray, make_backend
from singledir.experiments.codehash import measurement_code_hash, training_code_hash
from singledir.experiments.leases import Lease, journal
from singledir.training.config import RUNTIME_SETTINGS

BUSY = "busy"  # a job found its lease held by another live worker

# Settings that do not change what a run computes (where the data lives, which device trained it): the
# training config's own list, so the run name and the resume check never disagree.
_NOT_IN_KEY = RUNTIME_SETTINGS


def _hash(obj, n: int = 10) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def full_config(config: dict) -> dict:
    """The config with every TrainConfig default filled in (so equal runs get equal names)."""
    from singledir.training import TrainConfig

    return TrainConfig.from_dict(dict(config)).to_dict()


def run_name(config: dict) -> str:
    """``<model>-<dataset>-<key settings>-<hash>``: readable and deterministic; the hash covers every setting
    (but :data:`RUNTIME_SETTINGS`) and :func:`training_code_hash`."""
    c = full_config(config)
    size = f"w{c['width']}" if c["model"] == "mlp" else f"x{c['width_mult']:g}"
    parts = [c["model"], c["dataset"], size, f"p{c['corrupt']:g}", f"s{c['seed']}"]
    if c["dropout"]:
        parts.insert(4, f"do{c['dropout']:g}")
    key = {k: v for k, v in c.items() if k not in _NOT_IN_KEY}
    key["training_code"] = training_code_hash()
    return "-".join(parts) + "-" + _hash(key)


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

    lease = Lease(lease_path(run_dir))
    if lease.path.exists() and lease.acquire(wait=False):
        lease.release()
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
        took = {"taken_over_from": {k: lease.taken_over.get(k) for k in ("host", "pid")}} if lease.taken_over else {}
        if (out / rd.CONFIG).is_file():
            journal(journal_path(out), "resume", **took)
            try:
                train(config, out, resume=True, progress=False)
                return "resumed"
            except RunDirError as err:  # unreadable resume state: keep it for a post-mortem, train again
                aside = move_aside(out)
                journal(journal_path(out), "moved-aside", to=aside.name, reason=str(err))
                print(f"singledir: cannot resume the partial run {out} ({err}); moved it to {aside} and "
                      f"training it again", file=sys.stderr, flush=True)
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
            took = ({"taken_over_from": {k: lease.taken_over.get(k) for k in ("host", "pid")}}
                    if lease.taken_over else {})
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
                aside = move_aside(out)
                journal(journal_path(out), "moved-aside", to=aside.name, reason=str(err))
                print(f"singledir: cannot resume the partial run {out} ({err}); moved it to {aside} and "
                      f"training it again", file=sys.stderr, flush=True)
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


def _accepts_device(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "device" or p.kind is p.VAR_KEYWORD for p in params)


def _code_versions(fn: Callable) -> dict:
    import singledir

    return {"singledir": singledir.__version__, "measurement_code": measurement_code_hash(fn)}


def analysis_key(run_dir, fn: Callable, params: dict, device: str = "cpu") -> str:
    """The cache key of ``fn(run_dir, **params)`` on ``device``: a hash of the function's name, the params,
    the run's ``COMPLETE`` stamp, the device and :func:`measurement_code_hash` -- everything the numbers
    depend on, so a stale result cannot be reused."""
    stamp = (Path(run_dir) / "COMPLETE").read_text(encoding="utf-8").strip()
    return _hash({"fn": f"{fn.__module__}.{fn.__qualname__}", "params": params, "run": stamp,
                  "device": str(device), "code": _code_versions(fn)})


def _cache_paths(run_dir: Path, fn: Callable, params: dict, device: str = "cpu") -> tuple[Path, str]:
    return Path(run_dir) / "analysis", f"{fn.__name__}-{analysis_key(run_dir, fn, params, device)}"


def _index_path(folder: Path, stem: str) -> Path:
    return folder / f"{stem}.json"


def analyze_one(fn: Callable, run_dir: str, params: dict, device: str = "cpu", wait: bool = False) -> str:
    """Compute ``fn(run_dir, **params)`` and store its frames, under the analysis' lease.

    Frames are written atomically, the index file last. Returns ``"cached"`` (done already, here or by
    another worker), ``"computed"``, or ``"busy"`` (held by another live worker and ``wait`` is false).
    """
    from singledir.io import atomic_write_json, atomic_write_parquet

    run_dir = Path(run_dir)
    folder, stem = _cache_paths(run_dir, fn, params, device)
    index = _index_path(folder, stem)
    if index.is_file():
        return "cached"
    lease = Lease(folder / f"{stem}.lease")
    if not lease.acquire(wait=wait):
        return BUSY
    try:
        if index.is_file():
            return "cached"
        journal(folder / f"{stem}.jsonl", "analyze", fn=fn.__qualname__, device=device)
        kwargs = dict(params, device=device) if "device" not in params and _accepts_device(fn) else params
        frames = fn(run_dir, **kwargs)
        for name, df in frames.items():
            atomic_write_parquet(folder / f"{stem}.{name}.parquet", df)
        atomic_write_json(index, {"fn": fn.__qualname__, "params": params, "device": str(device),
                                  "code": _code_versions(fn), "frames": sorted(frames)})
        return "computed"
    finally:
        lease.release()


def load_analysis(fn: Callable, run_dir, params: dict, device: str = "cpu") -> dict[str, pd.DataFrame]:
    """The cached frames of ``fn`` for ``run_dir``, ``params`` and ``device`` (they must exist)."""
    run_dir = Path(run_dir)
    folder, stem = _cache_paths(run_dir, fn, params, device)
    names = json.loads(_index_path(folder, stem).read_text())["frames"]
    return {n: pd.read_parquet(folder / f"{stem}.{n}.parquet") for n in names}


def is_analyzed(fn: Callable, run_dir, params: dict, device: str = "cpu") -> bool:
    folder, stem = _cache_paths(Path(run_dir), fn, params, device)
    return _index_path(folder, stem).is_file()


# ---------------------------------------------------------------------------- the runner
class Runner:
    """Trains and analyses runs under ``runs_dir`` on a backend with ``jobs`` workers (see module doc).

    ``backend``: ``"local"`` (this process when ``jobs == 1``, else a process pool) or ``"ray"``
    (``address``: None starts a local Ray instance with ``jobs`` CPUs; ``"auto"`` joins a cluster). The
    backend starts on the first job, so a fully cached reproduction starts nothing.

    After use: ``trained`` (run names trained or resumed here), ``reused`` (complete already or finished
    by another worker), ``analyses`` (one dict per run and analysis: ``run``, ``analysis``, ``key``,
    ``cached``), ``worker_cpu_seconds``.
    """

    def __init__(self, runs_dir, *, jobs: int = 1, progress: bool = True, data_dir=None, device="cpu",
                 backend: str = "local", address: str | None = None):
        self.runs_dir = Path(runs_dir)
        self.jobs = max(1, int(jobs))
        self.progress = progress
        self.data_dir = data_dir
        self.device = device
        self.backend_name = backend
        self.address = address
        if backend == "ray":
            import_ray()  # fail now, with how to install it, not after the first claim
        self._backend = None
        self.trained: list[str] = []
        self.reused: list[str] = []
        self.analyses: list[dict] = []
        self.worker_cpu_seconds = 0.0  # CPU time spent in worker processes

    # -------------------------------------------------------------- backend
    @property
    def backend(self):
        if self._backend is None:
            self._backend = make_backend(self.backend_name, jobs=self.jobs, device=self.device, address=self.address)
        return self._backend

    def close(self, *, terminate: bool = False) -> None:
        """Stop the backend; ``terminate`` stops running workers at once (their runs stay resumable)."""
        if self._backend is not None:
            self._backend.close(terminate=terminate)
            self._backend = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(terminate=exc_type is not None)

    def _map(self, fn: Callable, calls: Sequence[tuple], desc: str) -> list:
        """``fn(*args, wait)`` for each args tuple on the backend; the results in the order of ``calls``.

        First pass with ``wait=False``: jobs whose lease another worker holds come back ``"busy"``; a
        second pass waits for those (by then the other worker has usually finished them).
        """
        from tqdm.auto import tqdm

        results: list = [None] * len(calls)
        if not calls:
            return results
        with tqdm(total=len(calls), desc=desc, unit="job", leave=False, disable=not self.progress,
                  dynamic_ncols=True, position=1) as bar:
            todo = list(range(len(calls)))
            for wait in (False, True):
                busy = []
                for j, cpu, out in self.backend.map_unordered(fn, [(*calls[i], wait) for i in todo]):
                    self.worker_cpu_seconds += cpu
                    if out == BUSY:
                        busy.append(todo[j])
                        continue
                    results[todo[j]] = out
                    bar.update(1)
                todo = busy
                if not todo:
                    break
        return results

    # -------------------------------------------------------------- public API
    def config(self, config: dict) -> dict:
        """``config`` with this reproduction's data_dir and device (neither changes the run name)."""
        c = dict(config)
        if self.data_dir is not None:
            c["data_dir"] = str(self.data_dir)
        c["device"] = self.device
        return c

    def run_dir(self, config: dict) -> Path:
        return self.runs_dir / run_name(config)

    def train(self, configs: Sequence[dict], desc: str = "train") -> list[Path]:
        """A complete run directory for each config (same order); trains only what is missing."""
        from singledir.training import rundir as rd

        configs = [self.config(c) for c in configs]
        dirs = [self.run_dir(c) for c in configs]
        todo, seen = [], set()
        for c, d in zip(configs, dirs):
            if d in seen:
                continue
            seen.add(d)
            if rd.is_complete(d):
                self.reused.append(d.name)
            else:
                todo.append((c, str(d)))
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        # MLPs of one architecture train as one stacked group (a task); the rest one by one
        tasks = [[todo[i] for i in g] for g in plan_groups([c for c, _ in todo], self.jobs)]
        # longest first (by estimated cost), so the pool is not left waiting on one long task at the end
        tasks.sort(key=lambda t: -sum(_cost_hint(c) for c, _ in t) / (1.0 if len(t) == 1 else 3.0))
        results = self._map_groups(tasks, f"{desc} ({len(todo)} to train in {len(tasks)} tasks, "
                                          f"{len(seen) - len(todo)} cached)")
        for d, what in results:
            (self.reused if what == "reused" else self.trained).append(Path(d).name)
        return dirs

    def _map_groups(self, tasks: list[list[tuple[dict, str]]], desc: str) -> list[tuple[str, str]]:
        """Run the training tasks (a group or a single run each); ``(run_dir, status)`` for every network.

        Like :meth:`_map`: a first pass without waiting; the networks whose lease another worker held are
        then trained (as groups again) in a second pass that waits for their leases.
        """
        from tqdm.auto import tqdm

        out: list[tuple[str, str]] = []
        total = sum(len(t) for t in tasks)
        if not total:
            return out
        with tqdm(total=total, desc=desc, unit="net", leave=False, disable=not self.progress, dynamic_ncols=True,
                  position=1) as bar:
            for wait in (False, True):
                calls = [([c for c, _ in t], [d for _, d in t], wait) for t in tasks]
                busy: list[tuple[dict, str]] = []
                for j, cpu, statuses in self.backend.map_unordered(train_group_task, calls):
                    self.worker_cpu_seconds += cpu
                    for (c, d), st in zip(tasks[j], statuses):
                        if st == BUSY:
                            busy.append((c, d))
                        else:
                            out.append((d, st))
                            bar.update(1)
                if not busy:
                    break
                tasks = [[busy[i] for i in g] for g in plan_groups([c for c, _ in busy], self.jobs)]
        return out

    def analyze(self, fn: Callable, run_dirs: Sequence[Path], params: dict | Sequence[dict], desc: str = "analyze"
                ) -> list[dict[str, pd.DataFrame]]:
        """``fn(run_dir, **params)`` for every run (cached), in the order of ``run_dirs``.

        ``params``: one dict for all runs, or one dict per run (e.g. a checkpoint epoch each).
        """
        plist = [params] * len(run_dirs) if isinstance(params, dict) else list(params)
        todo, seen, log = [], {}, []
        for d, p in zip(run_dirs, plist):
            key = (str(d), json.dumps(p, sort_keys=True, default=str))
            if key in seen:
                continue
            dev = str(self.device)
            cached = is_analyzed(fn, d, p, dev)
            seen[key] = {"run": Path(d).name, "analysis": fn.__name__, "key": _cache_paths(Path(d), fn, p, dev)[1],
                         "cached": cached}
            log.append(seen[key])
            if not cached:
                todo.append((key, (fn, str(d), p, dev)))
        done = self._map(analyze_one, [c for _, c in todo],
                         f"{desc} ({len(todo)} to do, {len(seen) - len(todo)} cached)")
        for (key, _), what in zip(todo, done):
            seen[key]["cached"] = what == "cached"  # finished meanwhile by another worker
        self.analyses.extend(log)
        return [load_analysis(fn, d, p, str(self.device)) for d, p in zip(run_dirs, plist)]


def _cost_hint(config: dict) -> float:
    """Rough relative cost of training ``config``, to start the longest runs first."""
    cap = config.get("epochs") or config.get("max_epochs") or 1
    if config.get("until_train_acc") is not None:  # memorizing corrupted labels (and dropout) takes longer
        cap *= 0.2 + 0.8 * float(config.get("corrupt", 0.0)) + float(config.get("dropout", 0.0))
    size = config.get("train_subset") or 10000
    per = 50.0 if config.get("model") != "mlp" else (config.get("width", 128) / 128.0)
    return cap * size * per


def timer() -> Callable[[], float]:
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
