"""The bounded refresh pool: at most so many token requests in flight at once.

An :class:`~pleo_auth.Integration` holds a grant per company, and grants born
together come due together. Without a bound, a cold start of thousands of
expired grants sends thousands of refreshes at once: the token endpoint slows
down, replies time out, and a refresh whose reply is lost costs its grant. So
every refresh of an integration's grants first takes a slot here, *before* the
store's lock (whose lease must not run while it waits), and gives it back once
the new pair is saved.

Requests come first: a refresh that a request is waiting for takes the next free
slot, and a proactive refresh takes one only when no request waits, and never
the last one.

Thread safety:
    Every method may be called from any thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from .errors import ConfigurationError

__all__ = ["NO_GATE", "RefreshGate"]


class RefreshGate:
    """Slots for token requests: ``slots`` at once, requests before the timer."""

    def __init__(self, slots: int):
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ConfigurationError(
                f"max_concurrent_refreshes must be an integer >= 1, not {slots!r}"
            )
        self.slots = slots
        self._cond = threading.Condition()
        self._busy = 0
        self._proactive = 0
        self._waiting = 0  # requests waiting for a slot
        self._queued = 0  # proactive refreshes waiting for a slot
        #: The most slots ever taken at once, for tests and benchmarks.
        self.peak = 0

    @contextlib.contextmanager
    def slot(self, *, urgent: bool) -> Iterator[None]:
        """Hold a slot for one refresh.

        Args:
            urgent: A request waits for this refresh (else it is proactive, and
                yields to every waiting request).
        """
        with self._cond:
            if urgent:
                self._waiting += 1
                try:
                    while self._busy >= self.slots:
                        self._cond.wait()
                finally:
                    self._waiting -= 1
            else:
                self._queued += 1
                try:
                    while (
                        self._waiting
                        or self._busy >= self.slots
                        or self._proactive >= max(1, self.slots - 1)
                    ):
                        self._cond.wait()
                finally:
                    self._queued -= 1
                self._proactive += 1
            self._busy += 1
            self.peak = max(self.peak, self._busy)
        try:
            yield
        finally:
            with self._cond:
                self._busy -= 1
                if not urgent:
                    self._proactive -= 1
                self._cond.notify_all()

    @property
    def waiting(self) -> tuple[int, int]:
        """Refreshes waiting for a slot now: (for requests, proactive)."""
        with self._cond:
            return self._waiting, self._queued

    def _after_fork_in_child(self) -> None:
        self._cond = threading.Condition()
        self._busy = self._proactive = self._waiting = self._queued = 0


class _NoGate:
    """A single grant's refreshes need no pool: there is one at a time."""

    @contextlib.contextmanager
    def slot(self, *, urgent: bool) -> Iterator[None]:
        yield


NO_GATE = _NoGate()
