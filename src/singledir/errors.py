"""User-facing errors: one line that names the problem and the fix.

Every error a user can cause by bad input is a :class:`SingledirError` (or a subclass). The CLI prints
its message as ``singledir: error: <message>`` and exits with status 2; Python callers can catch it.
"""

from __future__ import annotations


class SingledirError(Exception):
    """Bad input or a missing resource. ``str(err)`` is one line naming the problem and the fix."""

    exit_code = 2


class DataNotFoundError(SingledirError, FileNotFoundError):
    """A dataset's files are not where we looked; the message says where we looked and how to get them."""


class DataFormatError(SingledirError, ValueError):
    """A data file is truncated or malformed; the message names the file."""


class RunDirError(SingledirError):
    """A run directory is missing, incomplete, or would be overwritten."""


class LockedError(SingledirError):
    """Another live process is writing the same run directory or output folder; the message names it."""
