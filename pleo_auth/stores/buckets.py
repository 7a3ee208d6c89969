"""Shared GCRA buckets for :mod:`pleo_auth.ratelimit`, kept where a store keeps
its lock: in this process, in a file beside the lock files, in Redis, or in the
database of a :class:`~pleo_auth.stores.sql.SQLStore`
(:mod:`pleo_auth.stores.sql_buckets`).

A bucket holds one number, the GCRA's *theoretical arrival time* (TAT). Taking
``n`` slots at time ``now`` moves it to ``max(TAT, now) + n * interval``, and is
allowed only while that stays within ``tolerance`` of ``now``. So over any
window of ``W`` seconds, at most ``W / interval + tolerance / interval`` slots
are granted, however many processes and hosts take them.

Each :meth:`Bucket.take` is one round trip to where the bucket lives, made
atomic there: an ``flock`` on the file, a Lua script in Redis, a row lock (or
SQLite's write lock) in the database.
"""

from __future__ import annotations

import abc
import math
import os
import struct
import sys
import threading
import time
import weakref
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TokenStoreError
from ._files import ensure_private_dir

if TYPE_CHECKING:
    from .base import TokenStore

__all__ = [
    "Bucket",
    "BucketUnavailable",
    "FileBucket",
    "MemoryBucket",
    "RedisBucket",
    "bucket_for",
    "gcra",
]


class BucketUnavailable(TokenStoreError):
    """The shared bucket could not be reached (Redis down, file unwritable, database
    gone): the limiter falls back to this process alone until it is back."""

    retryable = True


class Bucket(abc.ABC):
    """One GCRA bucket.

    Thread safety:
        :meth:`take` may be called from any thread and process at once.
    """

    @abc.abstractmethod
    def take(self, wanted: int, interval: float, tolerance: float) -> tuple[int, float]:
        """Take up to ``wanted`` slots.

        Returns:
            ``(granted, wait)``: the slots granted (0 to ``wanted``) and, when none
            were, the seconds until one is due.

        Raises:
            BucketUnavailable: The bucket could not be read or written.
        """

    def identity(self) -> Hashable:
        """Equal for two objects that reach the same bucket."""
        return id(self)

    def describe(self) -> str:
        return type(self).__name__


def gcra(
    tat: float, now: float, wanted: int, interval: float, tolerance: float
) -> tuple[int, float, float]:
    """(granted, wait, new TAT) for a bucket at ``tat``."""
    tat = max(tat, now)
    # The 1e-9 absorbs float noise: a room of exactly k slots must give k.
    room = math.floor((now + tolerance - tat) / interval + 1e-9)
    if room < 1:
        return 0, tat + interval - tolerance - now, tat
    granted = min(room, wanted)
    return granted, 0.0, tat + granted * interval


class MemoryBucket(Bucket):
    """A bucket in this process only: a lock and a number, on the monotonic clock."""

    def __init__(self, clock: Any = time.monotonic):
        self._lock = threading.Lock()
        self._tat = 0.0
        self._clock = clock
        _MEMORY_BUCKETS.add(self)

    def take(self, wanted: int, interval: float, tolerance: float) -> tuple[int, float]:
        with self._lock:
            granted, wait, self._tat = gcra(self._tat, self._clock(), wanted, interval, tolerance)
        return granted, wait

    def describe(self) -> str:
        return "in this process"


_TAT = struct.Struct("<d")


class FileBucket(Bucket):
    """A bucket in a file shared by every process of this machine: eight bytes, the
    TAT in wall-clock seconds, read and written under an ``flock`` of the file.
    The kernel drops the lock of a process that dies, so a crash never wedges it.

    The file is opened once per process (a forked child opens its own: an
    ``flock`` belongs to the open file, which a fork would share).
    """

    def __init__(self, path: Path):
        self.path = path
        self._fd: tuple[int, int] | None = None  # (pid, fd)
        self._guard = threading.Lock()
        _FILE_BUCKETS.add(self)

    def _open(self) -> int:
        pid = os.getpid()
        if self._fd is not None and self._fd[0] == pid:
            return self._fd[1]
        ensure_private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        self._fd = (pid, fd)
        return fd

    def take(self, wanted: int, interval: float, tolerance: float) -> tuple[int, float]:
        import fcntl

        try:
            with self._guard:
                fd = self._open()
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    raw = os.pread(fd, _TAT.size, 0)
                    tat = _TAT.unpack(raw)[0] if len(raw) == _TAT.size else 0.0
                    if not math.isfinite(tat):
                        tat = 0.0  # a damaged file is an empty bucket
                    granted, wait, tat = gcra(tat, time.time(), wanted, interval, tolerance)
                    if granted:
                        os.pwrite(fd, _TAT.pack(tat), 0)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        except (OSError, TokenStoreError) as exc:
            raise BucketUnavailable(f"rate-limit file {self.path} failed: {exc}") from exc
        return granted, wait

    def identity(self) -> Hashable:
        return ("file", str(self.path))

    def describe(self) -> str:
        return f"file {self.path}"


_FILE_BUCKETS: weakref.WeakSet[FileBucket] = weakref.WeakSet()
_MEMORY_BUCKETS: weakref.WeakSet[MemoryBucket] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A thread of the parent may have held these locks at the fork.
    for bucket in list(_FILE_BUCKETS):
        bucket._guard = threading.Lock()
    for memory in list(_MEMORY_BUCKETS):
        memory._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


#: KEYS[1] the bucket; ARGV: interval, tolerance, wanted. Redis's own clock, so
#: hosts whose clocks disagree still share one timeline.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval + 1e-9)
if room < 1 then
  return {0, string.format('%.17g', tat + interval - tolerance - now)}
end
local granted = math.min(room, wanted)
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.17g', tat),
  'PX', math.ceil((tat - now) * 1000) + 1000)
return {granted, '0'}
"""


class RedisBucket(Bucket):
    """A bucket in Redis, shared by every host: one string key, taken by a Lua
    script on Redis's clock. The key expires once its TAT is past."""

    def __init__(self, client: Any, key: str):
        import redis

        self.key = key
        where = client.connection_pool.connection_kwargs
        self._server = tuple(str(where.get(part)) for part in ("host", "port", "path", "db"))
        self._script = client.register_script(_TAKE)
        self._errors = (redis.exceptions.RedisError, OSError)

    def take(self, wanted: int, interval: float, tolerance: float) -> tuple[int, float]:
        try:
            granted, wait = self._script(
                keys=[self.key], args=[repr(interval), repr(tolerance), wanted]
            )
        except self._errors as exc:
            raise BucketUnavailable(f"rate-limit key {self.key!r} failed: {exc}") from exc
        return int(granted), float(wait)

    def identity(self) -> Hashable:
        return ("redis", self._server, self.key)

    def describe(self) -> str:
        return f"redis key {self.key!r}"


def bucket_for(store: TokenStore, name: str) -> Bucket | None:
    """The bucket ``name`` where ``store`` keeps its lock; None when the store's
    lock is this process's own (a :class:`~pleo_auth.MemoryStore`) or unknown."""
    from .locks import FileRefreshLock, RedisRefreshLock

    lock = getattr(store, "refresh_lock", None)
    if isinstance(lock, FileRefreshLock):
        return FileBucket(lock.path.parent / f".pleo-rate-{name}")
    if isinstance(lock, RedisRefreshLock):
        return RedisBucket(lock._client, f"pleo-auth:rate:{name}")
    if "pleo_auth.stores.sql" in sys.modules:  # only a process that made one has SQLStores
        from .sql import SQLGrantStore

        if isinstance(store, SQLGrantStore):
            from .sql_buckets import SQLBucket

            return SQLBucket(store.family, name)
    return None
