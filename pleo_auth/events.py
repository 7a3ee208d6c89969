"""Refresh events: one typed stream of what the library does with each grant.

Every event is a small immutable value with a ``kind`` string and the ``company``
whose grant it concerns (None for a :class:`~pleo_auth.PleoSession` of its own).
No event ever holds a token, a code or a secret.

| ``kind``              | when                                                            |
|-----------------------|-----------------------------------------------------------------|
| ``refresh_started``   | a refresh token is about to be spent (under the store's lock)   |
| ``refresh_succeeded`` | the new pair is saved; ``duration`` (s) and ``attempts`` sent   |
| ``refresh_failed``    | the refresh gave up; ``reason``, ``error_type``, ``retryable``  |
| ``adopted``           | tokens another process (or session) stored were taken up        |
| ``lock_waited``       | the store's refresh lock was taken after ``duration`` seconds   |
| ``request_held``      | a request waited ``duration`` seconds for a refresh or reload   |
| ``replayed_401``      | a request refused with 401 is sent again with new tokens        |
| ``grant_dead``        | the grant is dead: a person must log in again                   |
| ``store_restored``    | the store came back after a loss, with the grant                |
| ``rate_limited``      | a request waited ``wait`` seconds for Pleo's rate limit         |

Subscribe with ``PleoSession(..., on_event=callable)``, ``Integration(...,
on_event=callable)``, or for every grant of the process with :func:`subscribe`::

    unsubscribe = pleo_auth.events.subscribe(lambda event: print(event.kind, event.company))

Delivery never holds up a refresh or a request: events go through a bounded queue
(:data:`QUEUE_SIZE`) to one dispatcher thread (``pleo-auth:events``), started at
the first event, which calls the subscribers in order. A subscriber that is slow
only delays later events; one that raises is logged once (its later failures are
counted, not logged) and keeps its subscription. When the queue is full, the event
is dropped and counted (:func:`dropped`): a stuck subscriber costs events, never
a refresh. Events still queued when the process exits are lost, and a forked child
starts with an empty queue.

With nothing subscribed, nothing is built: every emitting site checks the grant's
:class:`Observers` first, and events are emitted only where a refresh, a reload, a
lock or a 401 happens, never on a request's ordinary path.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable, Hashable
from typing import ClassVar, TypeAlias

import attrs

logger = logging.getLogger("pleo_auth")

__all__ = [
    "QUEUE_SIZE",
    "Adopted",
    "Event",
    "GrantDead",
    "LockWaited",
    "Observers",
    "RateLimited",
    "RefreshFailed",
    "RefreshStarted",
    "RefreshSucceeded",
    "Replayed401",
    "RequestHeld",
    "StoreRestored",
    "Subscriber",
    "active",
    "dropped",
    "emit",
    "flush",
    "subscribe",
]

#: Events queued for the dispatcher at most; more are dropped and counted.
QUEUE_SIZE = 10_000


@attrs.frozen(kw_only=True)
class _Event:
    kind: ClassVar[str]
    #: The company's id (a UUID) whose grant this concerns; None for a session's own.
    company: str | None = None


@attrs.frozen(kw_only=True)
class RefreshStarted(_Event):
    """A refresh token is about to be spent, under the store's lock."""

    kind: ClassVar[str] = "refresh_started"


@attrs.frozen(kw_only=True)
class RefreshSucceeded(_Event):
    """The refresh's new pair is saved."""

    kind: ClassVar[str] = "refresh_succeeded"
    #: Seconds from the first attempt to the saved pair.
    duration: float
    #: Token requests sent, retries included.
    attempts: int


@attrs.frozen(kw_only=True)
class RefreshFailed(_Event):
    """The refresh gave up (its error is raised to, or retried by, the callers)."""

    kind: ClassVar[str] = "refresh_failed"
    #: Why, in words that hold no token: the OAuth error, or the error's message.
    reason: str
    #: The error's class name (``RefreshError``, ``ReauthenticationRequired``,
    #: ``TokenStoreError``...): the ``error.type`` of the metrics.
    error_type: str
    #: Whether trying again later may succeed; False for a dead grant.
    retryable: bool


@attrs.frozen(kw_only=True)
class Adopted(_Event):
    """Tokens another process (or another coordinator) stored were taken up."""

    kind: ClassVar[str] = "adopted"


@attrs.frozen(kw_only=True)
class LockWaited(_Event):
    """The store's refresh lock was taken, for a refresh, after ``duration`` seconds."""

    kind: ClassVar[str] = "lock_waited"
    duration: float


@attrs.frozen(kw_only=True)
class RequestHeld(_Event):
    """A request waited ``duration`` seconds for a refresh or a reload before it was sent."""

    kind: ClassVar[str] = "request_held"
    duration: float


@attrs.frozen(kw_only=True)
class Replayed401(_Event):
    """A request Pleo refused with 401 is sent again, once, with other tokens."""

    kind: ClassVar[str] = "replayed_401"


@attrs.frozen(kw_only=True)
class GrantDead(_Event):
    """The grant is dead: a person must log in again for it."""

    kind: ClassVar[str] = "grant_dead"
    #: The OAuth error that said so (``invalid_grant``), or None (found cleared).
    error: str | None = None


@attrs.frozen(kw_only=True)
class StoreRestored(_Event):
    """The store came back after a loss, holding the grant again."""

    kind: ClassVar[str] = "store_restored"
    #: The store's description (``TokenStore.describe()``), never its secrets.
    store: str = ""


@attrs.frozen(kw_only=True)
class RateLimited(_Event):
    """A request waited for a slot of Pleo's API rate limit."""

    kind: ClassVar[str] = "rate_limited"
    #: Seconds waited (or, when it gave up, that it would have had to wait).
    wait: float


Event: TypeAlias = (
    RefreshStarted
    | RefreshSucceeded
    | RefreshFailed
    | Adopted
    | LockWaited
    | RequestHeld
    | Replayed401
    | GrantDead
    | StoreRestored
    | RateLimited
)

#: What receives events: any callable of one event. Its return value is ignored.
Subscriber: TypeAlias = Callable[[Event], object]


class _Dispatcher:
    """The bounded queue and the one thread that delivers from it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._items: collections.deque[tuple[Event, tuple[Subscriber, ...]]] = collections.deque()
        self._delivering = False
        self._thread: threading.Thread | None = None
        self._failed: dict[int, int] = {}  # id(subscriber) -> failures
        self.dropped = 0

    def put(self, event: Event, subscribers: tuple[Subscriber, ...]) -> None:
        with self._lock:
            if len(self._items) >= QUEUE_SIZE:
                self.dropped += 1
                if self.dropped & (self.dropped - 1) == 0:  # 1, 2, 4, 8...
                    logger.warning(
                        "event queue full (%d): dropped %d event(s) so far; a subscriber "
                        "is too slow",
                        QUEUE_SIZE,
                        self.dropped,
                    )
                return
            self._items.append((event, subscribers))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pleo-auth:events", daemon=True
                )
                self._thread.start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._items:
                    self._ready.wait()
                event, subscribers = self._items.popleft()
                self._delivering = True
            try:
                for subscriber in subscribers:
                    self._deliver(subscriber, event)
            finally:
                with self._lock:
                    self._delivering = False
                    if not self._items:
                        self._idle.notify_all()

    def _deliver(self, subscriber: Subscriber, event: Event) -> None:
        try:
            subscriber(event)
        except BaseException:
            # SystemExit from a subscriber's sys.exit() too: it would end the one
            # thread that delivers every grant's events, and all later events with it.
            key = id(subscriber)
            failures = self._failed.get(key, 0) + 1
            self._failed[key] = failures
            if failures == 1:
                # Events hold no token, so neither can the traceback's arguments.
                logger.exception(
                    "event subscriber %s raised on a %s event; its later failures are not logged",
                    getattr(subscriber, "__qualname__", type(subscriber).__qualname__),
                    event.kind,
                )

    def flush(self, timeout: float | None) -> bool:
        if threading.current_thread() is self._thread:
            return False  # a subscriber: it would wait for its own delivery to end
        with self._lock:
            return self._idle.wait_for(lambda: not self._items and not self._delivering, timeout)

    def reset_after_fork(self) -> None:
        # The parent's thread does not exist here, and its events are the parent's.
        self.__init__()  # type: ignore[misc]


_DISPATCHER = _Dispatcher()
_subscribers_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock another thread of the parent held at the fork stays held here for ever.
    global _subscribers_lock
    _subscribers_lock = threading.Lock()
    _DISPATCHER.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)

#: The process-wide subscribers, replaced whole (read without the lock).
_global: tuple[Subscriber, ...] = ()


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Send every grant's events in this process to ``subscriber``.

    Args:
        subscriber: Called with each :data:`Event`, on the dispatcher thread.

    Returns:
        A function that ends the subscription (calling it twice is harmless).
    """
    if not callable(subscriber):
        raise TypeError("an event subscriber must be callable")
    global _global
    with _subscribers_lock:
        _global = (*_global, subscriber)
    subscribed = [True]

    def unsubscribe() -> None:
        global _global
        with _subscribers_lock:
            if not subscribed:
                return
            subscribed.clear()
            # The last of its subscriptions: the same callable may be subscribed twice.
            index = max(i for i, item in enumerate(_global) if item is subscriber)
            _global = _global[:index] + _global[index + 1 :]

    return unsubscribe


class Observers:
    """The subscribers of one grant's events: its sessions' (or integration's)
    ``on_event``, plus the process-wide ones. Emitting sites write::

        if observers:
            observers.emit(events.Adopted(company=observers.company))

    so that nothing is built when nobody listens.

    Thread safety:
        :meth:`emit` and truth tests may run on any thread at any time; the
        subscriber tuple is replaced whole under the module's subscribers' lock
        (which a forked child replaces), and read without one.
    """

    __slots__ = ("_local", "_subscribers", "company")

    def __init__(self, company: str | None = None):
        #: The company id every event of this grant carries.
        self.company = company
        # Made at the first subscriber: an Integration builds one per company, and
        # most never get one of their own.
        self._local: dict[Hashable, Subscriber] | None = None
        self._subscribers: tuple[Subscriber, ...] = ()

    def add(self, handle: Hashable, subscriber: Subscriber) -> None:
        with _subscribers_lock:
            if self._local is None:
                self._local = {}
            self._local[handle] = subscriber
            self._subscribers = tuple(self._local.values())

    def discard(self, handle: Hashable) -> None:
        with _subscribers_lock:
            if self._local is not None and self._local.pop(handle, None) is not None:
                self._subscribers = tuple(self._local.values())

    def __bool__(self) -> bool:
        return bool(self._subscribers) or bool(_global)

    def emit(self, event: Event) -> None:
        """Queue ``event`` for this grant's subscribers and the global ones."""
        subscribers = self._subscribers + _global
        if subscribers:
            _DISPATCHER.put(event, subscribers)


def active() -> bool:
    """Whether anything subscribed process-wide (for events of no grant's own)."""
    return bool(_global)


def emit(event: Event, observers: Observers | None = None) -> None:
    """Queue ``event`` for ``observers`` (a grant's), or only the global subscribers.

    Check ``observers`` (or :func:`active`) first, so no event is built for nobody.
    """
    if observers is not None:
        observers.emit(event)
    elif _global:
        _DISPATCHER.put(event, _global)


def flush(timeout: float | None = 5.0) -> bool:
    """Wait until every queued event was delivered; False if ``timeout`` ran out.

    For tests, and for an app that reads its metrics right before it exits.
    Called by a subscriber (on the dispatcher thread), it returns False at once:
    the event being delivered is not delivered yet.
    """
    return _DISPATCHER.flush(timeout)


def dropped() -> int:
    """Events dropped so far because the queue was full (a subscriber too slow)."""
    return _DISPATCHER.dropped
