"""The fx path's example chunks, processed by a pool of threads: every core the caller gives torch.

Offers :func:`chunk_workers` (how many threads walk chunks at once) and :func:`map_chunks` (a function
of one chunk applied to every chunk, in parallel, results in chunk order).

Why threads over chunks, not multi-threaded ops. A level walk issues many mid-sized ops on cache-sized
chunks (element-wise ops, rank-1 updates, small GEMMs of a few microseconds each): spreading each op over
the cores costs an OpenMP fork/join per op, about as much as the arithmetic, and under load an OpenMP
barrier waits for a descheduled thread (measured on this project's 2-core machine: the MLP curve ran
slower at torch's default of 2 intra-op threads than at 1). Chunks are independent (examples are
independent in eval mode), and torch ops release the GIL, so ``W`` chunks are walked at once by ``W``
Python threads, ``W`` = ``torch.get_num_threads()`` -- the caller's setting, read, never changed: no
code here calls ``torch.set_num_threads`` (an earlier version changed the process-wide count around
every walk). Inside a worker, torch's own intra-op parallelism still applies to ops large enough to use
it (its grain size), so a compute-bound rest (convolutions) is not starved.

On a GPU the ops are queued asynchronously on one stream: one worker (``W = 1``).

Thread-local state of the caller (grad mode, inference mode, torch-function modes) is entered in each
worker, so a chunk runs as it would in the caller's thread.

The numbers depend on ``W`` only by float rounding: a chunk's arithmetic is the same whichever thread
runs it and the per-chunk totals are summed in chunk order, but the chunk size is chosen for ``W``
workers (:meth:`~.evaluator.FastEvaluator._balanced`) and a GEMM over a different number of rows may
round differently in the last bit. For a given thread count the results are reproducible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.overrides import _get_current_function_mode_stack

__all__ = ["chunk_workers", "host_reads_free", "map_chunks"]


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

    def run(c):
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(inference))
            stack.enter_context(torch.set_grad_enabled(grad))
            for m in modes:
                stack.enter_context(m)
            return fn(c)

    ex = ThreadPoolExecutor(max_workers=min(workers, len(chunks)), thread_name_prefix="singledir-chunk")
    futures = [ex.submit(run, c) for c in chunks]
    try:
        return [f.result() for f in futures]
    finally:  # on an exception the chunks not yet started are cancelled, the running ones end
        ex.shutdown(wait=True, cancel_futures=True)
