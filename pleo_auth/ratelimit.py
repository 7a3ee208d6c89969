"""Pleo's API rate limit, shared by every session of one client.

Pleo allows 600 API requests a minute and asks integrations to aim for at most
500. ``PleoSession(..., rate_limit=500)`` or ``Integration(..., rate_limit=500)``
holds every API request to a :class:`RateLimit`, counted in one GCRA bucket
(:mod:`pleo_auth.stores.buckets`) that lives where the store keeps its lock:

* a :class:`~pleo_auth.FileStore` or :class:`~pleo_auth.KeyringStore` (and their
  families): a file beside the lock files, shared by every process of the machine;
* a :class:`~pleo_auth.RedisStore` (and its family): a key in the same Redis,
  shared by every host;
* a :class:`~pleo_auth.stores.sql.SQLStore`'s grant: a row of the table
  ``pleo_auth_rate_limits`` in the same database, shared by every host
  (:mod:`pleo_auth.stores.sql_buckets`);
* a :class:`~pleo_auth.MemoryStore`, or a store of your own: this process only.

Taking a slot from the shared bucket is a round trip (an ``flock``, a Lua script).
So that an unsaturated limiter costs next to nothing per request, a process takes
up to :attr:`RateLimit.batch` slots at a time and spends them within
:data:`LEASE_LIFE` seconds (unspent ones are dropped). The bound is kept anyway:
slots a batch may carry over, and :data:`SEND_ALLOWANCE` seconds between taking a
slot and the request reaching Pleo, are reserved out of the burst.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from . import events
from ._bodies import replayable
from ._clock import SYSTEM_CLOCK, Clock
from .errors import ConfigurationError, RateLimited
from .stores.buckets import Bucket, BucketUnavailable, MemoryBucket, bucket_for

if TYPE_CHECKING:
    import requests

    from .company import Company
    from .stores.base import TokenStore

__all__ = ["IDEMPOTENT", "LEASE_LIFE", "SEND_ALLOWANCE", "Limiter", "RateLimit", "limiter_for"]

logger = logging.getLogger(__name__)

#: Seconds a process may hold slots it took in a batch before spending them.
LEASE_LIFE = 0.2
#: Seconds allowed between taking a slot and the request reaching Pleo.
SEND_ALLOWANCE = 0.5
#: The most slots a process takes from the shared bucket at once.
MAX_BATCH = 64
#: While the shared bucket is unreachable, it is tried again this often (seconds).
RETRY_SHARED = 1.0
#: Seconds to wait before retrying a 429 that has no usable ``Retry-After``.
DEFAULT_RETRY_AFTER = 1.0
#: A wait for a slot longer than this is told as a ``rate_limited`` event.
WAIT_WORTH_AN_EVENT = 0.001
#: Methods whose 429 is retried once: sending them twice does what sending once does.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

Scope = Literal["client", "company"]


def _positive(name: str, value: object, *, zero: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        raise ConfigurationError(
            f"{name} must be a {'' if zero else 'positive '}number, not {value!r}"
        )
    return float(value)


def _per_minute(value: object) -> float:
    return _positive("rate_limit", value)


def _wait(value: object) -> float:
    return _positive("wait", value, zero=True)


@attrs.frozen
class RateLimit:
    """How many API requests the client's sessions may send, and how long one waits.

    Args:
        per_minute: Requests a minute, in the long run. Pleo allows 600 and asks
            for at most 500.
        burst: Requests that may go at once after a quiet spell, on top of the
            rate: over any ``W`` seconds, at most ``per_minute * W / 60 + burst``
            requests reach Pleo. Defaults to a tenth of ``per_minute`` (50 at
            500 a minute: at most 550 in any minute, under Pleo's 600), and at
            least :attr:`reserve` + 1.
        wait: Seconds a request may wait for its slot, and for a 429's
            ``Retry-After``, before :class:`~pleo_auth.RateLimited` is raised (or
            the 429 returned).
        scope: ``"client"`` (the default): one budget for the OAuth client,
            every company's grant together. ``"company"``: one budget per
            company's grant. Pleo's documentation does not say which it counts.

    Raises:
        ConfigurationError: A value is out of range, or ``burst`` is smaller than
            :attr:`reserve` + 1.
    """

    per_minute: float = attrs.field(default=500.0, converter=_per_minute)
    burst: int = attrs.field()
    wait: float = attrs.field(default=10.0, converter=_wait)
    scope: Scope = "client"

    @burst.default
    def _default_burst(self) -> int:
        return max(self.reserve + 1, int(self.per_minute // 10))

    def __attrs_post_init__(self) -> None:
        if isinstance(self.burst, bool) or not isinstance(self.burst, int):
            raise ConfigurationError(f"burst must be a whole number, not {self.burst!r}")
        if self.burst < self.reserve + 1:
            raise ConfigurationError(
                f"burst must be at least {self.reserve + 1} at {self.per_minute:g} a minute "
                "(slots reserved for batches and sending; see pleo_auth.ratelimit)"
            )
        if self.scope not in ("client", "company"):
            raise ConfigurationError(f'scope must be "client" or "company", not {self.scope!r}')

    @classmethod
    def of(cls, value: RateLimit | float) -> RateLimit:
        """``value`` as a RateLimit: a number is requests a minute."""
        return value if isinstance(value, RateLimit) else cls(value)

    @property
    def interval(self) -> float:
        """Seconds between requests at the long-run rate."""
        return 60.0 / self.per_minute

    @property
    def batch(self) -> int:
        """Slots a process takes from the shared bucket at once: what it can
        spend in :data:`LEASE_LIFE` at the full rate, 1 to :data:`MAX_BATCH`."""
        return max(1, min(MAX_BATCH, int(self.per_minute * LEASE_LIFE / 60.0)))

    @property
    def reserve(self) -> int:
        """Slots of the burst held back: what the rate grants in
        :data:`SEND_ALLOWANCE`, and in :data:`LEASE_LIFE` when slots go in batches."""
        held = SEND_ALLOWANCE + (LEASE_LIFE if self.batch > 1 else 0.0)
        # The 1e-9 keeps a whole number of slots whole despite float noise.
        return math.ceil(self.per_minute * held / 60.0 - 1e-9)


_NEVER = threading.Event()
_LIVE: weakref.WeakSet[Limiter] = weakref.WeakSet()


class Limiter:
    """The slots of one :class:`RateLimit` in this process: batches taken from the
    shared :class:`~pleo_auth.stores.buckets.Bucket`, spent by any thread.

    While the shared bucket cannot be reached (Redis down, say), the limiter
    fails open to this process alone: it keeps the rate in this process, warns
    once, and tries the shared bucket again every :data:`RETRY_SHARED` seconds.

    Thread safety:
        :meth:`acquire`, :meth:`slot` and :meth:`send` may be called from any thread. One
        thread at a time goes to the shared bucket; the others wait for it. A
        forked child starts with no slots of its own.
    """

    def __init__(self, limit: RateLimit, shared: Bucket | None, *, clock: Clock = SYSTEM_CLOCK):
        self.limit = limit
        self._shared = shared
        self._clock = clock
        # The hot path reads the clock once: time.monotonic itself when it can.
        self._monotonic = time.monotonic if clock is SYSTEM_CLOCK else clock.monotonic
        self._local = MemoryBucket(clock.monotonic)
        self._interval = limit.interval
        self._tolerance = (limit.burst - limit.reserve) * self._interval
        self._batch = limit.batch
        self._after_fork()
        _LIVE.add(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._slots = 0
        self._expires = 0.0
        self._not_before = 0.0  # no slot is due before this (monotonic)
        self._degraded_until: float | None = None  # the shared bucket failed; local until

    def acquire(self, deadline: float) -> float:
        """Take a slot, waiting for one until ``deadline`` (monotonic seconds).

        Returns:
            The seconds waited (0.0 when a slot was free).

        Raises:
            RateLimited: No slot is due by ``deadline``; nothing waits past it.
        """
        clock = self._clock
        started = clock.monotonic()
        while True:
            with self._lock:
                now = clock.monotonic()
                if self._slots and now < self._expires:
                    self._slots -= 1
                    return now - started
                wait = self._not_before - now
                if wait <= 0:
                    granted, wait = self._take(now)
                    if granted:
                        self._slots = granted - 1
                        self._expires = now + LEASE_LIFE
                        return now - started
                    self._not_before = now + wait
            if now + wait > deadline:
                raise RateLimited(
                    "API rate limit: no slot within the wait allowed", retry_after=wait
                )
            clock.wait(_NEVER, wait)

    def slot(self, observers: events.Observers, deadline: float | None = None) -> float:
        """Take a slot for one API request, waiting until ``deadline`` at most
        (default: :attr:`RateLimit.wait` from now); a wait, or giving up, is told
        to ``observers`` as a ``rate_limited`` event.

        Returns:
            When the caller asked (monotonic seconds).

        Raises:
            RateLimited: No slot is due by the deadline.
        """
        now = self._monotonic()
        with self._lock:  # the hot path: a slot of this process's batch
            if self._slots and now < self._expires:
                self._slots -= 1
                return now
        try:
            waited = self.acquire(now + self.limit.wait if deadline is None else deadline)
        except RateLimited as exc:
            waited = self._monotonic() - now + exc.retry_after
            if observers:
                observers.emit(events.RateLimited(company=observers.company, wait=waited))
            raise
        if waited > WAIT_WORTH_AN_EVENT and observers:
            observers.emit(events.RateLimited(company=observers.company, wait=waited))
        return now

    def _take(self, now: float) -> tuple[int, float]:
        shared = self._shared
        if shared is not None and (self._degraded_until is None or now >= self._degraded_until):
            try:
                result = shared.take(self._batch, self._interval, self._tolerance)
            except BucketUnavailable as exc:
                if self._degraded_until is None:
                    logger.warning(
                        "rate limit: %s; limiting this process alone until it is back", exc
                    )
                self._degraded_until = now + RETRY_SHARED
            else:
                if self._degraded_until is not None:
                    logger.warning("rate limit: %s is back", shared.describe())
                    self._degraded_until = None
                return result
        return self._local.take(self._batch, self._interval, self._tolerance)

    def hold_off(self, seconds: float) -> None:
        """Take no slot for ``seconds``: the API answered 429."""
        with self._lock:
            self._slots = 0
            self._not_before = max(self._not_before, self._clock.monotonic() + seconds)

    def send(
        self,
        send_api: Callable[..., requests.Response],
        send: Callable[..., requests.Response],
        method: str | bytes,
        url: str,
        data: Any,
        files: Any,
        kwargs: dict[str, Any],
        observers: events.Observers,
    ) -> requests.Response:
        """Send one API request, ``send_api(send, method, url, data, files, kwargs)``,
        within the limit: it takes a slot first (``send_api`` takes one for a 401's
        replay through :meth:`slot`).
        A 429 to an idempotent method is retried once after its ``Retry-After``,
        if that ends within :attr:`RateLimit.wait`; any other 429 is returned.

        The first slot is taken before ``send_api`` runs, so a request waiting for
        the limit never holds up a refresh.

        Raises:
            RateLimited: No slot was due within :attr:`RateLimit.wait`.
        """
        started = self.slot(observers)
        response = send_api(send, method, url, data, files, kwargs)
        if response.status_code != 429:
            return response
        clock = self._clock
        deadline = started + self.limit.wait
        from ._failures import _retry_after

        delay = _retry_after(response)
        delay = DEFAULT_RETRY_AFTER if delay is None else delay
        self.hold_off(delay)
        verb = (method.decode("latin-1") if isinstance(method, bytes) else method).upper()
        if verb not in IDEMPOTENT or not replayable(data, files):
            return response
        if clock.monotonic() + delay > deadline:
            return response
        response.close()
        clock.wait(_NEVER, delay)
        self.slot(observers, deadline)
        return send_api(send, method, url, data, files, kwargs)

    def __repr__(self) -> str:
        where = self._shared.describe() if self._shared is not None else "in this process"
        return f"<Limiter {self.limit.per_minute:g}/min {where}>"


_registry: dict[tuple[Any, ...], Limiter] = {}
_memory_buckets: dict[str, MemoryBucket] = {}
#: (spec, store key, client id, API URL, company) -> limiter: Integration.session's
#: lookup, without hashing or building a bucket each time.
_known: dict[tuple[Any, ...], Limiter] = {}
_registry_lock = threading.Lock()


def limiter_for(
    spec: RateLimit | float | None,
    store: TokenStore,
    client_id: str,
    api_url: str,
    company: Company | None = None,
) -> Limiter | None:
    """The process's limiter for ``spec`` over ``store``'s medium; None for no limit.

    Every session of one client (or, with ``scope="company"``, of one company's
    grant) in the process gets the same limiter, and every process the same
    bucket.
    """
    if spec is None:
        return None
    known = (spec, store.key, client_id, api_url, company)
    found = _known.get(known)
    if found is not None:
        return found
    limit = RateLimit.of(spec)
    parts = [api_url, client_id]
    if limit.scope == "company":
        parts.append(company.id if company is not None else repr(store.key))
    name = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]
    shared = bucket_for(store, name)
    key = (shared.identity() if shared is not None else None, name, limit)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            if shared is None:  # this process's own: one bucket per name all the same
                shared = _memory_buckets.setdefault(name, MemoryBucket())
            limiter = _registry[key] = Limiter(limit, shared)
        _known[known] = limiter
    return limiter


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for limiter in list(_LIVE):
        limiter._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
