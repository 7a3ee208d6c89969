"""A per-process cache of grants' versions, checked in one batch for every grant in use.

Database stores keep a version counter in each grant's row. Asking the database
before every request would cost a round trip per request; this cache answers from
memory and re-reads, with one query for every grant this process has used lately,
at most once per ``check_interval``. Independent of SQL: the store supplies the
two reads (:class:`~pleo_auth.stores.sql.SQLStore`, the Django model store).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from .._clock import Clock

__all__ = ["IN_USE_FOR", "Reading", "Version", "VersionCache", "version_of"]

#: A row's (epoch, counter).
Version = tuple[str, int]
#: What a read says of one grant: its version (None: no row), and whether it holds tokens.
Reading = tuple[Version | None, bool]

#: A grant whose version nobody asked for this long drops out of the batch.
IN_USE_FOR = 60.0


class _Cached:
    """One grant's version as this process last read it."""

    __slots__ = ("holds", "read_at", "used_at", "version")

    def __init__(self, version: Version | None, holds: bool, read_at: float):
        self.version = version
        self.holds = holds
        self.read_at = read_at
        self.used_at = read_at


class VersionCache:
    """Versions of grants by key, re-read in one batch at most once per interval.

    * A fresh cached version costs no I/O: a dictionary read and the clock.
    * Once stale, one thread runs ``read_many`` for every grant used in the last
      :data:`IN_USE_FOR` seconds; the other threads keep the cached value meanwhile.
    * A grant without tokens is never answered from the cache (``read_one`` every
      time), so that a login made elsewhere is seen at once.
    * A slower reader never brings back an older version of the same epoch.

    Args:
        clock: Whose monotonic time dates the entries.
        check_interval: Seconds an entry stays fresh.
        read_one: Reads one grant.
        read_many: Reads many grants in one query; grants missing from its
            answer have no row.

    Thread safety:
        Every method may be called from any thread.
    """

    def __init__(
        self,
        clock: Clock,
        check_interval: float,
        read_one: Callable[[Hashable], Reading],
        read_many: Callable[[list[Hashable]], Mapping[Hashable, Reading]],
    ):
        self._clock = clock
        self.check_interval = check_interval
        self._read_one = read_one
        self._read_many = read_many
        self._entries: dict[Hashable, _Cached] = {}
        self._guard = threading.Lock()
        self._reading = threading.Lock()

    def remember(self, key: Hashable, version: Version | None, holds: bool, read_at: float) -> None:
        """Cache a version read at ``read_at``, unless a newer one is cached already."""
        with self._guard:
            cached = self._entries.get(key)
            if cached is None:
                self._entries[key] = _Cached(version, holds, read_at)
                return
            old = cached.version
            if (
                old is not None
                and version is not None
                and old[0] == version[0]
                and old[1] > version[1]
            ):
                return  # a slower reader must not bring back an older version
            cached.version, cached.holds, cached.read_at = version, holds, read_at

    def forget(self, key: Hashable) -> None:
        """Make ``key``'s next :meth:`version` read the database (a lock's holder)."""
        with self._guard:
            cached = self._entries.get(key)
            if cached is not None:
                cached.read_at = -math.inf

    def version(self, key: Hashable) -> Version | None:
        """``key``'s version, from the cache while fresh."""
        now = self._clock.monotonic()
        cached = self._entries.get(key)
        if cached is not None:
            cached.used_at = now
            if cached.holds and now - cached.read_at < self.check_interval:
                return cached.version
            if cached.holds:
                if self._reading.acquire(blocking=False):
                    try:
                        self._check_in_use(now)
                    finally:
                        self._reading.release()
                return cached.version
        version, holds = self._read_one(key)
        self.remember(key, version, holds, now)
        return version

    def _check_in_use(self, now: float) -> None:
        with self._guard:
            in_use = [
                key for key, cached in self._entries.items() if now - cached.used_at < IN_USE_FOR
            ]
        found = self._read_many(in_use)
        for key in in_use:
            version, holds = found.get(key, (None, False))
            self.remember(key, version, holds, now)

    def keys_in_use(self) -> Iterable[Hashable]:
        """The keys cached (for tests and statistics)."""
        return list(self._entries)

    def reset_after_fork(self) -> None:
        # A parent thread may have held these at the fork; it does not exist here.
        self._guard = threading.Lock()
        self._reading = threading.Lock()
        self._entries = {}


def version_of(epoch: Any, counter: Any) -> tuple[str, int] | None:
    """A row's version, or None for a row the lock made and nothing wrote since
    (``version`` 0): it holds no more than a missing row, and a process that saw it
    must not take it for a write it has not loaded (see pleo_auth._restore)."""
    counter = int(counter)
    return (str(epoch), counter) if counter else None
