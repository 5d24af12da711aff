"""Command-line interface: ``singledir SUBCOMMAND ...``.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)`` (which
registers its arguments and sets ``func``) -- see ``SUBCOMMANDS``. User errors (:class:`SingledirError`)
print one line ``singledir: error: ...`` and exit with status 2; Ctrl-C exits with 130.
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
_FLAGS = {"resume=True": "--resume", "overwrite=True": "--overwrite", "out_dir": "--out"}
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
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
