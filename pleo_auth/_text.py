"""Outside text made safe to put in an error message: short, and on one line."""

from __future__ import annotations

__all__ = ["one_line", "shown"]


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a bad setting, quoted in a message.

    >>> shown("ftp://example.com")
    "'ftp://example.com'"
    >>> shown("x" * 100, limit=10)
    "'xxxxxx..."
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, each unprintable one (a newline, a
    control or a lone surrogate) replaced by ``?``.

    >>> one_line("access_denied\\r\\nX-Injected: 1", 64)
    'access_denied??X-Injected: 1'
    """
    return "".join(char if char.isprintable() else "?" for char in text[:limit])
