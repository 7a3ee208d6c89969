"""The capacity of the emulator's token endpoint: how many requests a second and
how many at once it takes, and what it does with the rest."""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Literal

import attrs

from .._clock import Clock

__all__ = ["TokenCapacity"]

CapacityMode = Literal["reject", "delay"]


def _check_count(name: str, value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an integer >= 1, or None for no limit")


@attrs.frozen
class TokenCapacity:
    """How much the emulator's token endpoint takes before it pushes back, as a
    real server under load does; give it as ``Emulator(token_capacity=...)`` or
    :meth:`Emulator.set_token_capacity`.

    A request over capacity is decided *before* anything else happens to it: no
    fault is consumed, no hook called, and no refresh token or code spent. It is
    counted in :attr:`EmulatorCounters.throttled` (``mode="reject"``) or
    :attr:`EmulatorCounters.delayed` (``mode="delay"``), and in
    :attr:`EmulatorCounters.token_requests`.

    Example::

        Emulator(token_capacity=TokenCapacity(per_second=200, concurrent=16))
        Emulator(token_capacity=TokenCapacity(per_second=50, mode="delay"))

    Attributes:
        per_second: At most this many requests are admitted in any one second
            of the emulator's clock (a sliding window; a
            :class:`~pleo_auth.testing.FakeClock` drives it). None: no limit.
        concurrent: At most this many admitted requests are handled at once
            (from admission until the reply is made, injected delays and the
            token request hook included). None: no limit.
        mode: ``"reject"`` answers a request over capacity at once with 429,
            ``{"error": "temporarily_unavailable"}`` and ``Retry-After``;
            ``"delay"`` holds it until it fits (the next free second on the
            emulator's clock, then a free slot), then handles it as usual. A
            held request the emulator stops under is refused, and gives back
            its place in the rate: after a restart it counts for nothing.
        retry_after: With ``"reject"``: the ``Retry-After`` to send, in
            seconds, written as given. None (the default): the seconds until
            the rate would admit the request, rounded up to a whole second as
            HTTP's delta-seconds are, and at least 1.

    Raises:
        ValueError: A limit that is not an integer >= 1, neither limit given,
            an unknown mode, or a negative, non-finite or misplaced
            ``retry_after``.

    Thread safety:
        Immutable; share it freely.
    """

    per_second: int | None = None
    concurrent: int | None = None
    mode: CapacityMode = "reject"
    retry_after: float | None = None

    def __attrs_post_init__(self) -> None:
        _check_count("per_second", self.per_second)
        _check_count("concurrent", self.concurrent)
        if self.per_second is None and self.concurrent is None:
            raise ValueError("give per_second, concurrent or both: a capacity needs a limit")
        if self.mode not in ("reject", "delay"):
            raise ValueError('mode must be "reject" or "delay"')
        retry_after = self.retry_after
        if retry_after is None:
            return
        if isinstance(retry_after, bool) or not isinstance(retry_after, int | float):
            raise ValueError("retry_after must be a finite number of seconds >= 0")
        if not math.isfinite(retry_after) or retry_after < 0:
            raise ValueError("retry_after must be a finite number of seconds >= 0")
        if self.mode != "reject":
            raise ValueError('retry_after applies to mode="reject" only')


@dataclass(frozen=True)
class _Decision:
    """What admission made of one request."""

    admitted: bool
    delayed: bool = False
    retry_after: str = ""  # the header value of a refusal


class _Admission:
    """The live state behind a :class:`TokenCapacity`: admission times within the
    last second of the clock, and the requests in flight.

    Thread safety: every method may be called from any thread. Its own condition
    guards the state and is never held across a wait on the clock.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._admitted: deque[float] = deque()  # nondecreasing admission times
        self._in_flight = 0
        self._held = 0  # delayed requests waiting now
        self._closed = threading.Event()

    def enter(self, capacity: TokenCapacity) -> _Decision:
        """Admit a request, refuse it, or (delay mode) wait until it fits.

        An admitted request must call :meth:`leave` once it is handled. A delayed
        request the emulator stops under is refused.
        """
        if capacity.mode == "reject":
            return self._enter_or_refuse(capacity)
        return self._enter_when_free(capacity)

    def leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse the requests being delayed now (the emulator stops), and wait
        (up to ``timeout`` real seconds) until none is left waiting."""
        with self._cond:
            self._closed.set()
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._held == 0, timeout)

    def reopen(self) -> None:
        with self._cond:
            self._closed.clear()

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    def wait_for_held(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._held >= count, timeout)

    def _hold(self, change: int) -> None:
        with self._cond:
            self._held += change
            self._cond.notify_all()

    def _prune(self, now: float) -> None:
        while self._admitted and self._admitted[0] <= now - 1.0:
            self._admitted.popleft()

    def _enter_or_refuse(self, capacity: TokenCapacity) -> _Decision:
        limit = capacity.per_second
        with self._cond:
            now = self._clock.monotonic()
            self._prune(now)
            wait = 0.0
            if limit is not None and len(self._admitted) >= limit:
                wait = self._admitted[-limit] + 1.0 - now
            busy = capacity.concurrent is not None and self._in_flight >= capacity.concurrent
            if wait <= 0 and not busy:
                self._admitted.append(now)
                self._in_flight += 1
                return _Decision(admitted=True)
        if capacity.retry_after is not None:
            seconds = capacity.retry_after
            header = str(int(seconds) if float(seconds).is_integer() else seconds)
        else:
            header = str(max(1, math.ceil(wait)))
        return _Decision(admitted=False, retry_after=header)

    def _enter_when_free(self, capacity: TokenCapacity) -> _Decision:
        limit = capacity.per_second
        with self._cond:
            now = self._clock.monotonic()
            self._prune(now)
            at = now
            if limit is not None and len(self._admitted) >= limit:
                at = max(now, self._admitted[-limit] + 1.0)
            if limit is not None:
                self._admitted.append(at)  # the slot is reserved even while we wait
        self._hold(1)
        try:
            decision = self._wait_until_free(capacity, at, delayed=at > now)
            if not decision.admitted and limit is not None:
                self._give_back(at)
            return decision
        finally:
            self._hold(-1)

    def _give_back(self, at: float) -> None:
        """Free the rate slot reserved at ``at`` by a request that was refused after
        all (the emulator stopped): nothing of it was spent, so neither is its slot."""
        with self._cond:
            # Equal times are interchangeable; a slot already pruned is gone anyway.
            if at in self._admitted:
                self._admitted.remove(at)

    def _wait_until_free(self, capacity: TokenCapacity, at: float, *, delayed: bool) -> _Decision:
        while (remaining := at - self._clock.monotonic()) > 0:
            if self._clock.wait(self._closed, remaining):
                return _Decision(admitted=False, retry_after="1")
        with self._cond:
            concurrent = capacity.concurrent
            if concurrent is not None and self._in_flight >= concurrent:
                delayed = True
                while self._in_flight >= concurrent and not self._closed.is_set():
                    self._cond.wait()
            if self._closed.is_set():
                return _Decision(admitted=False, retry_after="1")
            self._in_flight += 1
        return _Decision(admitted=True, delayed=delayed)
