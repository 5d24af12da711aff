"""Atomic file writes and JSON cleaning: the one place results reach the disk.

Offers:

- :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json` -- write to a
  temporary file beside the target, then ``os.replace`` it: a reader sees the old file or the new one,
  never half of one, and a crash leaves no file that looks complete.
- :func:`atomic_save_safetensors`, :func:`atomic_torch_save`, :func:`atomic_write_parquet` -- the same for
  weights, resume states and tables.
- :func:`jsonable` -- a JSON-safe copy of nested results (numpy/torch scalars to Python, NaN/inf to
  ``None``, tuples to lists, paths to strings, DataFrames to records).

Example::

    from singledir.io import atomic_write_json
    atomic_write_json(out / "summary.json", {"auc": np.float64(0.7), "ci": (0.6, float("nan"))})
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_save_safetensors",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "jsonable",
    "temp_path",
]


def temp_path(path) -> Path:
    """A hidden temporary name beside ``path``, unique to this process (``.name.tmp<pid>``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _write_atomically(path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then move it into place.

    On any error (or Ctrl-C) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path, data: bytes) -> Path:
    return _write_atomically(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, *, indent: int | None = 2) -> Path:
    """Write ``jsonable(obj)`` as JSON (strict: NaN/inf become ``null``), ending with a newline."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=indent, allow_nan=False) + "\n")


def atomic_save_safetensors(path, tensors: dict, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {k: str(v) for k, v in (metadata or {}).items()}
    return _write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def atomic_torch_save(path, obj) -> Path:
    """``torch.save`` through a temporary file (load it back with ``weights_only=True``)."""
    import torch

    return _write_atomically(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_parquet(path, df) -> Path:
    """``df.to_parquet`` (pyarrow, no index) through a temporary file."""
    return _write_atomically(path, lambda tmp: df.to_parquet(tmp, index=False))


def jsonable(obj):
    """JSON-safe copy: numpy/torch scalars to Python, NaN/inf to None, tuples to lists, Paths to str.

    DataFrames become lists of records; numpy arrays become (nested) lists; anything else unknown is
    written as ``str(obj)``.
    """
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    elif type(obj).__module__.startswith("torch") and hasattr(obj, "numel") and obj.numel() == 1:
        obj = obj.item()
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict") and hasattr(obj, "columns"):  # a DataFrame
        return [jsonable(r) for r in obj.to_dict(orient="records")]
    return str(obj)
