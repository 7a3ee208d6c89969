"""A re-entrant lock with the waits of a condition variable, built at the first wait."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")


class Monitor:
    """What a coordinator uses of a :class:`threading.Condition` over a
    :class:`threading.RLock`: ``with``, ``acquire``, ``release``, ``wait``,
    ``wait_for`` and ``notify_all``.

    The condition itself (its own object, a deque of waiters and five bound
    methods, about 1.2 KiB) is made at the first wait, under the lock: an
    :class:`~pleo_auth.Integration` holds a coordinator per company, thousands of
    them, and most never wait.

    Thread safety:
        As a Condition's: :meth:`wait`, :meth:`wait_for` and :meth:`notify_all`
        must be called holding the lock, and raise :class:`RuntimeError` otherwise.
        The condition is made and read only with the lock held, so a notify never
        misses a waiter.
    """

    __slots__ = ("_condition", "_lock")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._condition: threading.Condition | None = None

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._lock.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def is_owned(self) -> bool:
        """Whether this thread holds the lock."""
        owned: bool = self._lock._is_owned()  # type: ignore[attr-defined]
        return owned

    def wait(self, timeout: float | None = None) -> bool:
        return self._waiters().wait(timeout)

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        return self._waiters().wait_for(predicate, timeout)

    def notify_all(self) -> None:
        if not self.is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        if self._condition is not None:  # else nobody has ever waited
            self._condition.notify_all()

    def _waiters(self) -> threading.Condition:
        if not self.is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        if self._condition is None:
            self._condition = threading.Condition(self._lock)
        return self._condition
