"""The run cache and the job pool: train what is missing, analyse what is not cached, in parallel.

- :func:`run_name` -- a deterministic directory name for a training config (readable prefix + hash).
- :class:`Runner` -- owns ``REPORT_DIR/runs`` and a process pool:

  - ``runner.train(configs)`` makes sure every config has a complete run in ``runs/<run_name>``: a
    complete run (``COMPLETE`` marker) is reused untouched, an interrupted one is resumed, a missing one
    is trained. Independent runs train in parallel worker processes when ``jobs > 1``.
  - ``runner.analyze(fn, run_dirs, params)`` calls ``fn(run_dir, **params) -> {name: DataFrame}`` for
    each run, caching the frames in ``runs/<name>/analysis/<fn>-<key>.<name>.parquet``. The key hashes
    ``params`` and the run's ``COMPLETE`` stamp, so a retrained run is re-analysed and nothing finished
    is ever computed twice.

Workers are spawned (not forked: a forked child of a process that already used OpenMP threads can
hang) and each sets ``torch.set_num_threads(1)``; with ``jobs == 1`` everything runs in this process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

# Settings that do not change what a run computes (where the data lives, which device trained it).
_NOT_IN_KEY = ("data_dir", "device", "eval_batch_size")


def _hash(obj, n: int = 10) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def full_config(config: dict) -> dict:
    """The config with every TrainConfig default filled in (so equal runs get equal names)."""
    from singledir.training import TrainConfig

    return TrainConfig.from_dict(dict(config)).to_dict()


def run_name(config: dict) -> str:
    """``<model>-<dataset>-<key settings>-<hash of every setting>``: readable and deterministic."""
    c = full_config(config)
    size = f"w{c['width']}" if c["model"] == "mlp" else f"x{c['width_mult']:g}"
    parts = [c["model"], c["dataset"], size, f"p{c['corrupt']:g}", f"s{c['seed']}"]
    if c["dropout"]:
        parts.insert(4, f"do{c['dropout']:g}")
    key = {k: v for k, v in c.items() if k not in _NOT_IN_KEY}
    return "-".join(parts) + "-" + _hash(key)


# ---------------------------------------------------------------------------- work done in workers
def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def train_one(config: dict, run_dir: str) -> str:
    """Leave a complete run in ``run_dir``: reuse it, resume it, or train it. Returns ``run_dir``."""
    from singledir.errors import RunDirError
    from singledir.training import rundir as rd
    from singledir.training import train

    out = Path(run_dir)
    if rd.is_complete(out):
        return run_dir
    if (out / rd.CONFIG).is_file():
        try:
            train(config, out, resume=True, progress=False)
            return run_dir
        except RunDirError:  # unreadable resume state: start this run again
            pass
        train(config, out, overwrite=True, progress=False)
        return run_dir
    if out.exists():  # killed before its config was written: nothing in it is worth keeping
        shutil.rmtree(out)
    train(config, out, progress=False)
    return run_dir


def _timed(fn: Callable, *args) -> float:
    """Run ``fn(*args)`` in a worker; return the CPU seconds it took there (for the report)."""
    t0 = time.process_time()
    fn(*args)
    return time.process_time() - t0


def _cache_paths(run_dir: Path, fn: Callable, params: dict) -> tuple[Path, str]:
    stamp = (run_dir / "COMPLETE").read_text(encoding="utf-8").strip()
    key = _hash({"fn": f"{fn.__module__}.{fn.__qualname__}", "params": params, "run": stamp})
    return run_dir / "analysis", f"{fn.__name__}-{key}"


def _index_path(folder: Path, stem: str) -> Path:
    return folder / f"{stem}.json"


def analyze_one(fn: Callable, run_dir: str, params: dict) -> str:
    """Compute ``fn(run_dir, **params)`` and store its frames (atomically; an index file is written last)."""
    run_dir = Path(run_dir)
    folder, stem = _cache_paths(run_dir, fn, params)
    index = _index_path(folder, stem)
    if index.is_file():
        return str(run_dir)
    frames = fn(run_dir, **params)
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        path = folder / f"{stem}.{name}.parquet"
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    tmp = index.with_name(index.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"fn": fn.__qualname__, "params": params, "frames": sorted(frames)}, default=str))
    os.replace(tmp, index)
    return str(run_dir)


def load_analysis(fn: Callable, run_dir, params: dict) -> dict[str, pd.DataFrame]:
    """The cached frames of ``fn`` for ``run_dir`` and ``params`` (they must exist)."""
    run_dir = Path(run_dir)
    folder, stem = _cache_paths(run_dir, fn, params)
    names = json.loads(_index_path(folder, stem).read_text())["frames"]
    return {n: pd.read_parquet(folder / f"{stem}.{n}.parquet") for n in names}


def is_analyzed(fn: Callable, run_dir, params: dict) -> bool:
    folder, stem = _cache_paths(Path(run_dir), fn, params)
    return _index_path(folder, stem).is_file()


# ---------------------------------------------------------------------------- the runner
class Runner:
    """Trains and analyses runs under ``runs_dir`` with ``jobs`` worker processes (see module doc)."""

    def __init__(self, runs_dir, *, jobs: int = 1, progress: bool = True, data_dir=None, device="cpu"):
        self.runs_dir = Path(runs_dir)
        self.jobs = max(1, int(jobs))
        self.progress = progress
        self.data_dir = data_dir
        self.device = device
        self._pool: ProcessPoolExecutor | None = None
        self.trained: list[str] = []  # run names trained or resumed by this runner (not reused)
        self.reused: list[str] = []
        self.worker_cpu_seconds = 0.0  # CPU time spent in worker processes

    # -------------------------------------------------------------- pool
    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(1,)
            )
        return self._pool

    def close(self, *, terminate: bool = False) -> None:
        """Shut the pool down; ``terminate`` stops running workers at once (their runs stay resumable)."""
        if self._pool is not None:
            if terminate:
                for proc in list(getattr(self._pool, "_processes", {}).values()):
                    proc.terminate()
            self._pool.shutdown(wait=not terminate, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(terminate=exc_type is not None)

    def _map(self, fn: Callable, calls: Sequence[tuple], desc: str) -> None:
        """Call ``fn(*args)`` for each args tuple, in the pool when ``jobs > 1``; a step progress bar."""
        from tqdm.auto import tqdm

        if not calls:
            return
        with tqdm(total=len(calls), desc=desc, unit="job", leave=False, disable=not self.progress,
                  dynamic_ncols=True, position=1) as bar:
            if self.jobs == 1 or len(calls) == 1:
                for args in calls:
                    fn(*args)
                    bar.update(1)
                return
            pool = self._executor()
            pending = {pool.submit(_timed, fn, *args) for args in calls}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        self.worker_cpu_seconds += fut.result()  # re-raises a worker's error here
                        bar.update(1)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise

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
                self.trained.append(d.name)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        # longest first (by epoch cap), so the pool is not left waiting on one long run at the end
        todo.sort(key=lambda t: -_cost_hint(t[0]))
        self._map(train_one, todo, f"{desc} ({len(todo)} to train, {len(seen) - len(todo)} cached)")
        return dirs

    def analyze(self, fn: Callable, run_dirs: Sequence[Path], params: dict | Sequence[dict], desc: str = "analyze"
                ) -> list[dict[str, pd.DataFrame]]:
        """``fn(run_dir, **params)`` for every run (cached), in the order of ``run_dirs``.

        ``params``: one dict for all runs, or one dict per run (e.g. a checkpoint epoch each).
        """
        plist = [params] * len(run_dirs) if isinstance(params, dict) else list(params)
        calls = [(fn, str(d), p) for d, p in zip(run_dirs, plist)]
        todo, seen = [], set()
        for c in calls:
            key = (c[1], json.dumps(c[2], sort_keys=True, default=str))
            if key not in seen and not is_analyzed(fn, c[1], c[2]):
                todo.append(c)
            seen.add(key)
        self._map(analyze_one, todo, f"{desc} ({len(todo)} to do, {len(seen) - len(todo)} cached)")
        return [load_analysis(fn, d, p) for d, p in zip(run_dirs, plist)]


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
