"""The one place pleo_auth reads time, so tests can drive it instead of sleeping.

Everything that schedules, expires or stamps tokens reads a :class:`Clock`: the one a
session was given, else :data:`SYSTEM_CLOCK`. A few waits read ``time.monotonic()``
on purpose, because they bound *real* time that a fake clock must not stretch or
shrink: the save retries while the store's lock is held (its lease runs out in the
store's real time), the Redis lock's polling, the fork warm-up's wait, and the
process and start-up timeouts of the testing helpers.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from typing import Protocol

from .errors import ConfigurationError


class Clock(Protocol):
    """What pleo_auth needs of time.

    Wall time (:meth:`time`) is used only for ``expires_at``; monotonic time
    (:meth:`monotonic`) for every timeout and deadline.
    """

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until ``event`` is set or ``timeout`` seconds pass; True if it was set."""
        ...


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


SYSTEM_CLOCK = SystemClock()


class _MonotonicFunction:
    """A bare function of monotonic seconds, as 0.1's RedisStore and Emulator took,
    seen as a :class:`Clock`: wall time and waits are the real ones."""

    def __init__(self, monotonic: Callable[[], float]):
        self._monotonic = monotonic

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return self._monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


def as_clock(clock: Clock | Callable[[], float] | None, *, owner: str) -> Clock:
    """``clock`` as a :class:`Clock`; None is the system clock.

    A bare function (``time.monotonic``, ``fake.monotonic``) is still taken as
    monotonic seconds, as pleo-auth 0.1 took it, with a DeprecationWarning.

    Args:
        clock: A Clock, a function of monotonic seconds, or None.
        owner: Who takes it, for the messages (``"RedisStore"``).

    Raises:
        ConfigurationError: ``clock`` is neither.
    """
    if clock is None:
        return SYSTEM_CLOCK
    if all(callable(getattr(clock, name, None)) for name in ("time", "monotonic", "wait")):
        return clock  # type: ignore[return-value]
    if callable(clock):
        warnings.warn(
            f"{owner}(clock=<function>) is deprecated: pass a Clock, such as "
            "pleo_auth.testing.FakeClock, the one the session uses (an object with "
            "time(), monotonic() and wait()); a function is read as monotonic seconds",
            DeprecationWarning,
            stacklevel=3,
        )
        return _MonotonicFunction(clock)
    raise ConfigurationError(
        f"{owner} needs a Clock (time(), monotonic() and wait()), not {type(clock).__name__}"
    )


class FakeClock:
    """A clock that moves only when a test calls :meth:`advance`.

    Threads blocked in :meth:`wait` wake when the clock passes their deadline or
    their event is set. :meth:`wait_for_sleepers` lets a test know that a
    background timer has reached its wait before the test moves time on, so no
    test depends on how fast this machine is.

    Thread safety:
        Every method may be called from any thread.
    """

    def __init__(self, start: float = 1_000_000.0):
        self._now = float(start)
        self._cond = threading.Condition()
        self._sleepers = 0

    def time(self) -> float:
        with self._cond:
            return self._now

    def monotonic(self) -> float:
        return self.time()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        with self._cond:
            deadline = self._now + timeout
            self._sleepers += 1
            self._cond.notify_all()
            try:
                while not event.is_set() and self._now < deadline:
                    # Event.set() cannot notify this condition, so look again shortly.
                    self._cond.wait(0.005)
                return event.is_set()
            finally:
                self._sleepers -= 1
                self._cond.notify_all()

    @property
    def sleepers(self) -> int:
        """How many threads are blocked in :meth:`wait` right now."""
        with self._cond:
            return self._sleepers

    def wait_for_sleepers(self, count: int = 1, timeout: float = 10.0) -> bool:
        """Block until at least ``count`` threads are in :meth:`wait`; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._sleepers >= count, timeout)
