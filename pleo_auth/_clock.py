"""The one place pleo_auth reads time, so tests can drive it instead of sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol


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
