"""Refresh locks: the exclusive lock that serialises refreshes, apart from where
the tokens live.

A store keeps the tokens (load, save, clear, version); a refresh lock makes sure
only one process at a time spends the refresh token. They are separate ideas, as
in msal-extensions, whose token cache composes a persistence with a
``CrossPlatLock``. So a store composes one of these, and a new store reuses an
existing lock instead of writing its own:

* :class:`FileRefreshLock`: a lock file, shared by every process on one machine
  (``filelock``); re-entrant within a thread. :class:`~pleo_auth.FileStore` and
  :class:`~pleo_auth.KeyringStore` use it.
* :class:`RedisRefreshLock`: a lease in Redis (``SET key NX PX``), shared by every
  host, renewed while its holder lives and works, that expires by itself soon after
  its holder dies. :class:`~pleo_auth.RedisStore` uses it.
* :class:`ThreadRefreshLock`: a lock within this process only.
  :class:`~pleo_auth.MemoryStore` uses it.

A store that composes a lock sets :attr:`TokenStore.refresh_lock
<pleo_auth.TokenStore.refresh_lock>`, and :meth:`TokenStore.lock
<pleo_auth.TokenStore.lock>` holds it::

    class MyStore(TokenStore):
        def __init__(self, path):
            self.refresh_lock = FileRefreshLock(path + ".lock")
"""

from __future__ import annotations

import abc
import contextlib
import functools
import logging
import math
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, TokenStoreError
from .base import Lease
from .lease import DEFAULT_LEASE, RENEWER, LeaseTerms, confirmation_margin

if TYPE_CHECKING:
    import filelock

__all__ = ["FileRefreshLock", "RedisRefreshLock", "RefreshLock", "ThreadRefreshLock"]

logger = logging.getLogger(__name__)


class RefreshLock(abc.ABC):
    """An exclusive lock around a refresh, shared by everyone who uses the same tokens.

    Thread safety:
        Implementations must allow :meth:`hold` from any thread at once.
    """

    @abc.abstractmethod
    def hold(self, *, timeout: float, lease: float) -> contextlib.AbstractContextManager[Lease]:
        """Hold the lock; the context manager yields the :class:`~pleo_auth.Lease`.

        Args:
            timeout: Seconds to wait for another holder before giving up.
            lease: Seconds the holder may need. Locks that can expire under their
                holder grant at least this long; others ignore it.

        Raises:
            TokenStoreError: Not acquired within ``timeout`` (retryable), or the
                lock could not be taken at all.
        """

    def describe(self) -> str:
        """Where the lock lives, free of secrets."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


# -- a thread lock -------------------------------------------------------------------


class ThreadRefreshLock(RefreshLock):
    """A lock shared by the threads of this process only (:class:`threading.Lock`).

    Not re-entrant. Its lease never expires.

    Thread safety:
        :meth:`hold` may be called from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            raise TokenStoreError(
                f"timed out after {timeout:.1f}s waiting for the refresh lock", retryable=True
            )
        try:
            yield Lease()
        finally:
            self._lock.release()

    def describe(self) -> str:
        return "in this process"


# -- a lock file ---------------------------------------------------------------------

# Lock objects held by some thread at the moment of a fork. In the child that
# thread does not exist; if the object were collected, its finaliser would
# unlock a descriptor shared with the parent and release the parent's lock.
# So the child keeps them, unused, for the rest of its life.
_held: set[filelock.BaseFileLock] = set()
_held_guard = threading.Lock()
_orphaned: list[filelock.BaseFileLock] = []


def _after_fork_in_child() -> None:
    global _held_guard
    _held_guard = threading.Lock()
    _orphaned.extend(_held)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)

_depths = threading.local()


class FileRefreshLock(RefreshLock):
    """A lock file shared by every process on this machine (``filelock``).

    Re-entrant within a thread, so a store's own methods may take the lock that
    the coordinator already holds around a refresh. The operating system releases
    it when its holder dies, so its lease never expires.

    Args:
        path: The lock file. Its directory is created, mode 0700, if missing.
        directory_hint: Added to the error when that directory cannot be created
            (what to pass instead).

    Thread safety:
        :meth:`hold` may be called from any thread and any process. A forked
        child never releases a lock a thread of its parent holds.
    """

    def __init__(self, path: str | os.PathLike[str], *, directory_hint: str | None = None):
        self.path = Path(path)
        self._directory_hint = directory_hint

    def held(self) -> bool:
        """Whether this thread holds the lock."""
        depths: dict[str, int] = _depths.__dict__.get("by_path", {})
        return depths.get(str(self.path), 0) > 0

    @contextlib.contextmanager
    def hold(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        depths: dict[str, int] = _depths.__dict__.setdefault("by_path", {})
        key = str(self.path)
        if depths.get(key):
            depths[key] += 1
            try:
                yield Lease()
            finally:
                depths[key] -= 1
            return
        self._make_directory()
        with self._acquire(timeout) as granted:
            depths[key] = 1
            try:
                yield granted
            finally:
                depths[key] = 0

    def _make_directory(self) -> None:
        from ._files import ensure_private_dir

        try:
            ensure_private_dir(self.path.parent)
        except TokenStoreError as exc:
            if self._directory_hint is None:
                raise
            raise TokenStoreError(f"{exc} {self._directory_hint}") from exc.__cause__

    @contextlib.contextmanager
    def _acquire(self, timeout: float) -> Iterator[Lease]:
        import filelock  # deferred: only processes that refresh need it

        # A fresh object per acquisition: no state is shared between threads, and a
        # forked child never finds a lock object its parent's thread was holding.
        lock = filelock.FileLock(str(self.path), timeout=max(timeout, 0.0), thread_local=False)
        try:
            lock.acquire()
        except filelock.Timeout as exc:
            raise TokenStoreError(
                f"timed out after {timeout:.1f}s waiting for the refresh lock {self.path}",
                retryable=True,
            ) from exc
        except OSError as exc:
            raise TokenStoreError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        with _held_guard:
            _held.add(lock)
        try:
            yield Lease()
        finally:
            with _held_guard:
                _held.discard(lock)
            lock.release()

    def describe(self) -> str:
        return f"lock file {self.path}"


# -- a Redis lease -------------------------------------------------------------------

# Delete the lock only if it still holds our token: after our lease ran out,
# the lock may belong to someone else.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Extend the lock by ARGV[2] ms only if it still holds our token (compare-and-extend):
# a lease that ran out, and was taken by another, is never stretched.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def lease_deadline(acquired_at: float, lease: float) -> float:
    """When a holder must be done with a Redis lease taken at ``acquired_at``.

    Redis expires the key on its own clock; keep a margin (10% of the lease, at
    most a second) for clock rate differences and the SET's round trip.
    """
    return acquired_at + lease - confirmation_margin(lease)


class RedisRefreshLock(RefreshLock):
    """A lease in Redis (``SET key token NX PX``), shared by every host, renewed
    while its holder works.

    A holder asks :meth:`hold` for the time it may need (``lease=``: a refresh's
    whole budget, 48 s by default). The key itself lives only ``lease`` seconds
    of this lock's own (10 by default), and one thread per process
    (:data:`~pleo_auth.stores.lease.RENEWER`) extends it every third of that, by
    compare-and-extend (a Lua script: ``PEXPIRE`` only if the key still holds
    this acquisition's random token), until the holder lets go or its asked-for
    time is up. So a holder that dies (SIGKILL, a lost host) holds the others up
    at most ``lease`` seconds after its last renewal, and one that is stuck (alive,
    but never letting go) at most until its asked-for time is up.

    The yielded :class:`~pleo_auth.Lease` carries a deadline a safety margin (10%
    of the asked-for time, at most 1 s) before that time is up, on ``clock``'s
    monotonic time; pleo_auth gives up a refresh rather than run past it. The key
    is deleted on release only if it still holds this acquisition's own token.
    Not re-entrant. A lease alone does not protect the tokens from a holder that
    outlived it (frozen longer than ``lease``, or cut off from Redis): pair it
    with fenced writes, as :class:`~pleo_auth.RedisStore` does.

    Args:
        client: A ``redis.Redis`` client.
        key: The Redis key of the lock.
        clock: Whose monotonic time dates the lease deadline: the sessions' clock.
        where: How messages name the lock (free of secrets); defaults to the key.
        on_acquired: Called each time the lock is taken, before the holder runs.
        lease: Seconds the key lives past its last renewal (at most 300): how
            long a dead holder keeps the others waiting.

    Raises:
        ConfigurationError: ``lease`` is not a number of seconds in (0, 300].

    Thread safety:
        :meth:`hold` may be called from any thread, process and host. Each
        acquisition's token lives in the acquiring call's frame; a forked child
        never renews nor releases a lock its parent holds.
    """

    def __init__(
        self,
        client: Any,
        key: str,
        *,
        clock: Clock = SYSTEM_CLOCK,
        where: str | None = None,
        on_acquired: Callable[[], object] | None = None,
        lease: float = DEFAULT_LEASE,
    ):
        import redis

        self.terms = LeaseTerms(lease)
        self.key = key
        self._client = client
        self._clock = clock
        self._where = where if where is not None else f"redis key {key!r}"
        self._on_acquired = on_acquired
        self._errors: tuple[type[Exception], ...] = (redis.exceptions.RedisError,)
        self._transient: tuple[type[Exception], ...] = (
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            redis.exceptions.BusyLoadingError,
        )
        self._release_script = client.register_script(_RELEASE)
        self._renew_script = client.register_script(_RENEW)

    @contextlib.contextmanager
    def hold(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        """Hold the lock, renewed for at most ``lease`` seconds while held.

        Raises:
            ConfigurationError: ``lease`` is not a positive number of seconds.
            TokenStoreError: Not acquired within ``timeout`` seconds, or Redis failed
                (both retryable when Redis may recover).
        """
        if not (isinstance(lease, int | float) and 0 < lease < math.inf):
            raise ConfigurationError("the lock's lease must be a positive number of seconds")
        token = secrets.token_hex(16)  # ours alone: only its holder can renew or release it
        acquired_at, started = self._acquire(token, timeout, lease)
        owner = os.getpid()
        renewal = RENEWER.keep(
            functools.partial(self._renew, token, started + lease),
            every=self.terms.renew_every,
            where=self._where,
            lasts=self.terms.lease,
            taken_at=started,
            until=started + lease,
        )
        try:
            # Inside the try: a callback that raises must not leave the lock held
            # until its lease runs out, with every other host waiting that long.
            if self._on_acquired is not None:
                self._on_acquired()
            yield Lease(deadline=lease_deadline(acquired_at, lease), held_until=renewal.held_until)
        finally:
            RENEWER.stop(renewal)
            # A forked child has a copy of this frame but not the lock: never release it there.
            if os.getpid() == owner:
                self._release(token, lease)

    def _acquire(self, token: str, timeout: float, lease: float) -> tuple[float, float]:
        """Take the lock; the clock's monotonic time at the attempt that got it, and
        the real monotonic time (:func:`time.monotonic`) it started at."""
        # The key lives one lease of this lock at most; renewals keep it while held.
        lease_ms = max(1, math.ceil(min(lease, self.terms.lease) * 1000))
        # Waiting is real time: the holder's lease runs out on Redis's clock.
        give_up_at = time.monotonic() + max(timeout, 0.0)
        pause = 0.005
        while True:
            acquired_at = self._clock.monotonic()
            started = time.monotonic()
            try:
                acquired = self._client.set(self.key, token, nx=True, px=lease_ms)
            except self._errors as exc:
                raise TokenStoreError(
                    f"cannot take the refresh lock in {self._where}: {type(exc).__name__}: {exc}",
                    retryable=isinstance(exc, self._transient),
                ) from exc
            if acquired:
                return acquired_at, started
            left = give_up_at - time.monotonic()
            if left <= 0:
                raise TokenStoreError(
                    f"timed out after {timeout:.1f}s waiting for the refresh lock of {self._where}",
                    retryable=True,
                )
            time.sleep(min(left, random.uniform(pause / 2, pause)))
            pause = min(pause * 2, 0.1)

    def _renew(self, token: str, until: float) -> bool:
        """Extend the key to one lease from now, or to ``until`` if sooner, if it is
        still ours; False when it is not (the lease ran out, and may be another's)."""
        left = until - time.monotonic()
        if left <= 0:
            return True  # the holder's time is up: nothing to extend, nothing lost
        extend_ms = max(1, math.ceil(min(left, self.terms.lease) * 1000))
        try:
            return bool(self._renew_script(keys=[self.key], args=[token, extend_ms]))
        except self._errors as exc:
            # Retryable for the renewer: the lease may outlast a blip.
            raise TokenStoreError(
                f"cannot renew the refresh lock in {self._where}: {type(exc).__name__}: {exc}",
                retryable=True,
            ) from exc

    def _release(self, token: str, lease: float) -> None:
        try:
            released = self._release_script(keys=[self.key], args=[token])
        except self._errors as exc:
            # Never raise from here: the refresh may have succeeded, and its new
            # tokens must reach the caller. The lease ends the lock anyway.
            logger.warning(
                "could not release the refresh lock of %s (%s); it expires within %.0fs",
                self._where,
                type(exc).__name__,
                min(lease, self.terms.lease),
            )
            return
        if not released:
            logger.warning(
                "the refresh lock of %s expired before it was released: its holder ran "
                "past the %.0fs it asked for, or could not renew it for %.0fs (frozen, "
                "or cut off from Redis)",
                self._where,
                lease,
                self.terms.lease,
            )

    def describe(self) -> str:
        return self._where
