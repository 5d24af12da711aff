"""Threads of the stacked engine on the CPU: every stack computed on one OpenMP / MKL thread, the stacks of
a group side by side in a pool of Python threads (one per thread the caller gives torch).

Why. A training step of a stack of small MLPs is a few dozen mid-sized ops (batched matrix products of a
few milliseconds, element-wise ops of microseconds). Spread over the cores, each op costs an OpenMP
fork/join, and under load a barrier waits for a descheduled thread: on this project's 2-core machine,
shared with other work (load 4-7), an epoch of 16 networks at batch size 32 took 8.0 s of wall time (4.1
s of CPU) at torch's default 2 intra-op threads and 1.1 s (0.6 s of CPU) at 1 thread. Networks are
independent, so the group is cut into stacks (:class:`.stack.Parts`) that Python threads train at once
(torch ops release the GIL), each stack's ops on one thread, set by the thread-local OpenMP / MKL calls
(no ``torch.set_num_threads``: the caller's process-wide setting is read, never changed).

Numbers. A network's arithmetic does not depend on its stack (see :mod:`.grouped`), and on one thread it
does not depend on torch's thread count either. It equals the arithmetic at 2 intra-op threads of the
earlier code (which ran every op on torch's threads): checked bit for bit for the presets' MLPs
(``tests/test_grouped.py`` and the issue-14 check against the earlier code). Where the thread-local
setters are missing (a torch build without ``libgomp`` / MKL), the stacks run one after another in the
caller's thread at its thread count, as before.

Offers :func:`stack_workers` (how many stacks a group is cut into) and :func:`map_parts`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

from singledir.threadlocal import set_local_threads, setters

__all__ = ["stack_workers", "map_parts", "one_thread"]


@contextlib.contextmanager
def one_thread():
    """The calling thread's torch ops on one thread (thread-local OpenMP / MKL counts), restored after."""
    if setters() is None:
        yield
        return
    before = torch.get_num_threads()  # this thread's count (torch initialises it on first use)
    set_local_threads(1)
    try:
        yield
    finally:
        set_local_threads(before, mkl_n=0)


def stack_workers(device) -> int:
    """Stacks trained at once: the caller's ``torch.get_num_threads()`` on the CPU (1 without the
    thread-local setters), 1 elsewhere."""
    if torch.device(device).type != "cpu" or setters() is None:
        return 1
    return max(1, torch.get_num_threads())


def map_parts(fn: Callable, parts: Sequence, cpu: bool = True) -> list:
    """``[fn(p) for p in parts]``, each on one thread (``cpu``) and all at once by Python threads.

    The caller's thread runs the first part; an exception in any part propagates (the first in part
    order) after every part has ended, so no thread is left changing a stack.
    """
    if not cpu:
        return [fn(p) for p in parts]
    grad = torch.is_grad_enabled()

    def run(p):
        with torch.set_grad_enabled(grad), one_thread():
            return fn(p)

    if len(parts) == 1 or setters() is None:
        return [run(p) for p in parts]
    with ThreadPoolExecutor(max_workers=len(parts) - 1, thread_name_prefix="singledir-stack") as ex:
        futures = [ex.submit(run, p) for p in parts[1:]]
        try:
            first = run(parts[0])
        finally:
            done = [(f.result() if f.exception() is None else f.exception()) for f in futures]
    for r in done:
        if isinstance(r, BaseException):
            raise r
    return [first, *done]
