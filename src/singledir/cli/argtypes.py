"""Argument types shared by the subcommands: integers with a lower bound, checked by argparse."""

from __future__ import annotations

import argparse


def int_at_least(lo: int, name: str | None = None):
    """An argparse ``type`` accepting integers >= ``lo``; ``name`` (e.g. ``"--jobs"``) starts the message.

    >>> int_at_least(1)("3")
    3
    """
    desc = "a positive integer" if lo == 1 else f"an integer >= {lo}"

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = None
        if v is None or v < lo:
            raise argparse.ArgumentTypeError(f"{name} must be {desc}, got {text!r}" if name else f"expected {desc}, got {text!r}")
        return v

    return parse
