"""The lease protocol of the database stores, apart from any SQL: public, so that a
store over another database layer (the Django model store) follows it exactly.

A database store (:class:`~pleo_auth.stores.sql.SQLStore`, and the Django model
store) keeps each grant in one row, and its refresh lock in the same row: a
*lease* with an owner and an expiry time taken from the database's clock. This
module holds the parts of that protocol that are the same whatever talks to the
database:

* :func:`fence`: what a fenced write compares (a hash of the refresh token);
* :func:`new_owner`: the random name of one acquisition;
* :class:`LeaseTerms`: how long a row lease lasts, how often it is renewed, and
  the deadline the holder is given;
* :func:`wait_for_lease`: backoff with jitter while another owner holds it;
* :data:`RENEWER`: one thread per process that renews every lease it holds;
* :data:`HELD`: which leases the current thread holds, so a store's own
  ``save``/``clear`` inside its ``lock`` reuse the lease (re-entrance).

The statements a store runs are described in docs/guide/stores.md ("The lease
protocol").
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import logging
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Hashable, Iterator

import attrs

from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet

__all__ = [
    "DEFAULT_LEASE",
    "HELD",
    "MAX_PAUSE",
    "RENEWER",
    "Held",
    "Holding",
    "LeaseTerms",
    "Renewer",
    "check_requested",
    "confirmation_margin",
    "fence",
    "new_owner",
    "wait_for_lease",
]

logger = logging.getLogger(__name__)

#: The row lease when none is given, in seconds.
DEFAULT_LEASE = 10.0
#: The longest pause between two attempts to take a lease, in seconds.
MAX_PAUSE = 0.2
_FIRST_PAUSE = 0.005


def fence(tokens: TokenSet) -> str:
    """What a fenced write compares: the SHA-256 of the refresh token, in hex.

    The row keeps it beside the tokens, so that the database compares 64
    characters instead of parsing JSON; it reveals nothing of the token.
    """
    return hashlib.sha256(tokens.refresh_token.encode()).hexdigest()


def new_owner() -> str:
    """A fresh owner for one acquisition: 32 random hex digits."""
    return secrets.token_hex(16)


def confirmation_margin(lease: float) -> float:
    """What a holder takes off a lease it was granted, for the round trip and for the
    rates of the two clocks: 10% of it, at most a second."""
    return min(1.0, lease * 0.1)


@attrs.frozen
class LeaseTerms:
    """How long a row lease lasts, and when it is renewed.

    The row's lease is short (``lease`` seconds, 10 by default), and renewed every
    ``lease / 3`` seconds while its holder lives, so a slow refresh keeps it for as
    long as it runs, and a holder that dies (SIGKILL, a lost host) keeps the others
    waiting at most ``lease`` seconds after its last renewal.

    Attributes:
        lease: Seconds a lease lasts past its last renewal, on the database's clock.
    """

    lease: float = DEFAULT_LEASE

    def __attrs_post_init__(self) -> None:
        lease = self.lease
        if (
            isinstance(lease, bool)
            or not isinstance(lease, int | float)
            or not (0 < lease <= 300 and math.isfinite(lease))
        ):
            raise ConfigurationError(
                f"lease must be a number of seconds in (0, 300], not {lease!r}"
            )

    @property
    def renew_every(self) -> float:
        """Seconds between two renewals: a third of the lease, so two may fail."""
        return self.lease / 3.0

    def renew_until(self, requested: float) -> float:
        """When to stop renewing a lease taken now for a holder that asked for
        ``requested`` seconds: real monotonic time (:func:`time.monotonic`), past its
        :meth:`deadline`. A holder stuck for good (alive, never letting go) then
        holds the others up at most one lease longer, never for ever."""
        return time.monotonic() + max(requested, self.lease)

    def keep(
        self, renew: Callable[[], bool], *, where: str, taken_at: float, requested: float
    ) -> _Renewal:
        """Have :data:`RENEWER` renew a row lease taken (sent) at real monotonic time
        ``taken_at`` for a holder that asked for ``requested`` seconds."""
        return RENEWER.keep(
            renew,
            every=self.renew_every,
            where=where,
            lasts=self.lease,
            taken_at=taken_at,
            until=self.renew_until(requested),
        )

    def deadline(self, acquired_at: float, requested: float) -> float:
        """The :class:`~pleo_auth.Lease` deadline for a holder that asked for
        ``requested`` seconds at monotonic time ``acquired_at``.

        The row lease renews itself, so the holder may run as long as it asked
        (at least one row lease), less a margin (10%, at most a second) for the
        round trips, as for a Redis lease.
        """
        span = max(requested, self.lease)
        return acquired_at + span - confirmation_margin(span)


def check_requested(lease: object) -> float:
    """The lease a caller of ``lock`` asked for, checked.

    Raises:
        ConfigurationError: Not a positive, finite number of seconds.
    """
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not (0 < lease < math.inf):
        raise ConfigurationError("the lock's lease must be a positive number of seconds")
    return float(lease)


def wait_for_lease(attempt: Callable[[], float | None], *, timeout: float, where: str) -> None:
    """Call ``attempt`` until it takes the lease, pausing with backoff and jitter.

    Args:
        attempt: Tries once. Returns None when it took the lease, else the
            seconds left on the current holder's lease (0 when unknown).
        timeout: Seconds of real time to keep trying.
        where: How the message names the lock.

    Raises:
        TokenStoreError: Not taken within ``timeout`` (retryable).
    """
    # Real time: the holder's lease runs out on the database's clock, not ours.
    give_up_at = time.monotonic() + max(timeout, 0.0)
    pause = _FIRST_PAUSE
    while True:
        left_on_holder = attempt()
        if left_on_holder is None:
            return
        left = give_up_at - time.monotonic()
        if left <= 0:
            raise TokenStoreError(
                f"timed out after {timeout:.1f}s waiting for the refresh lock of {where}",
                retryable=True,
            )
        # Full jitter under a doubling cap; never past the holder's expiry by more
        # than a little, so a dead holder's successor starts soon after it.
        cap = pause if left_on_holder <= 0 else min(pause, left_on_holder + _FIRST_PAUSE)
        time.sleep(min(left, random.uniform(cap / 2, cap)))
        pause = min(pause * 2, MAX_PAUSE)


# -- renewal -----------------------------------------------------------------------------


class _Renewal:
    """One held lease the renewer keeps alive."""

    def __init__(
        self,
        renew: Callable[[], bool],
        every: float,
        where: str,
        until: float,
        lasts: float | None,
        taken_at: float,
    ):
        self.renew = renew
        self.every = every
        self.where = where
        self.until = until
        self.lasts = lasts
        self.stopped = False
        self.confirmed = self._confirmed_by(taken_at)

    def _confirmed_by(self, sent_at: float) -> float:
        """Until when a take or renewal sent at ``sent_at``, which the server granted,
        holds the lease for sure: one lease (but never past ``until``), less a margin.
        For ever when the renewal does not say how long a lease lasts."""
        if self.lasts is None:
            return math.inf
        span = max(0.0, min(self.until - sent_at, self.lasts))
        return sent_at + span - confirmation_margin(span)

    def held_until(self) -> float:
        """Real monotonic time (:func:`time.monotonic`) until which the lease is
        known to be held: from the last take or renewal the server granted. Past it,
        the lease may have run out and be another's: a holder frozen for longer than
        a lease (SIGSTOP, a swap storm) or cut off from the server, whose
        renewals stopped, finds it so before it sends anything (see
        :class:`~pleo_auth.Lease`)."""
        return self.confirmed


class Renewer:
    """One thread per process that renews the leases this process holds.

    It runs only while some lease is held, and leaves when none is. A renewal is
    one short statement (``renew`` returns False when the lease was lost: it then
    stops). Renewals run one after another on this thread, never on the holder's.

    A renewal may be bounded (``until``): the holder's own time is up then, and a
    holder stuck past it (a deadlocked callback, a hung thread) is no longer kept
    alive; its lease runs out by itself at most one lease later, as a dead
    holder's would. Used by :class:`~pleo_auth.stores.locks.RedisRefreshLock`,
    whose renewals extend the key only up to that bound.

    Thread safety:
        :meth:`keep` and :meth:`stop` may be called from any thread.
    """

    def __init__(self) -> None:
        self._guard = threading.Condition()
        self._queue: list[tuple[float, int, _Renewal]] = []
        self._serial = itertools.count()
        self._thread: threading.Thread | None = None

    def keep(
        self,
        renew: Callable[[], bool],
        *,
        every: float,
        where: str,
        until: float = math.inf,
        lasts: float | None = None,
        taken_at: float = 0.0,
    ) -> _Renewal:
        """Call ``renew`` every ``every`` seconds until :meth:`stop`, it returns
        False, or the next call would come at or after ``until`` (real monotonic
        time, :func:`time.monotonic`). Each renewal that ``renew`` reports as done
        holds the lease for ``lasts`` seconds from when it was sent, as the take
        sent at ``taken_at`` did: see :meth:`_Renewal.held_until` (for ever when
        ``lasts`` is None)."""
        renewal = _Renewal(renew, every, where, until, lasts, taken_at)
        first = time.monotonic() + every
        if first >= until:
            renewal.stopped = True  # the lease outlasts its holder's time already
            return renewal
        with self._guard:
            heapq.heappush(self._queue, (first, next(self._serial), renewal))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pleo-auth-lease-renewer", daemon=True
                )
                self._thread.start()
            self._guard.notify()
        return renewal

    def stop(self, renewal: _Renewal) -> None:
        """Stop renewing (the lease is being released); a renewal under way finishes."""
        with self._guard:
            renewal.stopped = True
            self._guard.notify()

    def _run(self) -> None:
        while True:
            with self._guard:
                while True:
                    while self._queue and self._queue[0][2].stopped:
                        heapq.heappop(self._queue)
                    if not self._queue:
                        self._thread = None
                        return
                    due, _, renewal = self._queue[0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._queue)
                        break
                    self._guard.wait(wait)
            sent_at = time.monotonic()
            if sent_at >= renewal.until:
                continue  # due before the bound, but late (a busy machine): too late now
            try:
                kept = renewal.renew()
                if kept:
                    renewal.confirmed = max(renewal.confirmed, renewal._confirmed_by(sent_at))
            except TokenStoreError as exc:
                kept = True  # try again at the next turn: the lease may outlast a blip
                logger.warning("could not renew the refresh lock of %s: %s", renewal.where, exc)
            except BaseException:
                # SystemExit too: it would end the one thread that renews every lease
                # of the process, which would still count as running.
                kept = False
                logger.exception("renewing the refresh lock of %s failed", renewal.where)
            if not kept and not renewal.stopped:  # stopped: released meanwhile, not lost
                logger.warning(
                    "the refresh lock of %s was taken over: its lease ran out under its holder",
                    renewal.where,
                )
                continue
            # From when it was due, not when it ran: a late renewal (a busy machine,
            # a slow statement) makes the next one come sooner, but never at once
            # again (a database failing fast).
            following = max(due + renewal.every, time.monotonic() + renewal.every / 4)
            if following >= renewal.until:
                logger.debug(
                    "the refresh lock of %s is no longer renewed: its holder's time is up",
                    renewal.where,
                )
                continue
            with self._guard:
                if not renewal.stopped:
                    heapq.heappush(self._queue, (following, next(self._serial), renewal))

    def _reset_after_fork(self) -> None:
        # The thread does not exist in a child, nor do the parent's holders.
        self._guard = threading.Condition()
        self._queue = []
        self._thread = None


#: The process's renewer.
RENEWER = Renewer()


# -- leases this thread holds --------------------------------------------------------------


@attrs.frozen
class Holding:
    """A lease the current thread holds: its owner, and the deadline it was granted."""

    owner: str
    deadline: float
    pid: int
    held_until: Callable[[], float] | None = None


class Held(threading.local):
    """The leases the current thread holds, by the grant's key.

    A store's ``save`` or ``clear`` called inside its own ``lock`` (the coordinator
    does this) finds the owner here and writes under that lease; outside a lock it
    takes a lease of its own for the write.
    """

    def __init__(self) -> None:
        self.by_key: dict[Hashable, Holding] = {}

    def get(self, key: Hashable) -> Holding | None:
        holding = self.by_key.get(key)
        if holding is not None and holding.pid != os.getpid():
            return None  # a forked child's copy of its parent's frame: not ours
        return holding

    @contextlib.contextmanager
    def holding(
        self,
        key: Hashable,
        owner: str,
        deadline: float,
        held_until: Callable[[], float] | None = None,
    ) -> Iterator[Holding]:
        holding = Holding(owner, deadline, os.getpid(), held_until)
        self.by_key[key] = holding
        try:
            yield holding
        finally:
            self.by_key.pop(key, None)


#: The current thread's leases.
HELD = Held()


def _after_fork_in_child() -> None:
    RENEWER._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
