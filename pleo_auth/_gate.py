"""The bounded refresh pool: at most so many token requests in flight at once.

An :class:`~pleo_auth.Integration` holds a grant per company, and grants born
together come due together. Without a bound, a cold start of thousands of
expired grants sends thousands of refreshes at once: the token endpoint slows
down, replies time out, and a refresh whose reply is lost costs its grant. So
every token request of an integration's grants takes a slot here.

Requests come first: a refresh that a request is waiting for takes the next free
slot, and a proactive refresh takes one only when no request waits, and never
the last one. A request's refresh takes its slot under the store's lock, just
for its token request, so one that waits for a lock another process holds holds
no slot; a proactive refresh takes its slot before it makes its coordinator
busy, so the company's requests never wait for the pool on its account (it may
then wait for the lock holding the slot, but never the last one). The slots an
urgent refresh holds are always sending: no wait can close a circle.

The pool also keeps the token endpoint's pace. When Pleo answers a refresh with
429 (or 503 and ``Retry-After``), the refresh that got it waits as the server
asks, but the other slots would only run into the same limit, each then waiting
out a whole ``Retry-After``: a cold start would go in bursts, at well under the
server's rate. So the pool learns a rate instead (additive increase,
multiplicative decrease, as TCP does): it spaces its sends at 90% of the rate it
had sent at when refused, raises that rate a little every second without a
refusal, and stops spacing once the rate is far above anything refused.

Thread safety:
    Every method may be called from any thread.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Hashable, Iterator

from ._clock import SYSTEM_CLOCK, Clock
from .errors import ConfigurationError

__all__ = ["NO_GATE", "RefreshGate"]


class RefreshGate:
    """Slots for token requests: ``slots`` at once, requests before the timer."""

    def __init__(self, slots: int, *, clock: Clock = SYSTEM_CLOCK):
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
        self._clock = clock
        self._pace = _Pace()
        self._never = threading.Event()
        #: Proactive refreshes that found no slot, to wake when one is given back.
        self._wakers: dict[Hashable, Callable[[], object]] = {}

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
                    while self._full_for_proactive_locked():
                        self._cond.wait()
                finally:
                    self._queued -= 1
            now, send_at = self._take_locked(urgent)
        with self._held(urgent, now, send_at):
            yield

    def try_proactive(
        self, key: Hashable, wake: Callable[[], object]
    ) -> contextlib.AbstractContextManager[None] | None:
        """A slot for a proactive refresh if one is free now, else None, and
        ``wake`` is called (once, whatever the number of tries under ``key``) when
        a slot is given back. The scheduler's workers never wait here: while
        requests keep the pool busy, a worker that waited would hold up every
        other timer of the process."""
        with self._cond:
            if self._full_for_proactive_locked():
                self._wakers[key] = wake
                return None
            now, send_at = self._take_locked(urgent=False)
        return self._held(False, now, send_at)

    def _full_for_proactive_locked(self) -> bool:
        return bool(
            self._waiting or self._busy >= self.slots or self._proactive >= max(1, self.slots - 1)
        )

    def _take_locked(self, urgent: bool) -> tuple[float, float]:
        if not urgent:
            self._proactive += 1
        self._busy += 1
        self.peak = max(self.peak, self._busy)
        now = self._clock.monotonic()
        return now, self._pace.reserve(now)

    @contextlib.contextmanager
    def _held(self, urgent: bool, now: float, send_at: float) -> Iterator[None]:
        try:
            if send_at > now:  # holding the slot, so the order of the turns holds too
                self._clock.wait(self._never, send_at - now)
            yield
        finally:
            with self._cond:
                self._busy -= 1
                if not urgent:
                    self._proactive -= 1
                self._cond.notify_all()
                wakers, self._wakers = self._wakers, {}
            for wake in wakers.values():  # outside the lock: wake takes the scheduler's
                wake()

    def throttled(self) -> None:
        """The token endpoint refused a refresh as over its capacity: slow down."""
        with self._cond:
            self._pace.refused(self._clock.monotonic())

    @property
    def rate(self) -> float | None:
        """Token requests a second the pool spaces its sends at; None: unspaced."""
        with self._cond:
            return self._pace.rate(self._clock.monotonic())

    @property
    def waiting(self) -> tuple[int, int]:
        """Refreshes waiting for a slot now: (for requests, proactive)."""
        with self._cond:
            return self._waiting, self._queued + len(self._wakers)

    def _after_fork_in_child(self) -> None:
        self._cond = threading.Condition()
        self._busy = self._proactive = self._waiting = self._queued = 0
        self._pace = _Pace()
        self._wakers = {}


class _Pace:
    """The pool's learned rate of token requests. Called holding the gate's lock."""

    #: Of the rate sent at when refused, the share to go on at.
    DECREASE = 0.9
    #: Each second without a refusal raises the rate by this share of the rate
    #: set at the last refusal, and by at least ``MIN_STEP`` requests a second.
    INCREASE = 0.05
    MIN_STEP = 2.0
    #: Never slower than this, whatever the server says.
    MIN_RATE = 1.0
    #: Spacing stops once the rate is this many times the last one refused.
    RELEASE = 4.0
    #: Refusals within this many seconds of a slow-down are one event: the
    #: slots in flight meet the same limit together.
    SETTLE = 1.0

    def __init__(self) -> None:
        self._sent: collections.deque[float] = collections.deque()  # the last second's
        self._base: float | None = None  # the rate set at the last refusal
        self._since = 0.0
        self._next = float("-inf")

    def rate(self, now: float) -> float | None:
        if self._base is None:
            return None
        rate = self._base + max(self._base * self.INCREASE, self.MIN_STEP) * (now - self._since)
        if rate >= self.RELEASE * self._base / self.DECREASE:
            self._base = None  # far above the rate refused: no longer spaced
            return None
        return rate

    def reserve(self, now: float) -> float:
        """When the send that takes a slot now may go: ``now`` when unspaced."""
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        rate = self.rate(now)
        at = now if rate is None else max(now, self._next)
        if rate is not None:
            self._next = at + 1.0 / rate
        self._sent.append(at)
        return at

    def refused(self, now: float) -> None:
        if self._base is not None and now - self._since < self.SETTLE:
            return
        while self._sent and self._sent[0] <= now - 1.0:
            self._sent.popleft()
        sent = float(len(self._sent))
        current = self.rate(now)
        if current is not None:
            sent = min(sent, current)
        self._base = max(self.MIN_RATE, sent * self.DECREASE)
        self._since = now
        self._next = now + 1.0 / self._base


class _NoGate:
    """A single grant's refreshes need no pool: there is one at a time."""

    @contextlib.contextmanager
    def slot(self, *, urgent: bool) -> Iterator[None]:
        yield

    def throttled(self) -> None:
        """A single grant sends one refresh at a time: Retry-After is pace enough."""

    def try_proactive(
        self, key: Hashable, wake: Callable[[], object]
    ) -> contextlib.AbstractContextManager[None] | None:
        return contextlib.nullcontext()


NO_GATE = _NoGate()
