"""Command-line interface: ``singledir SUBCOMMAND ...``.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)`` (which
registers its arguments and sets ``func``) -- see ``SUBCOMMANDS``. User errors (:class:`SingledirError`)
print one line ``singledir: error: ...`` and exit with status 2, and so do errors of the machine rather
than of singledir -- a file system error (:class:`OSError`: a read-only or full disk, a path that is a
file) and running out of memory; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from singledir import __version__
from singledir.errors import SingledirError

# subcommand name -> module under singledir.cli
SUBCOMMANDS = {
    "train": "train",
    "layers": "layers",
    "analyze": "analyze",
    "reproduce": "reproduce",
    "zoo": "zoo",
    "measures": "measures",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="singledir",
        description="Measure a network's reliance on single directions (Morcos et al., ICLR 2018).",
    )
    parser.add_argument("--version", action="version", version=f"singledir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in SUBCOMMANDS.values():
        importlib.import_module(f"singledir.cli.{mod}").add_parser(sub)
    return parser


# Library messages name Python parameters; on the command line the same fix is spelled as a flag.
_FLAGS = {"resume=True": "--resume", "overwrite=True": "--overwrite", "out_dir": "--out",
          "data_dir": "--data-dir"}
_FLAG_RE = re.compile(r"(?<![\w/.-])(" + "|".join(map(re.escape, _FLAGS)) + r")(?![\w/.-])")


def as_flags(message: str) -> str:
    """``message`` with the library's parameter spellings (``overwrite=True``, ...) replaced by CLI flags.

    >>> as_flags("pass overwrite=True or choose another out_dir (not /runs/out_dir/a)")
    'pass --overwrite or choose another --out (not /runs/out_dir/a)'
    """
    return _FLAG_RE.sub(lambda m: _FLAGS[m.group(1)], message)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except SingledirError as err:
        print(f"singledir: error: {as_flags(str(err))}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("singledir: interrupted", file=sys.stderr)
        return 130
    except OSError as err:
        print(f"singledir: error: {os_message(err)}", file=sys.stderr)
        return SingledirError.exit_code
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        print(f"singledir: error: out of memory ({_first_line(err)}); choose smaller settings "
              f"(--width, --batch-size, --max-examples) or a machine with more memory", file=sys.stderr)
        return SingledirError.exit_code
    return int(rc or 0)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:200]


def os_message(err: OSError) -> str:
    """One line for a file system error: what failed, on which path, and what to do."""
    what = err.strerror or _first_line(err)
    where = " -> ".join(str(p) for p in (err.filename, err.filename2) if p is not None)
    return f"{what}{': ' + where if where else ''}; check the path and its permissions, or choose another"


def out_of_memory(err: BaseException) -> bool:
    """True for an allocation failure (Python's MemoryError, torch's CPU or CUDA out-of-memory errors)."""
    if isinstance(err, MemoryError):
        return True
    msg = str(err)
    return "can't allocate memory" in msg or "out of memory" in msg.lower() or type(err).__name__ == "OutOfMemoryError"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
