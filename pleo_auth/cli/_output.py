"""Everything the ``pleo-auth`` command prints goes through here (tests watch ``print``)."""

from __future__ import annotations

import sys
from typing import TextIO

from .._text import one_line

__all__ = ["MESSAGE_LIMIT", "error", "say"]

#: The longest error message printed: longer ones are cut.
MESSAGE_LIMIT = 2000


def say(out: TextIO, text: str = "") -> None:
    """One line of normal output."""
    print(text, file=out, flush=True)


def error(text: str, *details: str) -> None:
    """``pleo-auth: text`` on stderr, then each detail on a line of its own.

    Messages can quote outside text (a path, a URL, Pleo's error description):
    each line is kept to one line, whatever that text holds.
    """
    print(f"pleo-auth: {one_line(text, MESSAGE_LIMIT)}", file=sys.stderr)
    for detail in details:
        print(f"  {one_line(detail, MESSAGE_LIMIT)}", file=sys.stderr)
