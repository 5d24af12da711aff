"""The fx path's own intra-op thread count for its walks: chosen per model, set for the walk, always restored.

Offers :func:`walk_threads` (the count the fast path uses for a traced model's rest) and
:func:`torch_threads` (a context manager: ``torch.set_num_threads(n)`` inside, the caller's
``torch.get_num_threads()`` restored on exit, also when an exception propagates).

Why. A level walk issues many mid-sized ops on cache-sized chunks (:mod:`.evaluator` sizes them to
~16 MiB of recomputed state): element-wise ops, rank-1 updates and small GEMMs of a few microseconds
each, where the OpenMP fork/join of every op costs about as much as the arithmetic. Measured on this
project's 2-core machine: the MLP curve reached 25.7x the reference at one thread but 19.9x / 15.6x at
torch's default of two (issue 8), and under load two threads made the walk 3-10x slower (OpenMP barriers
wait for descheduled threads), while one thread stayed fast. So when the recomputed part holds no
convolution (MLP rests, a ConvNet's last layer: pool -> flatten -> Linear) the walk runs on ONE thread.
A rest that recomputes convolutions (a middle ConvNet layer) is compute-bound: there the caller's thread
count is kept. The reference and hook paths always run at the caller's setting.

The numbers do not depend on the choice beyond float rounding of multi-threaded reductions; the choice is
a pure function of the model and the caller's thread count, so runs stay reproducible.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["torch_threads", "walk_threads"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_CONV_FUNCS = {torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d}


def walk_threads(split) -> int | None:
    """1 when the rest of ``split`` (an :class:`~.graph.Split`) runs no convolution, else None (keep the
    caller's count)."""
    for n in split.rest:
        if n.op == "call_module" and isinstance(split.traced.module(n.target), _CONV):
            return None
        if n.op == "call_function" and n.target in _CONV_FUNCS:
            return None
    return 1


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (``None``: unchanged); the caller's count restored after."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
