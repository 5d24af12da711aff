"""Atomic file writes and JSON cleaning: the one place results reach the disk.

Offers:

- :func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json` -- write to a
  temporary file beside the target, then ``os.replace`` it: a reader sees the old file or the new one,
  never half of one, and a crash leaves no file that looks complete.
- :func:`atomic_save_safetensors`, :func:`atomic_torch_save`, :func:`atomic_write_parquet` -- the same for
  weights, resume states and tables.
- :func:`atomic_directory` -- build a whole output folder in a temporary sibling and swap it in at the
  end: a reader sees the previous complete folder or the new complete one, never a mix.
- :func:`remove_temp_files` -- remove the temporary files (``.name.tmp<pid>``) that killed writers left.
- :func:`jsonable` -- a JSON-safe copy of nested results (numpy/torch scalars to Python, NaN/inf to
  ``None``, tuples to lists, paths to strings, DataFrames to records).

Example::

    from singledir.io import atomic_write_json
    atomic_write_json(out / "summary.json", {"auc": np.float64(0.7), "ci": (0.6, float("nan"))})
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import re
import secrets
import shutil
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_save_safetensors",
    "atomic_torch_save",
    "atomic_directory",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_parquet",
    "atomic_write_text",
    "jsonable",
    "remove_temp_files",
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


_TEMP_FILE = re.compile(r"^\..+\.tmp\d+$")


def remove_temp_files(folder, *, recursive: bool = True) -> list[Path]:
    """Remove the temporary files (``.name.tmp<pid>``, see :func:`temp_path`) under ``folder``; return them.

    Call it only as the folder's one writer (e.g. under :func:`singledir.experiments.leases.writer_lock`):
    then every such file was left by a writer that was killed before it could move its file into place.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in (folder.rglob(".*.tmp*") if recursive else folder.glob(".*.tmp*"))
             if _TEMP_FILE.match(p.name) and p.is_file() and not p.is_symlink()]
    for p in found:
        p.unlink(missing_ok=True)
    return found


# ---------------------------------------------------------------------------- whole folders
def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not offered."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def _temp_siblings(path: Path) -> list[Path]:
    return [p for p in path.parent.glob(f".{path.name}.*") if re.match(rf"^\.{re.escape(path.name)}\.(new|old)-", p.name)]


@contextlib.contextmanager
def atomic_directory(path, kind: str = "output", *, signature: str = "summary.json"):
    """Yield a new empty temporary folder beside ``path``; when the block ends without error, it becomes ``path``.

    The previous ``path`` (if any) stays whole until the swap, which is one ``renameat2`` exchange on
    Linux (two renames elsewhere). So a reader -- and whoever looks after a kill -- finds the previous
    complete folder or the new complete one, never a mix; a killed writer's half-written folder is a
    hidden ``.NAME.new-*`` sibling, plainly incomplete, removed by the next writer (as are
    ``.NAME.old-*`` leftovers). ``path`` must be absent, empty, or an earlier output of the same kind (it
    holds the file ``signature``, e.g. an analysis' ``summary.json``); anything else is refused, never
    deleted. Call it
    as the one writer of ``path`` (under :func:`singledir.experiments.leases.writer_lock`). On an error the
    temporary folder is removed and ``path`` is left as it was.
    """
    from singledir.errors import SingledirError

    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise SingledirError(f"{path} is a file; pass a folder for the {kind}")
    if path.is_dir() and any(path.iterdir()) and not (path / signature).is_file():
        raise SingledirError(f"{path} is a non-empty folder that is not an earlier {kind} (it has no {signature}); "
                             f"choose another folder")
    for p in _temp_siblings(path):  # left by killed writers (we are the one writer now)
        if p.name.startswith(f".{path.name}.old-") and not path.exists():
            os.replace(p, path)  # killed between the two renames of a non-exchange swap: the old result
        else:
            shutil.rmtree(p, ignore_errors=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}.new-{tag}")
    try:
        tmp.mkdir(parents=True)
    except OSError as err:
        raise SingledirError(f"cannot create {tmp.parent}/: {err.strerror or err}; choose a writable place") from None
    try:
        yield tmp
        if path.exists():
            if not _exchange(tmp, path):
                old = path.with_name(f".{path.name}.old-{tag}")
                os.replace(path, old)
                os.replace(tmp, path)
                tmp = old
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
