"""The registry of coordinators: one per set of stored tokens per process, so that
every session over the same tokens shares one Condition and one timer."""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._coordinator import Coordinator


class _Registry:
    """Coordinators by the identity of their stored tokens, so that every session
    over the same tokens in this process shares one Condition and one timer.

    A session that is garbage-collected without ``close()`` is released by its
    finaliser, which may run at any allocation of any thread, even one that holds
    this registry's lock or a coordinator's Condition. So the finaliser only queues
    the release (:meth:`release_later`), and the queue is worked off at the next
    safe point: any attach or detach, and every pass of a coordinator's timer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread holding _lock
        self._next_handle = 0
        self._entries: dict[Hashable, tuple[Coordinator, set[int]]] = {}
        self._released: collections.deque[tuple[Hashable, Coordinator, int]] = collections.deque()

    def attach(
        self,
        key: Hashable,
        factory: Callable[[], Coordinator],
        on_reauthentication_required: Callable[[], object] | None,
    ) -> tuple[Coordinator, int]:
        self.reap()
        with self._lock:
            self._owner = threading.get_ident()
            try:
                entry = self._entries.get(key)
                if entry is None:
                    entry = (factory(), set())
                    self._entries[key] = entry
                coordinator, handles = entry
                self._next_handle += 1
                handle = self._next_handle
                handles.add(handle)  # from here on, the coordinator stays open for us
            finally:
                self._owner = None
        # Outside the registry's lock: a thread holding the coordinator's Condition may
        # be waiting for that lock (a session closed by a __del__ the collector ran).
        coordinator.attach(handle, on_reauthentication_required)
        return coordinator, handle

    def detach(self, key: Hashable, coordinator: Coordinator, handle: int) -> None:
        if self._owner == threading.get_ident():
            # close() from a __del__ that ran inside attach(), on this very thread.
            self.release_later(key, coordinator, handle)
            return
        self.reap()
        self._detach(key, coordinator, handle)

    def release_later(self, key: Hashable, coordinator: Coordinator, handle: int) -> None:
        """For finalisers: takes no lock, calls nothing (``deque.append`` is atomic)."""
        self._released.append((key, coordinator, handle))

    def reap(self) -> None:
        """Release the sessions that were collected without ``close()``."""
        while True:
            try:
                released = self._released.popleft()
            except IndexError:
                return
            self._detach(*released)

    def _detach(self, key: Hashable, coordinator: Coordinator, handle: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            last = False
            if entry is not None and entry[0] is coordinator:
                entry[1].discard(handle)
                last = not entry[1]
                if last:
                    del self._entries[key]
        coordinator.forget(handle)  # outside the lock, as in attach()
        if last:
            coordinator.close()

    def get(self, key: Hashable) -> Coordinator | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry[0] if entry else None

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._owner = None
        for coordinator, _handles in self._entries.values():
            coordinator._reset_after_fork()


REGISTRY = _Registry()
os.register_at_fork(after_in_child=REGISTRY._after_fork_in_child)
