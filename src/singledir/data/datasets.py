"""Load a dataset as normalized tensors: the :class:`Dataset` record, :func:`load_dataset`, fingerprints.

Offers:

- :data:`DATASETS` -- ``("fashion-mnist", "digits", "mnist1d", "mnist", "cifar10")``
- :class:`Dataset` -- train/test tensors, class names, input shape, fingerprint, source; ``info()``
- :func:`load_dataset` -- ``load_dataset(name, data_dir=None, train_subset=None, seed=0, *,
  test_subset=None) -> Dataset``
- :func:`compute_fingerprint` -- sha256 hex over a dataset's name and exact tensors
- :func:`channel_stats` -- per-channel mean/std of a raw training split (after scaling to [0, 1])

Normalization (the same for every dataset, recorded in ``info()["normalization"]``): images are
converted to float32 and scaled to [0, 1] (uint8 / 255; digits / 16), then standardized per channel,
``(x - mean_c) / std_c``, with the mean and (population) standard deviation of the **full** training
split, computed before any subsetting -- so a subset sees exactly the same pixel values as the full
set, and the test set is normalized with training statistics. MNIST-1D is real-valued: it is not
rescaled, only standardized the same way. Statistics are exact (integer histograms, float64).

Fingerprint: sha256 over a version tag, the dataset name, and for each of x_train, y_train, x_test,
y_test its name, dtype, shape and raw bytes, taken after subsetting and before label corruption. It is
the same across runs, processes and machines for the same data and code, and changes when any value,
the subset, or the normalization changes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from singledir.data.sources import DATASETS, RawData, load_raw, resolve_name
from singledir.data.subset import balanced_subset

__all__ = ["DATASETS", "Dataset", "channel_stats", "compute_fingerprint", "load_dataset"]

_FINGERPRINT_TAG = b"singledir-dataset-fingerprint-v1\0"


@dataclass(eq=False, repr=False)
class Dataset:
    """A loaded dataset: normalized float32 inputs, int64 labels, and what it is and where it came from.

    ``y_train`` holds the labels a run trains on (corrupted if :func:`~singledir.data.apply_corruption`
    was applied); ``y_test`` is always clean. ``meta`` holds JSON-able extras shown by :meth:`info`
    (subset, normalization, corruption, how the data was made).
    """

    name: str
    x_train: torch.Tensor  # float32, (N, C, H, W) for images, (N, 1, L) for mnist1d; normalized
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor  # int64, always clean
    num_classes: int
    class_names: list[str]
    input_shape: tuple[int, ...]  # per-example shape, e.g. (1, 28, 28)
    fingerprint: str  # sha256 hex over the exact tensors (after subsetting, before corruption)
    source: str  # where it was loaded from (a path, or "sklearn" / "mnist1d")
    meta: dict = field(default_factory=dict)

    def info(self) -> dict:
        """JSON-able summary: name, shapes, num_classes, class names, fingerprint, source, subset, ..."""
        out = {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "num_classes": int(self.num_classes),
            "class_names": list(self.class_names),
            "input_shape": [int(s) for s in self.input_shape],
            "num_train": int(self.x_train.shape[0]),
            "num_test": int(self.x_test.shape[0]),
            "subset": None,
        }
        out.update(self.meta)
        return out

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
            f"input_shape={tuple(self.input_shape)}, num_classes={self.num_classes}, "
            f"fingerprint={self.fingerprint[:12]!r}, source={self.source!r})"
        )


def compute_fingerprint(name: str, x_train, y_train, x_test, y_test) -> str:
    """sha256 hex over ``name`` and the four tensors' names, dtypes, shapes and bytes (little-endian)."""
    h = hashlib.sha256(_FINGERPRINT_TAG)
    h.update(name.encode() + b"\0")
    for key, t in (("x_train", x_train), ("y_train", y_train), ("x_test", x_test), ("y_test", y_test)):
        a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        h.update(f"{key}:{a.dtype.str}:{list(a.shape)}\0".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def channel_stats(x: np.ndarray, scale: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std (float64) of ``x / scale`` (``x`` is (N, C, ...)).

    uint8 data use exact integer sums (Python ints, then one division); real-valued data use float64
    accumulation. A channel with zero spread gets std 1 (so standardizing it only centres it).
    """
    c = x.shape[1]
    mean, std = np.zeros(c), np.ones(c)
    div = float(scale or 1.0)
    for i in range(c):
        xi = x[:, i]
        if x.dtype == np.uint8:
            n = xi.size
            s1 = int(xi.sum(dtype=np.uint64))
            s2 = int((xi.astype(np.uint16) ** 2).sum(dtype=np.uint64))  # 255**2 fits in uint16
            m = s1 / n / div
            s = float(np.sqrt((s2 * n - s1 * s1) / (n * n))) / div  # exact numerator in Python ints
        else:
            xi = xi.astype(np.float64) / div
            m, s = float(xi.mean()), float(xi.std())
        mean[i], std[i] = m, (s if s > 0 else 1.0)
    return mean, std


def _normalize(x: np.ndarray, scale: float | None, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    """float32 ``((x / scale) - mean_c) / std_c``; uint8 data go through an exact 256-entry table per channel."""
    div = float(scale or 1.0)
    if x.dtype == np.uint8:
        tables = [((np.arange(256) / div - mean[i]) / std[i]).astype(np.float32) for i in range(x.shape[1])]
        if x.shape[1] == 1:
            return torch.from_numpy(tables[0][x])
        out = np.empty(x.shape, dtype=np.float32)
        for i, table in enumerate(tables):
            out[:, i] = table[x[:, i]]
        return torch.from_numpy(out)
    out = (x.astype(np.float64) / div - mean.reshape(1, -1, *([1] * (x.ndim - 2)))) / std.reshape(
        1, -1, *([1] * (x.ndim - 2))
    )
    return torch.from_numpy(out.astype(np.float32))


def _take(raw_x: np.ndarray, raw_y: np.ndarray, idx: torch.Tensor | None):
    if idx is None:
        return raw_x, raw_y
    i = idx.numpy()
    return raw_x[i], raw_y[i]


def _split_seed(seed: int, split: str) -> int:
    """A 63-bit seed for ``split``'s subset derived from the user's seed (train and test draws differ)."""
    digest = hashlib.sha256(f"singledir-subset:{split}:{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    train_subset: int | None = None,
    seed: int = 0,
    *,
    test_subset: int | None = None,
) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) as a normalized :class:`Dataset`.

    ``data_dir`` overrides where file-based datasets are looked for (see
    :mod:`singledir.data.sources`). ``train_subset=N`` keeps a fixed, seeded, class-balanced subset of
    N training examples (deterministic for a given ``seed``); ``test_subset`` does the same for the
    test set (by default the test set is never subset). Normalization statistics always come from the
    full training split. Raises SingledirError (unknown name, bad subset size), DataNotFoundError
    (files missing: the message says where it looked and how to get them) or DataFormatError (a
    malformed file, named in the message).
    """
    canonical = resolve_name(name)
    raw: RawData = load_raw(canonical, data_dir)
    num_classes = len(raw.class_names)
    mean, std = channel_stats(raw.x_train, raw.scale)

    tr_idx = te_idx = None
    if train_subset is not None:
        tr_idx = balanced_subset(raw.y_train, train_subset, num_classes, _split_seed(seed, "train"), "train subset")
    if test_subset is not None:
        te_idx = balanced_subset(raw.y_test, test_subset, num_classes, _split_seed(seed, "test"), "test subset")
    xtr, ytr = _take(raw.x_train, raw.y_train, tr_idx)
    xte, yte = _take(raw.x_test, raw.y_test, te_idx)

    x_train, x_test = _normalize(xtr, raw.scale, mean, std), _normalize(xte, raw.scale, mean, std)
    y_train = torch.from_numpy(np.array(ytr, dtype=np.int64))
    y_test = torch.from_numpy(np.array(yte, dtype=np.int64))
    fingerprint = compute_fingerprint(canonical, x_train, y_train, x_test, y_test)

    meta = {
        "subset": {
            "train": None if train_subset is None else int(train_subset),
            "test": None if test_subset is None else int(test_subset),
            "seed": int(seed),
            "full_train": int(len(raw.y_train)),
            "full_test": int(len(raw.y_test)),
            "method": "class-balanced, seeded (torch.Generator)",
        },
        "normalization": {
            "scale": "none (real-valued)" if raw.scale is None else f"x / {raw.scale:g} -> [0, 1]",
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
            "statistics": "per channel, full training split (before subsetting)",
        },
    }
    if raw.details:
        meta["details"] = dict(raw.details)
    return Dataset(
        name=canonical,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        class_names=list(raw.class_names),
        input_shape=tuple(int(s) for s in x_train.shape[1:]),
        fingerprint=fingerprint,
        source=raw.source,
        meta=meta,
    )
