"""Where the runner's jobs execute: this process, a local process pool, or a Ray cluster.

Offers:

- :func:`make_backend` -- ``make_backend("local" | "ray", jobs=, device=, address=)``.
- :class:`LocalBackend` -- ``jobs == 1``: every job in this process; otherwise a pool of ``jobs`` spawned
  worker processes (spawned, not forked: a forked child of a process that already used OpenMP threads
  can hang), each with one torch thread.
- :class:`RayBackend` -- each job is a Ray task asking for one CPU (and one GPU when the device is
  CUDA), with one torch thread. ``address=None`` starts a small local Ray instance (``jobs`` CPUs, no
  dashboard) and stops it on close; ``"auto"`` or ``"host:port"`` joins a running cluster. Ray is
  imported only here, only when this backend is made.

Both have ``map_unordered(fn, calls)``, which yields ``(index, cpu_seconds, result)`` for each
``fn(*calls[index])`` as the jobs finish (``cpu_seconds``: spent in a worker, 0 in this process), and ``close(terminate=False)``. Leaving the loop early (an error,
Ctrl-C) cancels the jobs not yet finished: work in the run cache is leased and resumable, so nothing
is lost but the unfinished epochs. Only what ``calls`` hold (configs, paths, small dicts) and what the
jobs return (short strings) cross the process or object-store boundary; runs stay on shared storage.

Example::

    backend = make_backend("ray", jobs=4, device="cpu", address=None)
    for i, cpu, result in backend.map_unordered(train_one, [(cfg, run_dir, False)]):
        ...
    backend.close()
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context

from singledir.errors import SingledirError

__all__ = ["BACKENDS", "LocalBackend", "RayBackend", "make_backend", "timed_call"]

BACKENDS = ("local", "ray")
RAY_MISSING = "the Ray backend needs the ray package, which is not installed: pip install 'singledir[ray]'"


def timed_call(fn: Callable, args: tuple, threads: int | None = None) -> tuple[float, object]:
    """``fn(*args)`` and the CPU seconds it took in this process (run in workers, for the report)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class LocalBackend:
    """This process (``jobs == 1``) or a pool of spawned worker processes (see module doc)."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = max(1, int(jobs))
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"),
                                             initializer=_init_worker, initargs=(1,))
        return self._pool

    def map_unordered(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, float, object]]:
        if self.jobs == 1 or len(calls) == 1:
            for i, args in enumerate(calls):  # CPU time here is this process's own: report 0 for workers
                yield i, 0.0, fn(*args)
            return
        pool = self._executor()
        index = {pool.submit(timed_call, fn, args): i for i, args in enumerate(calls)}
        pending = set(index)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    cpu, out = fut.result()  # re-raises a worker's error here
                    yield index[fut], cpu, out
        finally:
            for fut in pending:
                fut.cancel()

    def close(self, *, terminate: bool = False) -> None:
        """Shut the pool down; ``terminate`` stops running workers at once (their runs stay resumable)."""
        if self._pool is not None:
            if terminate:
                for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                    proc.terminate()
            self._pool.shutdown(wait=not terminate, cancel_futures=True)
            self._pool = None


def import_ray():
    """The ``ray`` module, or a one-line :class:`SingledirError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise SingledirError(RAY_MISSING) from None
    return ray


class RayBackend:
    """Ray tasks on a local instance or a cluster (see module doc)."""

    name = "ray"

    def __init__(self, jobs: int = 1, *, device: str = "cpu", address: str | None = None) -> None:
        self.ray = import_ray()
        self.jobs = max(1, int(jobs))
        self.gpus = 1 if str(device).startswith("cuda") else 0
        self.address = address
        self._started = False
        if not self.ray.is_initialized():
            self._init()

    def _init(self) -> None:
        import os

        ray = self.ray
        # workers' messages (e.g. a partial run moved aside) reach this terminal; Ray's own INFO lines do not
        kwargs = dict(log_to_driver=True, logging_level="WARNING")
        if self.address in (None, "", "local"):
            # a private instance: its workers import singledir the way this process did (PYTHONPATH too)
            env = {k: os.environ[k] for k in ("PYTHONPATH",) if os.environ.get(k)}
            ray.init(num_cpus=self.jobs, include_dashboard=False, object_store_memory=80 * 2**20,
                     runtime_env={"env_vars": env} if env else None, **kwargs)
        else:
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise SingledirError(f"cannot join the Ray cluster at {self.address!r} ({first}); start one with "
                                     f"`ray start --head` or give its address") from None
        self._started = True

    def map_unordered(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, float, object]]:
        ray = self.ray
        task = ray.remote(timed_call).options(num_cpus=1, num_gpus=self.gpus, max_retries=0)
        index = {task.remote(fn, args, 1): i for i, args in enumerate(calls)}
        pending = list(index)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)  # (Ctrl-C is seen between waits)
                for ref in done:
                    cpu, out = ray.get(ref)  # re-raises a task's error (as its own type) here
                    yield index[ref], cpu, out
        finally:
            for ref in pending:  # a running task gets KeyboardInterrupt: it saves its state, frees its lease
                ray.cancel(ref)
            if pending:  # let them stop before Ray is shut down (a worker still writing would race a rerun)
                ray.wait(pending, num_returns=len(pending), timeout=30)

    def close(self, *, terminate: bool = False) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False


def make_backend(name: str, *, jobs: int = 1, device: str = "cpu", address: str | None = None):
    """The backend called ``name`` ("local" or "ray"); ``address`` only applies to Ray."""
    if name == "local":
        return LocalBackend(jobs)
    if name == "ray":
        return RayBackend(jobs, device=device, address=address)
    raise SingledirError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
