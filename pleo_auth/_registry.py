"""The registry of coordinators: one per set of stored tokens per process, so that
every session over the same tokens shares one Condition and one timer."""

from __future__ import annotations

import atexit
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

    A coordinator whose last session detaches while it owes a write-back (a failed
    save left the live pair only in memory) is not closed: that would lose the
    grant. It *lingers*, still registered, its timer retrying the write-back; a new
    session over the same tokens takes it up again, and once the pair is saved the
    next reap closes it. At interpreter exit each one gets a last attempt.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread holding _lock
        self._next_handle = 0
        self._entries: dict[Hashable, tuple[Coordinator, set[int]]] = {}
        self._released: collections.deque[tuple[Hashable, Coordinator, int]] = collections.deque()
        self._lingering: dict[Hashable, Coordinator] = {}

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
                self._lingering.pop(key, None)  # taken up again, if it lingered
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
        """Release the sessions that were collected without ``close()``, and close the
        lingering coordinators that have written their pair back."""
        if not self._released and not self._lingering:  # the common case, cheaply
            return
        while True:
            try:
                released = self._released.popleft()
            except IndexError:
                break
            self._detach(*released)
        if self._lingering:
            self._retire(only_saved=True)

    def _retire(self, *, only_saved: bool) -> None:
        retired = []
        with self._lock:
            for key, coordinator in list(self._lingering.items()):
                if only_saved and coordinator.owes_write_back:
                    continue
                del self._lingering[key]
                entry = self._entries.get(key)
                if entry is not None and entry[0] is coordinator and not entry[1]:
                    del self._entries[key]
                    retired.append(coordinator)
        for coordinator in retired:  # outside the lock, as in attach()
            coordinator.close()

    def close_lingering(self) -> None:
        """At interpreter exit: a last write-back attempt for each lingering coordinator
        (each logs an error if its pair is lost)."""
        self._retire(only_saved=False)

    def _detach(self, key: Hashable, coordinator: Coordinator, handle: int) -> None:
        with self._lock:
            entry = self._entries.get(key)
            last = lingers = False
            if entry is not None and entry[0] is coordinator:
                entry[1].discard(handle)
                if not entry[1]:
                    if coordinator.owes_write_back:
                        self._lingering[key] = coordinator
                        lingers = True
                    else:
                        del self._entries[key]
                        last = True
        coordinator.forget(handle)  # outside the lock, as in attach()
        if last:
            coordinator.close()
        elif lingers:
            if coordinator.may_wait_here():
                self._last_detached(coordinator)
            else:  # as close() does, on a thread of its own
                threading.Thread(
                    target=self._last_detached,
                    args=(coordinator,),
                    name="pleo-auth-close",
                    daemon=True,
                ).start()

    def _last_detached(self, coordinator: Coordinator) -> None:
        """The close's last chance to save a pair left only in memory; if the store
        still refuses it, the coordinator lingers, its timer trying again."""
        if not coordinator.write_back_once():
            coordinator.linger()
        self._retire(only_saved=True)

    def settle(self, timeout: float) -> None:
        """At interpreter exit: wait for every refresh under way on a thread of the
        application's to save its tokens (each coordinator at most ``timeout``)."""
        with self._lock:
            coordinators = [coordinator for coordinator, _handles in self._entries.values()]
        for coordinator in coordinators:
            coordinator.settle(timeout)

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
atexit.register(REGISTRY.close_lingering)
