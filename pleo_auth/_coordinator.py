"""One coordinator per set of stored tokens per process: the Condition, the single
flight, the proactive timer, and the cross-process protocol through the store (its
store-side half, under the store's lock, is :mod:`pleo_auth._rotation`).

The protocol, for every refresh, wherever it starts (timer, request, 401, user):

1. Under the Condition, one thread becomes the refresher; every other thread
   waits for its result. New requests wait too, and the refresher gives requests
   already in flight a bounded time to finish before it spends their token.
2. Outside the Condition, the refresher takes the store's lock (shared by every
   process, and for Redis every host), re-reads the store, and:
   - adopts the stored tokens if another process has already rotated them;
   - otherwise spends the refresh token *found in the store* and saves the
     new pair before letting go of the lock.
3. Back under the Condition it publishes the result and wakes everyone.

Between refreshes, each request compares the store's cheap ``version()`` with the
one its tokens came from, and reloads when another process has rotated them.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Hashable
from typing import Literal, TypeVar

from ._clock import Clock
from ._endpoint import TokenEndpoint
from ._gate import NO_GATE, RefreshGate
from ._monitor import Monitor
from ._restore import lost_message
from ._rotation import Operation, _Outcome, _StoreProtocol
from ._schedule import RefreshSchedule
from ._scheduler import WORKER_NAME, scheduler_for
from ._timer import _ProactiveTimer
from .errors import PleoAuthError, ReauthenticationRequired, RefreshError, TokenStoreError
from .events import GrantDead, Observers, RequestHeld
from .login_hint import LoginHint
from .stores.base import TokenStore
from .tokens import TokenSet

logger = logging.getLogger("pleo_auth")

_NEVER: Hashable = object()  # a version no store ever reports

#: After that, the pause between the timer's attempts to write the pair back.
_WRITE_BACK_PAUSE = 1.0


#: Which grants the scheduler refreshes ahead of expiry: ``"always"`` (a session's
#: grant, as 0.1 did), or ``"when-used"``: only grants a request used within the
#: last access-token lifetime (an integration's, most of which sit idle).
Policy = Literal["always", "when-used"]


class Coordinator(_ProactiveTimer, _StoreProtocol):
    """Serialises refreshes of one set of stored tokens within a process.

    Thread safety:
        Every public method may be called from any thread. All shared state is
        guarded by one :class:`threading.Condition`; no I/O happens while holding it.
    """

    # Defaults, set on the instance when they first change: what __init__ sets stays
    # under the 30 attributes that keep CPython's instance dict shared-key (300 bytes,
    # not 1.6 KiB, for each of an Integration's thousands of coordinators).
    _last_failure: PleoAuthError | None = None
    _in_flight = 0
    _unsaved = False
    _removals = 0  # grants removed from the store (see abandon_unsaved)
    _store_unreachable = False

    def __init__(
        self,
        store: TokenStore,
        endpoint: TokenEndpoint,
        *,
        schedule: RefreshSchedule,
        clock: Clock,
        drain_timeout: float,
        login_hint: str | LoginHint | Callable[[], LoginHint],
        policy: Policy = "always",
        gate: RefreshGate | None = None,
        owns_endpoint: bool = True,
        company: str | None = None,
    ):
        self.store = store
        #: Who gets this grant's events (see pleo_auth.events).
        self.observers = Observers(company)
        self.endpoint = endpoint
        self.schedule = schedule
        self.policy: Policy = policy
        self.gate = gate if gate is not None else NO_GATE
        self._owns_endpoint = owns_endpoint
        self._clock = clock
        self._drain_timeout = drain_timeout
        self._hint = login_hint
        self._lock_timeout = 2 * endpoint.budget + drain_timeout + 5.0
        self._lease = endpoint.budget + 5.0

        self._cond = Monitor()
        self._busy: Operation | None = None
        self._generation = 0
        self._tokens: TokenSet | None = None
        self._version: Hashable = _NEVER
        self._retry_not_before = float("-inf")
        self._jitter = 0.0  # this rotation's share of the timer's jitter, in [0, 1)
        self._callbacks: dict[int, Callable[[], object]] = {}
        self._closed = False
        self._last_used = -math.inf  # monotonic time of the last request
        # "when-used" and unused: nothing is scheduled until a request.
        self._dormant = policy == "when-used"
        self._warmed = False
        self._started = False
        self._entry = scheduler_for(clock).register(self)

    # -- sessions come and go ------------------------------------------------

    def attach(
        self, handle: int, on_reauthentication_required: Callable[[], object] | None
    ) -> None:
        if on_reauthentication_required is not None:
            with self._cond:
                self._callbacks[handle] = on_reauthentication_required

    def seed(self, tokens: TokenSet) -> None:
        """Put ``tokens`` in the store, unless it already holds newer ones.

        Only an empty store is seeded, or one holding an ancestor of ``tokens``
        (:attr:`TokenSet.lineage`): never by the clock. An app that passes its first
        login's reply at every start rebuilds it with a new ``expires_at`` each time,
        yet the store's rotated descendant of it is the live pair; and a pair the
        store holds that is unrelated to ``tokens`` (a later login, or a pair saved by
        pleo-auth 0.1, which kept no lineage) may be that descendant too.
        """
        with self.store.lock(timeout=self._lock_timeout, lease=self._lease):
            stored = self.store.load()
            if stored is not None and not tokens.descends_from(stored):
                if stored.refresh_token == tokens.refresh_token:
                    return
                if tokens.fingerprint in stored.lineage:
                    logger.info(
                        "not seeding tokens=: %s holds tokens %s, which replaced them",
                        self.store.describe(),
                        stored.fingerprint,
                    )
                else:
                    logger.warning(
                        "not seeding tokens=: %s already holds other tokens (%s). To use "
                        "a new login, save it with AuthorizationFlow, or log out first",
                        self.store.describe(),
                        stored.fingerprint,
                    )
                return
            self.store.save(tokens.succeeding(stored), replaces=stored)
        with self._cond:
            self._version = _NEVER  # reload on next use

    # -- the hot path ---------------------------------------------------------

    def acquire(self) -> TokenSet:
        """Tokens fit to send now. Pair every call with :meth:`release`.

        Raises:
            ReauthenticationRequired: There are no live tokens; log in again.
            RefreshError, TokenStoreError: The token expired and could not be refreshed.
        """
        version = self._peek_version()
        held_since = None  # perf_counter() when this request first waited
        with self._cond:
            self._last_used = self._clock.monotonic()
            if self._dormant:
                self._dormant = False
                self._wake_locked()
            while True:
                if self._busy is not None:
                    held_since = held_since or time.perf_counter()
                    self._cond.wait()
                    # The operation we waited for read the store under its lock:
                    # its version is at least as new as the one read before waiting.
                    version = self._version
                    continue
                if version != self._version:
                    self._sync_locked()
                    version = self._version
                    continue
                tokens = self._tokens
                if tokens is None:
                    raise self._reauthentication_error()
                now = self._clock.time()
                remaining = tokens.expires_at - now
                if now >= self.schedule.due_at(tokens):
                    if self._clock.monotonic() >= self._retry_not_before:
                        held_since = held_since or time.perf_counter()
                        self._run_locked("refresh", functools.partial(self._refresh, tokens, False))
                        version = self._version
                        continue
                    if remaining <= 0 and self._last_failure is not None:
                        raise _fresh_copy(self._last_failure)
                self._in_flight += 1
                if held_since is not None and self.observers:
                    held = time.perf_counter() - held_since
                    self.observers.emit(RequestHeld(company=self.observers.company, duration=held))
                return tokens

    def release(self) -> None:
        with self._cond:
            self._in_flight -= 1
            if self._busy is not None and self._in_flight <= 0:
                self._cond.notify_all()

    def current(self) -> TokenSet | None:
        """The tokens this process would use, reloaded if another process rotated them."""
        version = self._peek_version()
        with self._cond:
            version = self._wait_until_idle_locked(version)
            if version != self._version:
                self._sync_locked()
            if self._tokens is None and isinstance(self._last_failure, TokenStoreError):
                raise _fresh_copy(self._last_failure)
            return self._tokens

    # -- refreshes ------------------------------------------------------------

    def refresh(self) -> TokenSet:
        """Refresh now (or adopt a rotation another process made) and return the tokens."""
        version = self._peek_version()
        with self._cond:
            if self._busy == "refresh":
                failure = self._wait_for_current_locked()
            else:
                version = self._wait_until_idle_locked(version)
                known = self._tokens
                if version != self._version:
                    self._sync_locked()
                basis = self._tokens
                if basis is None:
                    raise self._reauthentication_error()
                if known is not None and basis.refresh_token != known.refresh_token:
                    return basis  # another process rotated them since we last looked
                failure = self._run_locked("refresh", functools.partial(self._refresh, basis, True))
            if failure is not None:
                raise _fresh_copy(failure)
            if self._tokens is None:
                raise self._reauthentication_error()
            return self._tokens

    def keep_alive(self, basis: TokenSet) -> PleoAuthError | None:
        """Refresh ``basis``, read from the store, unless another process or thread
        has rotated it since: a refresh token that is never spent dies of disuse.
        Yields to requests for a slot of the refresh pool. The failure, if any."""
        with self._cond:
            self._wait_until_idle_locked(self._version)
        # The pool's slot before the coordinator is busy (see _timer._refresh_if_due),
        # and never waiting for it with the slot in hand: a request's refresh makes it
        # busy first, then waits for a slot, maybe this one.
        with self.gate.slot(urgent=False), self._cond:
            if self._closed or self._busy is not None:
                return None  # an operation under way: the next sweep looks again
            refresh = functools.partial(self._refresh, basis, False, slot_held=True)
            return self._run_locked("refresh", refresh)

    def recover_from_unauthorized(self, used: TokenSet) -> TokenSet | None:
        """After a 401 for ``used``: the tokens to replay with, or None to give up.

        If the tokens were replaced meanwhile (here or in another process), those
        are returned at no cost. Otherwise one refresh runs first, unless a 401
        already forced the refresh that issued ``used`` and it is not yet due: then
        Pleo refuses the grant for a reason a refresh does not cure (a scope, a
        gateway), and refreshing on every such 401 would only burn refresh grants.
        """
        version = self._peek_version()
        with self._cond:
            version = self._wait_until_idle_locked(version)
            if version != self._version:
                self._sync_locked()
            current = self._tokens
            if current is not None and current.access_token != used.access_token:
                return current
            if current is None:
                raise self._reauthentication_error()
            if self._superseded == current:
                return self._replay_after_restore_locked(used)  # the store lost its data
            if self._clock.monotonic() < self._retry_not_before:
                return None
            failure = self._run_locked(
                "refresh", functools.partial(self._refresh, used, True, after_401=True)
            )
            if isinstance(failure, ReauthenticationRequired):
                raise _fresh_copy(failure)
            if self._tokens is None:
                # The refresh found the store empty: another process saw the grant die.
                raise self._reauthentication_error()
            if failure is not None and self._superseded == self._tokens:
                return self._replay_after_restore_locked(used)  # the store lost its data
            if failure is not None or self._tokens.access_token == used.access_token:
                return None  # failed, or declined (see _refresh): the caller gets the 401
            return self._tokens

    def _sync_locked(self) -> None:
        """Reload from the store; a store failure is raised only if it leaves no tokens."""
        failure = self._run_locked("sync", self._sync)
        if failure is not None and self._tokens is None:
            raise _fresh_copy(failure)

    def _wait_until_idle_locked(self, version: Hashable) -> Hashable:
        """Wait out a running operation; returns the store version to compare with."""
        if self._busy is None:
            return version
        while self._busy is not None:
            self._cond.wait()
        return self._version

    def _wait_for_current_locked(self) -> PleoAuthError | None:
        generation = self._generation
        while self._generation == generation:
            self._cond.wait()
        return self._last_failure

    def _run_locked(
        self, operation: Operation, work: Callable[[], _Outcome]
    ) -> PleoAuthError | None:
        """Run ``work`` as the single flight. Called, and returns, holding the Condition."""
        self._busy = operation
        previous = self._tokens
        removals = self._removals
        outcome: _Outcome | None = None
        try:
            if operation == "refresh":
                self._drain_locked()
            self._cond.release()
            try:
                outcome = work()
            except PleoAuthError as exc:
                outcome = _Outcome(previous, self._version, exc, unsaved=self._unsaved)
            except Exception as exc:
                # A bug or a foreign store's own exception: keep the process usable,
                # and report it at the library boundary.
                logger.exception("unexpected error during %s", operation)
                failure = RefreshError(f"unexpected error during {operation}: {type(exc).__name__}")
                failure.__cause__ = exc
                outcome = _Outcome(previous, self._version, failure, unsaved=self._unsaved)
            finally:
                self._cond.acquire()
        finally:
            if outcome is not None and removals != self._removals:
                # The grant was removed meanwhile: nothing of it is written back.
                outcome = outcome._replace(unsaved=False)
            self._publish_locked(outcome, previous)
        if outcome.grant_dead and previous is not None and self.observers:
            error = getattr(outcome.failure, "error", None)
            self.observers.emit(GrantDead(company=self.observers.company, error=error))
        if outcome.grant_dead and previous is not None and self._callbacks:
            self._notify_reauthentication_locked()
        return outcome.failure

    def _publish_locked(self, outcome: _Outcome | None, previous: TokenSet | None) -> None:
        if outcome is not None:
            self._tokens = outcome.tokens
            self._version = outcome.version
            self._last_failure = outcome.failure
            self._unsaved = outcome.unsaved
            if outcome.failure is not None and not outcome.grant_dead:
                retry_after = getattr(outcome.failure, "retry_after", None) or 0.0
                cooldown = max(self.schedule.failure_cooldown, retry_after)
                if outcome.unsaved:
                    # The store holds a spent pair, or none: write back soon.
                    cooldown = min(cooldown, _WRITE_BACK_PAUSE)
                if outcome.retry_in is not None:
                    cooldown = outcome.retry_in
                self._retry_not_before = self._clock.monotonic() + cooldown
            elif outcome.tokens is not previous:
                self._retry_not_before = float("-inf")
                self._jitter = random.random()
        self._busy = None
        self._generation += 1
        self._cond.notify_all()
        self._wake_locked()

    def _notify_reauthentication_locked(self) -> None:
        callbacks = list(self._callbacks.values())
        self._cond.release()
        try:
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    logger.exception("on_reauthentication_required callback failed")
        finally:
            self._cond.acquire()

    def _drain_locked(self) -> None:
        """Give requests already sent with the old token a bounded time to finish."""
        deadline = self._clock.monotonic() + self._drain_timeout
        while self._in_flight > 0:
            left = deadline - self._clock.monotonic()
            if left <= 0:
                logger.debug("refreshing with %d requests still in flight", self._in_flight)
                return
            self._cond.wait(left)

    def _peek_version(self) -> Hashable:
        """The store's version, or, when it cannot be read, the one the tokens in
        memory came from: a store that is down must not stop a request whose token
        is live. A rotation made elsewhere meanwhile is caught by the 401 replay."""
        try:
            version = self.store.version()
        except PleoAuthError as exc:
            if not self._store_unreachable:
                self._store_unreachable = True
                logger.warning(
                    "cannot check %s for rotations (%s); using the tokens in memory",
                    self.store.describe(),
                    exc,
                )
            if self._tokens is None:
                return object()  # nothing in memory: load, and raise the store's error
            return self._version
        if self._store_unreachable:
            self._store_unreachable = False
            logger.info("%s answers again", self.store.describe())
        self._note_version(version)  # a store moved past our pair (see _restore)
        return version

    def _reauthentication_error(self) -> PleoAuthError:
        """Why there are no tokens: the failure that left none (a dead grant, an
        unreadable store), else an empty store."""
        failure = self._last_failure
        if failure is not None:
            return _fresh_copy(failure)
        where = self.store.describe()
        reason = lost_message(where) if self._found_lost else f"No Pleo tokens in {where}."
        return ReauthenticationRequired(reason, login_hint=self.login_hint)

    # -- lifetime -------------------------------------------------------------

    def forget(self, handle: int) -> None:
        self.observers.discard(handle)
        with self._cond:
            self._callbacks.pop(handle, None)

    def abandon_unsaved(self) -> None:
        """The grant was removed from the store, whose lock the caller holds: a pair
        a failed save left only in memory must never be written back over the
        removal, by the timer, a lingering close, or an operation under way."""
        with self._cond:
            self._unsaved = False
            self._removals += 1

    @property
    def owes_write_back(self) -> bool:
        """Whether a failed save left the live pair only in memory (the stored one is
        spent, or was withdrawn). Read without the Condition: a bool is read whole."""
        return self._unsaved

    def may_wait_here(self) -> bool:
        """Whether this thread may wait for the timer or the store: not inside our own
        Condition (a ``__del__`` the garbage collector ran inside one of our methods),
        where that would deadlock, nor on a timer thread (reaping a collected session),
        where two timers could wait for each other."""
        return not self._cond.is_owned() and threading.current_thread().name != WORKER_NAME

    def write_back_once(self) -> bool:
        """One attempt to save a pair a failed save left only in memory. Call it only
        where :meth:`may_wait_here`.

        Returns:
            True once nothing is owed.
        """
        with self._cond:
            if self._unsaved and self._busy is None:
                self._run_locked("sync", self._write_back)
            return not self._unsaved

    def linger(self) -> None:
        """Go on with no session attached: the last one closed while the live pair
        waits to be saved, and closing now would lose the grant. The timer writes the
        pair back once the store takes it; the registry then closes this coordinator,
        or a new session over the same tokens takes it up again."""
        tokens = self._tokens
        logger.warning(
            "the last session over %s closed while tokens %s wait to be saved; keeping "
            "them in memory, and trying every %gs until the store takes them",
            self.store.describe(),
            tokens.fingerprint if tokens is not None else "-",
            _WRITE_BACK_PAUSE,
        )
        with self._cond:
            self._wake_locked()

    def settle(self, timeout: float) -> bool:
        """Wait for an operation under way to publish (a refresh to save its tokens);
        False if it still ran after ``timeout`` seconds."""
        if not self.may_wait_here():
            return False
        with self._cond:
            if self._busy == "refresh":
                logger.info("waiting for a refresh under way to save its tokens")
            return self._cond.wait_for(lambda: self._busy is None, timeout)

    def close(self) -> None:
        """Stop the timer. A refresh already under way is allowed to finish and
        save: the old refresh token is spent, and exiting now would lose the new one.
        For the same reason, a pair that a failed save left only in memory gets one
        more attempt to be written back."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._entry.close()
        if not self.may_wait_here():
            # The rest of the close runs on a thread of its own.
            threading.Thread(target=self._finish_close, name="pleo-auth-close", daemon=True).start()
            return
        self._finish_close()

    def _finish_close(self) -> None:
        with self._cond:
            # A refresh under way saves its pair before this goes on.
            self._cond.wait_for(lambda: self._busy is None, self._lock_timeout)
            if self._unsaved and self._busy is None:
                # The last chance to save the live pair: the stored one is spent.
                self._run_locked("sync", self._write_back)
            lost = self._tokens if self._unsaved else None
        if lost is not None:
            logger.error(
                "tokens %s were never saved to %s and are lost with this coordinator: the "
                "stored pair is spent, so a person must log in again",
                lost.fingerprint,
                self.store.describe(),
            )
        if self._owns_endpoint:
            self.endpoint.close()

    def _reset_after_fork(self) -> None:
        # The parent's threads do not exist here: whatever they held is void.
        self._cond = Monitor()
        self._busy = None
        self._in_flight = 0
        self._version = _NEVER  # reload: the parent may have been mid-rotation
        # A pair a failed save left in memory is the parent's to write back: it may
        # spend it, and fail to save again, before this child looks at the store.
        self._unsaved = False
        if self._owns_endpoint:
            self.endpoint.reset_connections()


_E = TypeVar("_E", bound=PleoAuthError)


def _fresh_copy(error: _E) -> _E:
    """A new exception like ``error``, so threads never share one traceback."""
    copy = error.__class__.__new__(error.__class__)
    copy.__dict__.update(error.__dict__)
    copy.args = error.args
    copy.__cause__ = error.__cause__
    return copy
