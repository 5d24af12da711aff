"""Source hashes of the code behind a number: part of every run name and every analysis cache key.

- :data:`MEASUREMENT_CODE`, :func:`measurement_code_hash` -- the measurement code (reliance, measures,
  models, data, the per-run analyses) plus an analysis function's own module: in every analysis key.
- :data:`TRAINING_CODE`, :func:`training_code_hash` -- the code that makes a network's weights: in every
  run name.

Both also hash the torch / numpy / scipy / pandas versions and the package version. Hashing the source
(rather than a hand-bumped version number) makes a stale cached result impossible rather than unlikely.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

__all__ = ["MEASUREMENT_CODE", "TRAINING_CODE", "measurement_code_hash", "training_code_hash"]

# The code that determines a measured number, relative to the package folder: its source is hashed into
# every analysis cache key (with the analysis function's own module), so no hand-bumped version can be
# forgotten. Folders are read recursively (*.py).
MEASUREMENT_CODE = ("reliance", "measures", "models", "data", "analysis", "devices.py", "threadlocal.py",
                    "training/rundir.py", "training/run.py", "training/config.py")

# The code whose edits can change a trained network's weights: its source hash is part of every run name.
TRAINING_CODE = ("training/grouped.py", "training/stack.py", "training/threads.py", "threadlocal.py",
                 "training/loop.py", "training/target.py", "training/evaluation.py", "training/data.py",
                 "training/config.py", "models", "data")


def _package_files(rels: Sequence[str]) -> list[Path]:
    """The ``.py`` files under the package-relative paths ``rels`` (folders searched recursively)."""
    import singledir

    root = Path(singledir.__file__).resolve().parent
    files: list[Path] = []
    for rel in rels:
        p = root / rel
        files.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p] if p.is_file() else [])
    return files


def _source_files(fn: Callable) -> list[Path]:
    files = _package_files(MEASUREMENT_CODE)
    module = sys.modules.get(fn.__module__)
    own = getattr(module, "__file__", None)
    if own and Path(own).resolve() not in files:
        files.append(Path(own).resolve())
    return files


def _code_hash(files: Sequence[Path]) -> str:
    """sha256 (16 hex digits) of the source of ``files`` and of the torch / numpy / scipy / pandas versions."""
    import numpy
    import scipy
    import torch

    import singledir

    h = hashlib.sha256()
    root = Path(singledir.__file__).resolve().parent
    for f in files:
        name = f.relative_to(root).as_posix() if f.is_relative_to(root) else f.name
        h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps({"torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
                         "pandas": pd.__version__, "singledir": singledir.__version__}, sort_keys=True).encode())
    return h.hexdigest()[:16]


def measurement_code_hash(fn: Callable) -> str:
    """:func:`_code_hash` of :data:`MEASUREMENT_CODE` and ``fn``'s module: what, besides the run and the
    params, makes ``fn``'s numbers.

    Read from disk on every call (a few hundred kB), so an edit made while a process runs is seen too.
    """
    return _code_hash(_source_files(fn))


@functools.lru_cache(maxsize=1)
def training_code_hash() -> str:
    """:func:`_code_hash` of :data:`TRAINING_CODE`: part of every run name, so a run trained by other
    training code (another engine's arithmetic, another model definition, other data handling) is never
    taken from the run cache. Read once per process."""
    return _code_hash(_package_files(TRAINING_CODE))
