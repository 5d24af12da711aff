"""Command-line interface: ``singledir SUBCOMMAND ...``.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)`` (which
registers its arguments and sets ``func``) -- see ``SUBCOMMANDS``. User errors (:class:`SingledirError`)
print one line ``singledir: error: ...`` and exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except SingledirError as err:
        print(f"singledir: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("singledir: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
