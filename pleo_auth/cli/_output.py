"""Everything the ``pleo-auth`` command prints goes through here (tests watch ``print``)."""

from __future__ import annotations

import datetime
import sys
from typing import TextIO

from .._text import one_line

__all__ = ["MESSAGE_LIMIT", "error", "say", "span", "when"]

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


# -- time, as a person reads it -------------------------------------------------------


def when(at: float, now: float, *, seconds: bool = True) -> str:
    """``2025-01-31 14:00:00 CET (in 12 min)``: a moment, and how far it is."""
    moment = datetime.datetime.fromtimestamp(at).astimezone()
    left = at - now
    relative = f"in {span(left)}" if left >= 0 else f"{span(-left)} ago"
    shown = f"{moment:%Y-%m-%d %H:%M:%S %Z}" if seconds else f"{moment:%Y-%m-%d %H:%M}"
    return f"{shown} ({relative})"


def span(seconds: float) -> str:
    """``12 min``: a duration, rounded for a person."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
