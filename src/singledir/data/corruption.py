"""Label corruption for the memorization experiments: a seeded fraction p of training labels made wrong.

Offers:

- :data:`CORRUPTION_METHODS` -- ``("shuffle", "uniform")``
- :func:`corrupt_labels` -- ``corrupt_labels(labels, p, num_classes, method="shuffle", seed=0)
  -> (new_labels, changed_mask)``
- :func:`apply_corruption` -- ``apply_corruption(dataset, p, method="shuffle", seed=0)
  -> (dataset with corrupted y_train, clean_labels, changed_mask)``; the test set is never touched

Methods (both pick ``round(p * N)`` examples with a seeded ``torch.Generator``; nothing global is used):

- ``"shuffle"`` (the replication practice for the paper): the picked examples' labels are permuted
  among themselves. Class counts are preserved exactly; with K balanced classes about ``p * (1 - 1/K)``
  of all labels end up different (0.9p for 10 classes), since some land on a label of their own class.
- ``"uniform"``: each picked example gets a label drawn uniformly from all K classes (it may equal the
  original one, so again about ``p * (1 - 1/K)`` change); class counts are not preserved.

``changed_mask`` is True exactly where the new label differs from the original. Both are returned on
the CPU; the input tensor is never modified.
"""

from __future__ import annotations

import dataclasses
import numbers

import torch

from singledir.errors import SingledirError

__all__ = ["CORRUPTION_METHODS", "apply_corruption", "corrupt_labels"]

CORRUPTION_METHODS = ("shuffle", "uniform")


def _check_p(p) -> float:
    """``p`` as a float, or SingledirError unless it is a real number in [0, 1] (NaN fails the comparison)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
        shown = float(p) if isinstance(p, numbers.Real) and not isinstance(p, bool) else repr(p)
        raise SingledirError(f"--corrupt must be in [0, 1], got {shown}")
    return float(p)


def corrupt_labels(
    labels: torch.Tensor, p: float, num_classes: int, method: str = "shuffle", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a fraction ``p`` of ``labels``; return ``(new int64 labels, bool mask of labels that changed)``.

    See the module docstring for the methods. Deterministic given ``seed``. Raises SingledirError for
    ``p`` outside [0, 1], an unknown method, or labels that are not 1-D integers in ``0..num_classes-1``.
    """
    p = _check_p(p)
    if method not in CORRUPTION_METHODS:
        raise SingledirError(f"unknown corruption method {method!r}; valid methods: {', '.join(CORRUPTION_METHODS)}")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise SingledirError(f"labels must be a 1-D integer tensor, got {labels.dtype} of shape {tuple(labels.shape)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise SingledirError(f"num_classes must be a positive integer, got {num_classes!r}")
    clean = labels.detach().to(device="cpu", dtype=torch.int64)
    if clean.numel() and (int(clean.min()) < 0 or int(clean.max()) >= num_classes):
        raise SingledirError(f"labels must lie in 0..{num_classes - 1}, found {int(clean.min())}..{int(clean.max())}")
    n = clean.numel()
    k = int(round(p * n))
    g = torch.Generator().manual_seed(int(seed))
    picked = torch.randperm(n, generator=g)[:k]
    new = clean.clone()
    if method == "shuffle":
        new[picked] = clean[picked[torch.randperm(k, generator=g)]]
    else:
        new[picked] = torch.randint(int(num_classes), (k,), generator=g, dtype=torch.int64)
    return new, new != clean


def apply_corruption(dataset, p: float, method: str = "shuffle", seed: int = 0):
    """Return ``(corrupted_dataset, clean_labels, changed_mask)`` for a :class:`~singledir.data.Dataset`.

    ``corrupted_dataset`` is a copy whose ``y_train`` holds the corrupted labels (everything else,
    including the test set and the fingerprint -- computed before corruption -- is shared with
    ``dataset``); its ``info()["corruption"]`` records p, method, seed and how many labels changed.
    Raises SingledirError if ``dataset`` is already corrupted (its clean labels would be lost).
    """
    if dataset.meta.get("corruption"):
        raise SingledirError(
            f"{dataset.name}: training labels are already corrupted; corrupt the clean dataset from load_dataset"
        )
    clean = dataset.y_train.clone()
    new, changed = corrupt_labels(clean, p, dataset.num_classes, method=method, seed=seed)
    record = {
        "p": float(p),
        "method": method,
        "seed": int(seed),
        "num_corrupted": int(round(float(p) * len(clean))),
        "num_changed": int(changed.sum()),
    }
    meta = {**dataset.meta, "corruption": record}
    return dataclasses.replace(dataset, y_train=new, meta=meta), clean, changed
