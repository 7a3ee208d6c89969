"""One scheduler per clock: every proactive refresh of every grant in the process,
on one thread with a heap of due times and a few workers.

pleo-auth 0.1 started a timer thread per set of stored tokens, so an integration
holding a grant per Pleo company held a thread per company. Now each coordinator
registers with the scheduler of its clock and says when it next wants to run
(:meth:`Entry.wake`). The scheduler thread does no I/O: it pops what is due and
hands it to a worker, which calls the coordinator's ``tick()``. A tick may read
the store and refresh; it returns when the coordinator next wants to run, or
None when nothing is due until something happens (a request, a new login).

* **Threads:** the scheduler and at most :data:`WORKERS` workers, started on the
  first wake and gone again once nothing is scheduled; the system clock's
  scheduler serves every session and integration of the process that did not
  bring a clock of its own.
* **Quiescence:** the scheduler sleeps on its clock only while no tick is queued
  or running, so a test that sees it asleep (``FakeClock.wait_for_sleepers``)
  knows every tick has finished.
* **Fork:** a child forgets the parent's threads; ticks the parent had queued or
  running are due again at once, and the threads start again on the child's next
  wake (its first request).

Thread safety:
    Every method may be called from any thread. ``_cond`` is never held while
    calling into a scheduled item.
"""

from __future__ import annotations

import atexit
import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ._clock import SYSTEM_CLOCK, Clock
from ._registry import REGISTRY

logger = logging.getLogger("pleo_auth")

__all__ = ["WORKER_NAME", "Entry", "Scheduled", "Scheduler", "scheduler_for"]

#: Worker threads per scheduler: proactive refreshes of different grants overlap
#: this much. Requests never wait for them: a request refreshes on its own thread.
WORKERS = 2

#: The scheduler's thread; workers have the name coordinators know as the timer's.
SCHEDULER_NAME = "pleo-auth-scheduler"
WORKER_NAME = "pleo-auth-refresh"

#: The longest the scheduler sleeps at once: monotonic time stops while a laptop
#: sleeps, wall time does not, and due times are wall times.
_SLICE = 30.0

#: How long an idle worker waits for work before it leaves.
_WORKER_IDLE = 30.0

#: While ticks run under a clock other than the system's, how often the
#: scheduler looks at that clock (a test may move it meanwhile).
_FOREIGN_POLL = 0.05

#: A tick that crashed runs again after this many seconds, never in a loop.
_CRASH_PAUSE = 5.0

#: How often :meth:`Scheduler.settled` looks again when nothing notified it.
_SETTLE_POLL = 0.01


class Scheduled(Protocol):
    def tick(self) -> float | None:
        """Do what is due; when to run again (wall time of the scheduler's clock),
        or None to wait for the next :meth:`Entry.wake`."""
        ...


class Entry:
    """One scheduled item's place in its scheduler. Its fields are guarded by the
    scheduler's Condition."""

    __slots__ = ("__weakref__", "_item", "_scheduler", "again", "closed", "ticking", "when")

    def __init__(self, scheduler: Scheduler, item: Scheduled):
        self._scheduler = scheduler
        self._item = weakref.ref(item)
        self.when = math.inf  # the due time of its live heap entry, if any
        self.again = math.inf  # a wake that came while it was ticking
        self.ticking = False
        self.closed = False

    def item(self) -> Scheduled | None:
        return self._item()

    def wake(self, when: float | None = None) -> None:
        """Run the item's tick at wall time ``when`` (now if None), unless it is
        due earlier already."""
        self._scheduler.wake(self, when)

    @property
    def idle(self) -> bool:
        """Nothing is scheduled and no tick runs: only a wake brings it back."""
        return self.when == math.inf and not self.ticking and self.again == math.inf

    def close(self) -> None:
        """Never tick again; a tick under way finishes."""
        self._scheduler.close(self)

    def settle(self, timeout: float) -> bool:
        """Wait until no tick of this entry runs or waits to run; False on timeout."""
        return self._scheduler.settle(self, timeout)


class Scheduler:
    """The heap of due times of one clock, its thread and its workers."""

    def __init__(self, clock: Clock):
        # Weakly: the registry of schedulers is keyed by the clock, so a strong
        # reference would keep a test's clock, and this, for ever.
        try:
            self._clock_ref: Callable[[], Clock | None] = weakref.ref(clock)
        except TypeError:
            self._clock_ref = lambda: clock
        self._foreign = clock is not SYSTEM_CLOCK
        self._seq = itertools.count()
        self._reset()
        _ALL.add(self)

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._wakeup = threading.Event()
        self._heap: list[tuple[float, int, Entry]] = []
        self._stale = 0  # heap entries superseded or closed, dropped when popped
        self._ready: deque[Entry] = deque()
        self._ticking: set[Entry] = set()
        self._thread: threading.Thread | None = None
        self._workers = 0
        self._idle_workers = 0
        self._stopped = False

    def register(self, item: Scheduled) -> Entry:
        """An entry for ``item``, not yet scheduled: :meth:`Entry.wake` it."""
        return Entry(self, item)

    @property
    def threads(self) -> int:
        """The scheduler's live threads: its own and its workers."""
        with self._cond:
            return (self._thread is not None) + self._workers

    @property
    def _clock(self) -> Clock:
        clock = self._clock_ref()
        assert clock is not None, "a scheduler outlived its clock while in use"
        return clock

    def wake(self, entry: Entry, when: float | None = None) -> None:
        if when is None:
            when = self._clock.time()
        with self._cond:
            if entry.closed:
                return
            if entry.ticking:
                entry.again = min(entry.again, when)
                return
            if entry.when <= when:
                self._start_locked()  # a forked child's first wake
                return
            if entry.when != math.inf:
                self._stale += 1
            self._push_locked(entry, when)

    def close(self, entry: Entry) -> None:
        with self._cond:
            entry.closed = True
            if entry.when != math.inf:
                entry.when = math.inf
                self._stale += 1
                self._compact_locked()
                self._wakeup.set()  # it may have been the last: the threads may leave
                self._cond.notify_all()

    def settle(self, entry: Entry, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not entry.ticking, timeout)

    def _push_locked(self, entry: Entry, when: float) -> None:
        entry.when = when
        heapq.heappush(self._heap, (when, next(self._seq), entry))
        if not self._start_locked() and self._heap[0][2] is entry:
            self._wakeup.set()  # earlier than the scheduler's sleep
            self._cond.notify_all()

    def _start_locked(self) -> bool:
        """Start the scheduler's thread if it is not running; whether it started."""
        if self._thread is not None:
            return False
        self._thread = threading.Thread(target=self._run, name=SCHEDULER_NAME, daemon=True)
        self._thread.start()
        return True

    def _compact_locked(self) -> None:
        """Drop superseded entries once they are most of the heap: a web app that
        builds a session per request must not grow it for ever."""
        if self._stale > 64 and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not _superseded(e)]
            heapq.heapify(self._heap)
            self._stale = 0

    # -- the scheduler thread ---------------------------------------------------------

    def _run(self) -> None:
        me = threading.current_thread()
        clock = self._clock
        while True:
            with self._cond:
                if self._thread is not me:
                    return
                now = clock.time()
                self._pop_due_locked(now)
                if not self._heap and not self._ready and not self._ticking:
                    self._thread = None  # nothing left: the next wake starts a new one
                    self._cond.notify_all()
                    return
                left = self._heap[0][0] - now if self._heap else _SLICE
                if self._ready or self._ticking:
                    # Not asleep on the clock while ticks run: see the module's doc.
                    self._cond.wait(min(left, _FOREIGN_POLL if self._foreign else _SLICE))
                    continue
                self._wakeup.clear()
            clock.wait(self._wakeup, min(left, _SLICE))

    def _pop_due_locked(self, now: float) -> None:
        heap = self._heap
        while heap and (heap[0][0] <= now or _superseded(heap[0])):
            when, _seq, entry = heapq.heappop(heap)
            if _superseded((when, _seq, entry)):
                self._stale = max(0, self._stale - 1)
                continue
            entry.when = math.inf
            entry.ticking = True
            self._ticking.add(entry)
            self._ready.append(entry)
        if self._ready:
            if self._idle_workers < len(self._ready) and self._workers < WORKERS:
                self._workers += 1
                threading.Thread(target=self._work, name=WORKER_NAME, daemon=True).start()
            self._cond.notify_all()

    # -- workers --------------------------------------------------------------------------

    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._ready or self._stopped:
                    if self._cond is not cond or self._stopped:
                        return  # a forked child's leftover: never here, but harmless
                    self._idle_workers += 1
                    woken = cond.wait(_WORKER_IDLE)
                    self._idle_workers -= 1
                    if not self._ready and (not woken or self._thread is None):
                        self._workers -= 1  # idle, or nothing is scheduled any more
                        self._cond.notify_all()
                        return
                entry = self._ready.popleft()
            self._tick(entry)

    def _tick(self, entry: Entry) -> None:
        item = entry.item()
        after: float | None = None
        if item is not None:
            try:
                after = item.tick()
            except Exception:
                logger.exception("a scheduled refresh crashed")
                after = self._clock.time() + _CRASH_PAUSE
            del item
        REGISTRY.reap()  # sessions collected without close(): see _Registry
        with self._cond:
            entry.ticking = False
            self._ticking.discard(entry)
            when = min(after if after is not None else math.inf, entry.again)
            entry.again = math.inf
            if when != math.inf and not entry.closed and entry.item() is not None:
                self._push_locked(entry, when)
            self._cond.notify_all()

    def stop(self, timeout: float) -> bool:
        """Start no tick from now on, and wait for those under way: at interpreter
        exit, a refresh cut off between Pleo's reply and the save loses the grant.

        Returns:
            False if a tick was still running after ``timeout`` seconds.
        """
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            if self._running_locked():
                logger.info("waiting for a proactive refresh under way to save its tokens")
            return self._cond.wait_for(lambda: not self._running_locked(), timeout)

    def settled(self, timeout: float) -> bool:
        """Wait until nothing is due by the clock and no tick is queued or running:
        all the clock's last step made due is done. False after ``timeout`` real seconds."""

        def quiet() -> bool:
            now = self._clock.time()
            due = any(
                entry.when == when and not entry.closed and when <= now
                for when, _, entry in self._heap
            )
            return not self._ready and not self._ticking and not due

        give_up_at = time.monotonic() + timeout
        with self._cond:
            while not quiet():
                if time.monotonic() > give_up_at:
                    return False
                self._cond.wait(_SETTLE_POLL)  # a due time passes without a notify
        return True

    def _running_locked(self) -> bool:
        return any(entry.ticking for entry in self._ticking if entry not in self._ready)

    def _after_fork_in_child(self) -> None:
        # The parent's threads are gone; what they had queued or were running is due.
        pending = list(self._ticking)
        heap = self._heap
        self._reset()
        clock = self._clock_ref()
        now = clock.time() if clock is not None else 0.0
        for entry in pending:
            entry.ticking = False
            entry.again = math.inf
            if not entry.closed:
                entry.when = now
                heap.append((now, next(self._seq), entry))
        # Each entry keeps its place: no thread starts until the next wake.
        self._heap = [e for e in heap if not _superseded(e)]
        heapq.heapify(self._heap)


def _superseded(item: tuple[float, int, Entry]) -> bool:
    """Whether a heap item is left over: its entry closed, or due at another time."""
    when, _seq, entry = item
    return entry.when != when or entry.closed


_ALL: weakref.WeakSet[Scheduler] = weakref.WeakSet()
_schedulers: weakref.WeakKeyDictionary[Clock, Scheduler] = weakref.WeakKeyDictionary()
_by_id: dict[int, Scheduler] = {}  # clocks that take no weak reference
_SYSTEM = Scheduler(SYSTEM_CLOCK)
_lock = threading.Lock()


def scheduler_for(clock: Clock) -> Scheduler:
    """The scheduler of ``clock``: one per clock per process."""
    if clock is SYSTEM_CLOCK:
        return _SYSTEM
    with _lock:
        try:
            scheduler = _schedulers.get(clock)
        except TypeError:
            scheduler = _by_id.get(id(clock))
            if scheduler is None:
                scheduler = _by_id[id(clock)] = Scheduler(clock)
            return scheduler
        if scheduler is None:
            scheduler = _schedulers[clock] = Scheduler(clock)
        return scheduler


#: At interpreter exit, the longest to wait for refreshes under way (one refresh,
#: retries included, takes at most about 45 s with the default settings).
_EXIT_WAIT = 60.0


def _finish_at_exit() -> None:
    """Let refreshes under way save their tokens before the interpreter exits.

    Workers are daemon threads: the interpreter would kill one between Pleo's
    reply and the save, and the stored refresh token is spent by then. A cron job
    whose main thread ends while the timer refreshes would lose the grant.
    """
    for scheduler in list(_ALL):
        if not scheduler.stop(_EXIT_WAIT):
            logger.error(
                "exiting while a proactive refresh is still under way after %gs", _EXIT_WAIT
            )
    REGISTRY.settle(_EXIT_WAIT)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    for scheduler in list(_ALL):
        scheduler._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
# After the registry's own exit handler is registered, so this one runs first.
atexit.register(_finish_at_exit)
