"""Where the subcommands write: ``--out`` paths checked before any work, one writer per folder.

- :func:`check_out` -- a one-line error for an ``--out`` that cannot be a folder (a file, under a file, a
  dangling symbolic link); a link to a folder is followed, so the folder it names is what is written.
- :func:`whole_output` -- ``with whole_output(out, "analysis") as tmp:`` write everything into ``tmp``;
  it becomes ``out`` in one swap at the end, under ``out``'s writer lock (a second writer gets a one-line
  error naming the holder). See :func:`singledir.io.atomic_directory`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from singledir.errors import SingledirError


def check_out(path, flag: str = "--out", *, folder: bool = True) -> Path:
    """``path`` (a link resolved) if a folder (``folder``) or a file can be written there; else SingledirError."""
    path = Path(path).expanduser()
    if path.is_symlink():
        target = path.resolve()
        if not target.exists():
            raise SingledirError(f"{flag} {path} is a symbolic link to {target}, which does not exist; "
                                 f"pass a real path or fix the link")
        path = target
    kind = "folder" if folder else "file"
    if path.exists() and folder and not path.is_dir():
        raise SingledirError(f"{flag} {path} is a file; pass a folder")
    if path.is_dir() and not folder:
        raise SingledirError(f"{flag} {path} is a folder; pass a file name")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise SingledirError(f"{flag} {path} lies under {parent}, which is a file; choose another {kind}")
            break
    return path


@contextlib.contextmanager
def whole_output(out, kind: str):
    """A temporary folder that becomes ``out`` only when the block finishes, under ``out``'s writer lock."""
    from singledir.experiments.leases import writer_lock
    from singledir.io import atomic_directory

    out = check_out(out)
    with writer_lock(out, f"{kind} folder"), atomic_directory(out, kind) as tmp:
        yield tmp
