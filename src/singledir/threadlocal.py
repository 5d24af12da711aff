"""Thread-local OpenMP / MKL thread counts: one Python thread's torch ops on ``n`` threads, the process-wide
setting untouched.

``torch.set_num_threads`` changes the count for the whole process. OpenMP's ``nthreads`` and MKL's local
count are per-thread settings, so a worker thread may set its own; torch has no API for that, hence the
``ctypes`` calls into the libraries the torch wheel ships. Used by the fast path's chunk pool
(:mod:`singledir.reliance.fast.pool`) and the stacked training engine (:mod:`singledir.training.threads`).

Offers :func:`setters` (the two library functions, or None where this torch build lacks them) and
:func:`set_local_threads`.
"""

from __future__ import annotations

import ctypes
import functools
import os

import torch

__all__ = ["set_local_threads", "setters"]


@functools.lru_cache(maxsize=1)
def setters():
    """``(omp_set_num_threads, mkl_set_num_threads_local)`` of this torch build's libraries (ctypes), or
    None where there is no ``libgomp`` (a build without OpenMP: nothing can be set per thread); the MKL entry
    is None where missing. In the x86 wheels MKL is linked into ``libtorch_cpu.so`` and its
    ``mkl_set_num_threads_local`` is the Fortran entry point (a pointer argument; 0 restores MKL's global
    setting)."""
    lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    try:
        omp = ctypes.CDLL(os.path.join(lib, "libgomp.so.1")).omp_set_num_threads
        omp.argtypes, omp.restype = [ctypes.c_int], None
    except (OSError, AttributeError):
        return None
    try:
        mkl = ctypes.CDLL(os.path.join(lib, "libtorch_cpu.so")).mkl_set_num_threads_local
        mkl.argtypes, mkl.restype = [ctypes.POINTER(ctypes.c_int)], ctypes.c_int
    except (OSError, AttributeError):
        mkl = None
    return omp, mkl


def set_local_threads(n: int, *, mkl_n: int | None = None) -> None:
    """Let the calling thread's torch ops use ``n`` threads (MKL: ``mkl_n``, default ``n``; 0 = MKL's global
    setting). Set after torch's own per-thread initialisation, which would overwrite it."""
    torch.get_num_threads()  # torch initialises this thread's OpenMP / MKL counts on first use
    fns = setters()
    if fns is None:
        return
    omp, mkl = fns
    omp(n)
    if mkl is not None:
        mkl(ctypes.byref(ctypes.c_int(n if mkl_n is None else mkl_n)))
