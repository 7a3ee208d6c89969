"""Checks of settings shared by the session, the login flow and the token endpoint."""

from __future__ import annotations

import math

from .errors import ConfigurationError

__all__ = ["MAX_SECONDS", "check_attempts", "check_seconds"]

#: The longest duration any setting may have: about 11.5 days. Longer values are
#: certainly mistakes (milliseconds for seconds), and overflow timers.
MAX_SECONDS = 1_000_000.0


def check_seconds(name: str, value: object, *, positive: bool = False) -> float:
    """A duration setting as a float, or a ConfigurationError that names it.

    Args:
        name: The setting's name, for the message.
        value: An int or float; a bool, a string or None is refused.
        positive: Refuse zero too.

    Raises:
        ConfigurationError: Not a number, not finite, negative (or zero when
            ``positive``), or above :data:`MAX_SECONDS`.
    """
    least = "a positive" if positive else "a"
    wanted = f"{name} must be {least} number of seconds, at most {MAX_SECONDS:,.0f}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{wanted}, not {type(value).__name__}")
    try:
        seconds = float(value)
    except OverflowError:
        raise ConfigurationError(wanted) from None
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise ConfigurationError(wanted)
    if seconds > MAX_SECONDS:
        raise ConfigurationError(wanted)
    return seconds


def check_attempts(name: str, value: object) -> int:
    """A count of attempts: an int of at least 1 (a bool is refused).

    Raises:
        ConfigurationError: Which setting is wrong, and why.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be an integer of at least 1")
    return value
