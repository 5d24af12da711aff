"""Fixed, seeded, class-balanced subsets of a labelled set.

Offers:

- :func:`balanced_quotas` -- how many examples to take from each class (as equal as possible)
- :func:`balanced_subset` -- ``balanced_subset(labels, n, num_classes=None, seed=0, what="subset")``:
  sorted int64 indices of a class-balanced subset of size ``n``

Balance: every class gets ``n // K`` examples (K classes) and ``n % K`` classes, chosen at random, get
one more; a class with too few examples gives all it has and the shortfall is shared among the others
the same way ("water filling"). Within a class, the examples are the first of a seeded random
permutation. Everything is drawn from one ``torch.Generator`` seeded with ``seed``: the same labels,
``n`` and seed always give the same indices, on any machine, without touching global RNG state.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from singledir.errors import SingledirError

__all__ = ["balanced_quotas", "balanced_subset"]


def _as_label_array(labels) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise SingledirError(f"labels must be a 1-D integer array, got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def balanced_quotas(counts, n: int, generator: torch.Generator) -> np.ndarray:
    """Per-class quotas summing to ``n``, as equal as possible given each class's ``counts``.

    Requires ``sum(counts) >= n``. The classes that get one extra example are drawn from ``generator``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    quota = np.zeros_like(counts)
    remaining = int(n)
    while remaining > 0:
        open_ = np.flatnonzero(quota < counts)
        share = remaining // len(open_)
        if share == 0:  # fewer examples left than open classes: one more each for a random few
            pick = torch.randperm(len(open_), generator=generator)[:remaining].numpy()
            quota[open_[pick]] += 1
            break
        add = np.minimum(share, counts[open_] - quota[open_])
        quota[open_] += add
        remaining -= int(add.sum())
    return quota


def balanced_subset(labels, n: int, num_classes: int | None = None, seed: int = 0, what: str = "subset") -> torch.Tensor:
    """Indices (sorted, int64) of a fixed, seeded, class-balanced subset of ``n`` examples of ``labels``.

    ``num_classes`` defaults to ``max(labels) + 1``. ``what`` names the subset in error messages (e.g.
    "train subset"). Raises SingledirError if ``n`` is not an integer, is smaller than the number of
    classes (every class must be represented), or is larger than the number of examples.
    """
    y = _as_label_array(labels)
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1 if len(y) else 0
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise SingledirError(f"{what} size must be an integer, got {n!r}")
    n = int(n)
    if n > len(y):
        raise SingledirError(f"{what} of {n} is larger than the set it is drawn from ({len(y)} examples); use at most {len(y)}")
    if n < k:
        raise SingledirError(f"{what} of {n} is smaller than the number of classes ({k}); use at least {k}")
    if len(y) and (y.min() < 0 or y.max() >= k):
        raise SingledirError(f"labels must lie in 0..{k - 1}, found {int(y.min())}..{int(y.max())}")
    g = torch.Generator().manual_seed(int(seed))
    counts = np.bincount(y, minlength=k)
    quota = balanced_quotas(counts, n, g)
    order = np.argsort(y, kind="stable")  # indices grouped by class, ascending within a class
    starts = np.concatenate([[0], np.cumsum(counts)])
    chosen = []
    for c in range(k):
        if quota[c] == 0:
            continue
        members = order[starts[c] : starts[c + 1]]
        perm = torch.randperm(len(members), generator=g)[: quota[c]].numpy()
        chosen.append(members[perm])
    idx = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(idx.astype(np.int64))
