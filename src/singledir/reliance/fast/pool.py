"""The fx path's example chunks, processed by a pool of threads: every core the caller gives torch.

Offers :func:`example_chunks` (consecutive examples across the data batches), :func:`chunk_workers` (how
many threads walk chunks at once), :func:`map_chunks` (a function of one chunk applied to every chunk, in
parallel, results in chunk order) and :func:`host_reads_free`.

Why threads over chunks, not multi-threaded ops. A level walk issues many mid-sized ops on cache-sized
chunks (element-wise ops, rank-1 updates, small GEMMs of a few microseconds each): spreading each op over
the cores costs an OpenMP fork/join per op, about as much as the arithmetic, and under load an OpenMP
barrier waits for a descheduled thread (measured on this project's 2-core machine: the MLP curve ran
slower at torch's default of 2 intra-op threads than at 1). Chunks are independent (examples are
independent in eval mode), and torch ops release the GIL, so ``W`` chunks are walked at once by ``W``
Python threads, ``W`` = ``torch.get_num_threads()`` -- the caller's setting, read, never changed: no
code here calls ``torch.set_num_threads`` (an earlier version changed the process-wide count around
every walk). Each worker's ops run on ``W // workers`` threads (1 when there are at least ``W`` chunks),
set by the thread-local OpenMP / MKL calls (:func:`singledir.threadlocal.set_local_threads`), so the process uses the
caller's ``W`` threads in all, not ``W`` teams of ``W``. With one chunk it runs in the caller's thread
at the caller's thread count.

On a GPU the ops are queued asynchronously on one stream: one worker (``W = 1``).

Thread-local state of the caller (grad mode, inference mode, torch-function modes) is entered in each
worker, so a chunk runs as it would in the caller's thread.

The numbers depend on ``W`` only by float rounding: a chunk's arithmetic is the same whichever thread
runs it and the per-chunk totals are summed in chunk order, but the chunk size is chosen for ``W``
workers and the CPU's last-level cache (:func:`.probe.device_chunk`, :func:`.probe.balanced_chunk`) and a
GEMM over a different number of rows may round differently in the last bit. For a given kind of CPU and
thread count the results are reproducible.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait

import torch
from torch.overrides import _get_current_function_mode_stack

from singledir.threadlocal import set_local_threads

__all__ = ["THREAD_LOCAL_WORKERS", "chunk_workers", "example_chunks", "host_reads_free", "map_chunks"]

#: Give each worker ``W // workers`` threads by thread-local OpenMP / MKL settings (True), or leave every
#: worker at torch's per-thread default of ``W`` intra-op threads (False: up to ``W * workers`` threads;
#: ``benchmarks/bench_ablation.py --pool-threads`` compares the two).
THREAD_LOCAL_WORKERS = True


def host_reads_free(device) -> bool:
    """Whether the host may read values of tensors on ``device`` inside hot loops at no cost (the CPU).

    On a GPU each read (``.item()``, ``bool(t)``, ``nonzero``) waits for the queued kernels: there the
    walks skip row-sparse steps, score ties without a data-dependent branch and check for non-finite
    losses once per chunk instead of per level. One predicate, so that tests can run the GPU branches
    on the CPU (:mod:`singledir.reliance.devicecheck`).
    """
    return torch.device(device).type == "cpu"


def chunk_workers(device: torch.device) -> int:
    """Threads that walk chunks at once: the caller's ``torch.get_num_threads()`` on the CPU, 1 elsewhere."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, torch.get_num_threads())


def map_chunks(fn: Callable, chunks: Iterable, workers: int) -> list:
    """``[fn(chunk) for chunk in chunks]``, computed by ``workers`` threads (results in chunk order).

    An exception in any chunk propagates (the first one in chunk order) after the running chunks end.
    """
    chunks = list(chunks)
    if workers <= 1 or len(chunks) <= 1:
        return [fn(c) for c in chunks]
    # grad mode, inference mode and torch-function modes are per thread: the workers get the caller's
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    modes = _get_current_function_mode_stack()

    nworkers = min(workers, len(chunks))
    per_worker = max(1, workers // nworkers)

    def run(c):
        # set per task: the pool's threads are kept between calls (:func:`_executor`)
        set_local_threads(per_worker if THREAD_LOCAL_WORKERS else workers)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(inference))
            stack.enter_context(torch.set_grad_enabled(grad))
            for m in modes:
                stack.enter_context(m)
            return fn(c)

    if threading.current_thread().name.startswith(_PREFIX):  # called from a chunk: no nested pool
        return [fn(c) for c in chunks]
    futures = [_executor(nworkers).submit(run, c) for c in chunks]
    try:
        return [f.result() for f in futures]
    finally:  # on an exception the chunks not yet started are cancelled, the running ones end
        for f in futures:
            f.cancel()
        wait(futures)


_PREFIX = "singledir-chunk"
_POOLS: dict = {}
_POOLS_LOCK = threading.Lock()


def _executor(n: int) -> ThreadPoolExecutor:
    """A pool of ``n`` chunk threads, kept for later calls: starting and joining two threads per call cost
    ~5-9 ms, 2-3% of the MLP curve (each task sets its thread's OpenMP / MKL count itself)."""
    with _POOLS_LOCK:
        ex = _POOLS.get(n)
        if ex is None:
            ex = _POOLS[n] = ThreadPoolExecutor(max_workers=n, thread_name_prefix=_PREFIX)
        return ex


def example_chunks(batches, n: int):
    """Yield ``(start, x, y)`` chunks of ``n`` consecutive examples across the batches, in order."""
    buf_x, buf_y, have, start = [], [], 0, 0
    for x, y in batches:
        i = 0
        while i < x.shape[0]:
            take = min(n - have, x.shape[0] - i)
            buf_x.append(x[i : i + take])
            buf_y.append(y[i : i + take])
            have += take
            i += take
            if have == n:
                yield start, torch.cat(buf_x) if len(buf_x) > 1 else buf_x[0], torch.cat(buf_y) if len(
                    buf_y
                ) > 1 else buf_y[0]
                start += have
                buf_x, buf_y, have = [], [], 0
    if have:
        yield start, torch.cat(buf_x) if len(buf_x) > 1 else buf_x[0], torch.cat(buf_y) if len(buf_y) > 1 else buf_y[
            0
        ]
