"""The fast evaluator's probe: check the traced graph against the model, pick the layout, size the chunks.

:func:`probe` runs once, when a :class:`~.evaluator.FastEvaluator` is made. It runs the traced graph node
by node on a few examples: an op that cannot run that way becomes :class:`~.graph.TraceFailed` (the
caller then uses the hook path, with a warning), a graph whose output differs from the model's too; out
of memory, a :class:`~singledir.errors.SingledirError` and the engine's own bugs propagate instead. It
then decides whether 2-D activations are kept column-major (:mod:`.layout`), records the shapes and
dtypes of the graph's values, and sizes the example chunks (:func:`device_chunk`, :func:`balanced_chunk`).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from singledir.errors import SingledirError
from singledir.reliance.fast.graph import TraceFailed
from singledir.reliance.fast.layout import nbytes
from singledir.reliance.plan import check_logits

__all__ = ["probe", "device_chunk", "balanced_chunk", "last_level_cache"]

#: Least target size of the per-level recomputed state of one example chunk on the CPU; a worker's share
#: of the last-level cache when that is larger (:func:`device_chunk`).
_CACHE_TARGET = 16 << 20
_MIN_CHUNK = 512
#: What running the traced graph node by node raises when an op of the model cannot run that way (the model
#: itself has just run on the same batch): an op given an argument of a type or layout it does not take.
#: Anything else -- out of memory, a SingledirError, a KeyError / AttributeError / AssertionError of a bug in
#: the engine -- propagates instead of becoming a silent fallback to the hook path.
_CANNOT_RUN = (RuntimeError, TypeError, ValueError, NotImplementedError, IndexError)
_NEVER_FALLBACK = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError, SingledirError)


def _matches_model(got, ref) -> bool:
    return isinstance(got, torch.Tensor) and got.shape == ref.shape and torch.allclose(
        got, ref, rtol=1e-4, atol=1e-5 * (1 + float(ref.abs().max()))
    )


def probe(ev) -> None:
    """Run ``ev``'s traced graph on a few examples: check it matches the model, measure sizes, and decide
    whether 2-D activations are kept column-major (:mod:`.layout`). Sets ``ev.probe_n``, ``colmajor``,
    ``shapes``, ``dtypes``, ``bytes_per_example``, ``rest_bytes`` and ``chunk``."""
    x = ev.feed(ev.batches[0][0][:3])
    n = ev.probe_n = x.shape[0]
    ref = check_logits(ev.model(x))  # the model's own errors (and out-of-memory) propagate as they are
    try:
        env = ev.split.run_prefix(x)
        cache = dict(env)
        ev.run_rest(env, ev.split.rest)
    except _CANNOT_RUN as exc:  # an op the node-by-node execution cannot run: use the hook path
        if isinstance(exc, _NEVER_FALLBACK):
            raise
        raise TraceFailed(f"running the traced graph failed: {type(exc).__name__}: {exc}") from exc
    got = env[ev.out_node]
    if not _matches_model(got, ref):
        raise TraceFailed("the traced graph does not reproduce the model's output")
    if ev.linear_nodes and any(ev._colmajor_ok(k, v) for k, v in cache.items()):
        ev.colmajor = True
        try:
            cenv = ev.to_colmajor(cache)
            ev.run_rest(cenv, ev.split.rest)
            ev.colmajor = _matches_model(cenv[ev.out_node], ref)
        except RuntimeError as exc:  # an op of the model needs row-major 2-D tensors (e.g. .view)
            if isinstance(exc, _NEVER_FALLBACK):
                raise
            ev.colmajor = False
    ev.shapes = {k: tuple(v.shape) for k, v in env.items() if isinstance(v, torch.Tensor)}
    ev.dtypes = {k: v.dtype for k, v in env.items() if isinstance(v, torch.Tensor)}
    for m in ev.split.markers:
        h = env[m]
        if not isinstance(h, torch.Tensor) or h.ndim < 2 or h.shape[0] != n:
            raise TraceFailed(f"marker of {ev.split.marker_layer[m]} has no batch/unit dimension")
    cache = sum(nbytes(env[b]) for b in ev.split.boundary) / n
    rest = sum(nbytes(env.get(r)) for r in ev.split.rest) / n
    acc = sum(2 * nbytes(env.get(m)) for m in ev.split.markers) / n
    peak = max((nbytes(v) for v in env.values()), default=0) / n
    per_example = ev.bytes_per_example = cache + 3 * rest + 2 * acc + 2 * peak + 1
    ev.rest_bytes = rest + acc
    n_budget = max(1, int(ev.budget // (per_example * ev.workers)))
    ev.chunk = balanced_chunk(ev, min(n_budget, device_chunk(ev, per_example)))


def device_chunk(ev, per_example: float) -> int:
    """Examples per chunk ``ev``'s device favours. CPU: the recomputed state of a chunk stays in the
    worker's share of the last-level cache (:func:`last_level_cache`, at least ``_CACHE_TARGET``): the
    walks are memory-bandwidth bound, and each level costs a dozen torch calls per chunk whatever its
    size, so the largest chunks the cache holds are the fastest (MLP curve over both layers, 10k images,
    2 workers, 48 MB L3: chunks of 5000 instead of 2500 (a 16 MB target), 0.19-0.20 s against 0.22-0.32 s,
    interleaved). CUDA: as many as a quarter of the free device memory holds (``torch.cuda.mem_get_info``):
    larger chunks, fewer kernel launches. Other devices: the CPU rule."""
    if ev.device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(ev.device)
        return max(_MIN_CHUNK, int(free // 4 // per_example))
    target = max(_CACHE_TARGET, _LLC() // max(1, ev.workers))
    return max(_MIN_CHUNK, int(target // max(1.0, ev.rest_bytes)))


def last_level_cache(root: str | Path = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """Bytes of the CPU's last-level cache: cpu0's highest-level data or unified cache in Linux's sysfs
    (``root``), 0 where the system does not say (then chunks use ``_CACHE_TARGET``). Read by hand: neither
    the standard library nor torch exposes cache sizes."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    best = (0, 0)
    for d in Path(root).glob("index*"):
        try:
            level, kind, size = ((d / f).read_text().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        digits, unit = (size[:-1], units[size[-1]]) if size[-1:] in units else (size, 1)
        if kind == "Instruction" or not digits.isdigit() or not level.isdigit():
            continue
        best = max(best, (int(level), int(digits) * unit))
    return best[1]


_LLC = functools.lru_cache(maxsize=1)(last_level_cache)


def balanced_chunk(ev, chunk: int) -> int:
    """``chunk`` lowered so that ``ev``'s chunks are of about equal size and their number is a multiple of
    the workers (two workers and three chunks would leave one worker idle a third of the time)."""
    total = sum(int(b[1].shape[0]) for b in ev.batches)
    count = max(1, math.ceil(total / chunk))
    count = ev.workers * math.ceil(count / ev.workers) if total >= ev.workers else count
    return max(1, math.ceil(total / count))
