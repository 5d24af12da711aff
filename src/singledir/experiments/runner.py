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
    :data:`GROUP_SIZE` (:func:`plan_groups`, :func:`train_group_task`; the training jobs are in
    :mod:`.trainjobs`): one task, each network under its own lease, bit-identical to training it alone. Tasks run in parallel when ``jobs > 1``. A partial run whose resume state
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
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from singledir.experiments.backends import import_ray, make_backend
from singledir.experiments.codehash import measurement_code_hash, training_code_hash
from singledir.experiments.leases import BUSY, Lease, clear_if_dead, journal
from singledir.experiments.trainjobs import plan_groups, train_group_task
# the training jobs, importable from here too (they lived here)
from singledir.experiments.trainjobs import (  # noqa: F401
    GROUP_SIZE,
    journal_path,
    lease_path,
    move_aside,
    release_dead_leases,
    train_one,
)
from singledir.training.config import RUNTIME_SETTINGS

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


# ---------------------------------------------------------------------------- analysis jobs (done in workers)
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
        clear_if_dead(folder / f"{stem}.lease")  # a worker killed after writing the index left its lease
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
                release_dead_leases(d)  # a group killed after this member completed left its leases
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
            folder, stem = _cache_paths(Path(d), fn, p, dev)
            cached = _index_path(folder, stem).is_file()
            if cached:  # a worker killed after writing the result left its lease
                clear_if_dead(folder / f"{stem}.lease")
            seen[key] = {"run": Path(d).name, "analysis": fn.__name__, "key": stem, "cached": cached}
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
