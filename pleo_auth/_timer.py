"""The coordinator's proactive timer: what one tick on the shared scheduler does
(see :mod:`pleo_auth._scheduler`), and when the next one is due."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Hashable

from ._clock import Clock
from ._gate import RefreshGate, _NoGate
from ._monitor import Monitor
from ._rotation import Operation, _Outcome
from ._schedule import RefreshSchedule
from ._scheduler import Entry
from .errors import PleoAuthError
from .stores.base import TokenStore
from .tokens import TokenSet

logger = logging.getLogger("pleo_auth")

#: How often the timer of a session's grant looks at the store, due or not: to
#: take up a rotation or a login made elsewhere, and to notice a clock that jumped.
_POLL = 30.0


class _ProactiveTimer:
    """The coordinator's ticks. Every method but :meth:`tick` and :meth:`start` is
    called holding the coordinator's Condition."""

    store: TokenStore
    gate: RefreshGate | _NoGate
    schedule: RefreshSchedule
    policy: str
    _clock: Clock
    _cond: Monitor
    _entry: Entry
    _tokens: TokenSet | None
    _version: Hashable
    _busy: str | None
    _closed: bool
    _started: bool
    _warmed: bool
    _dormant: bool
    _unsaved: bool
    _jitter: float
    _last_used: float
    _retry_not_before: float
    _peek_version: Callable[[], Hashable]
    _sync: Callable[[], _Outcome]
    _write_back: Callable[[], _Outcome]
    _refresh: Callable[..., _Outcome]
    _run_locked: Callable[[Operation, Callable[[], _Outcome]], PleoAuthError | None]
    _wait_until_idle_locked: Callable[[Hashable], Hashable]

    def _timer_due_at(self, tokens: TokenSet) -> float:
        """When the proactive timer refreshes ``tokens``, with this rotation's jitter."""
        return self.schedule.timer_due_at(tokens, self._jitter)

    def start(self) -> None:
        """Load the tokens and schedule the proactive refresh, on a scheduler worker,
        unless an earlier session over these tokens did."""
        with self._cond:
            started, self._started = self._started, True
        if not started:
            self._entry.wake()

    def _wake_locked(self) -> None:
        when = self._next_tick_locked()
        if when is not None:
            self._entry.wake(when)

    def _next_tick_locked(self) -> float | None:
        """When the timer should next look at these tokens; None for never, until a
        request or a publish says otherwise. Does no I/O."""
        if self._closed:
            return None
        now = self._clock.time()
        tokens = self._tokens
        cooldown = max(0.0, self._retry_not_before - self._clock.monotonic())
        if self._unsaved:
            return now + cooldown  # write it back: the stored pair is spent
        if self.policy == "when-used":
            if tokens is None or not self._recently_used(tokens):
                self._dormant = True
                return None
            return max(self._timer_due_at(tokens), now + cooldown)
        due = now + _POLL if tokens is None else min(self._timer_due_at(tokens), now + _POLL)
        return max(due, now + cooldown)

    def _recently_used(self, tokens: TokenSet) -> bool:
        """Whether a request used this grant within one access-token lifetime."""
        issued = tokens.issued_at if tokens.issued_at is not None else self._clock.time()
        lifetime = max(tokens.expires_at - issued, self.schedule.refresh_margin)
        return self._clock.monotonic() - self._last_used <= lifetime

    def tick(self) -> float | None:
        """One pass of the proactive timer, on a scheduler worker: load the tokens if
        another process changed them, refresh them if due, write back a pair a failed
        save left in memory. Returns when to look again (see :mod:`._scheduler`)."""
        if not self._warmed:
            self._warmed = True
            _warm_up(self.store)
        version = self._peek_version()
        with self._cond:
            if self._closed:
                return None
            cooldown = self._retry_not_before - self._clock.monotonic()
            if self._busy is None and version != self._version and cooldown <= 0:
                # Nothing has loaded the tokens yet, or another process changed them.
                self._run_locked("sync", self._sync)
                return self._next_tick_locked()
            if self._busy is not None:
                return None  # the operation under way publishes, and that wakes us
            tokens = self._tokens
            due = self._next_tick_locked()
            if tokens is None or due is None or due > self._clock.time():
                return due
        deferred = False
        try:
            deferred = self._refresh_if_due(tokens)
        except PleoAuthError as exc:
            logger.warning("proactive refresh failed: %s", exc)
        except Exception:
            logger.exception("proactive refresh crashed")
            with self._cond:  # never spin on a bug
                self._retry_not_before = self._clock.monotonic() + self.schedule.failure_cooldown
        with self._cond:
            due = self._next_tick_locked()
        if deferred and due is not None:
            # The pool wakes us when a slot is given back; this is only a backstop.
            due = max(due, self._clock.time() + _POLL)
        return due

    def _refresh_if_due(self, basis: TokenSet) -> bool:
        """Refresh ``basis`` if it is due. True if the pool had no slot free: it
        wakes this grant's entry when one is given back."""
        version = self._peek_version()
        with self._cond:
            if self._busy is not None:
                self._wait_until_idle_locked(version)
                return False
            if self._tokens is not basis or self._clock.monotonic() < self._retry_not_before:
                return False
            if version != self._version:
                self._run_locked("sync", self._sync)
                return False
            if self._clock.time() < self._timer_due_at(basis):
                if self._unsaved:
                    self._run_locked("sync", self._write_back)
                return False
        # The pool's slot before the coordinator is busy: requests wait for a busy
        # coordinator, and one whose token is fresh must never wait for the pool.
        slot = self.gate.try_proactive(self._entry, self._entry.wake)
        if slot is None:
            return True
        with slot, self._cond:
            if self._busy is None and self._tokens is basis and not self._closed:
                proactive = functools.partial(self._refresh, basis, False, slot_held=True)
                self._run_locked("refresh", proactive)
        return False


def _warm_up(store: TokenStore) -> None:
    """The timer's first act: nothing left to import, and the store touched once,
    both where a fork waits for them (see :mod:`pleo_auth._warmup`)."""
    from ._warmup import warm_up_store

    warm_up_store(store)
