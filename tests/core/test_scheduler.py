"""The process's refresh scheduler: one thread and a few workers for every grant."""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator

import pytest

from pleo_auth._clock import FakeClock
from pleo_auth._scheduler import WORKERS, Entry, Scheduler


class Item:
    """A scheduled item that records its ticks and asks for the next one."""

    def __init__(self, clock: FakeClock, every: float | None = None):
        self.clock = clock
        self.every = every
        self.ticks: list[float] = []
        self.ticked = threading.Condition()
        self.during: Callable[[], object] | None = None

    def tick(self) -> float | None:
        if self.during is not None:
            self.during()
        with self.ticked:
            self.ticks.append(self.clock.time())
            self.ticked.notify_all()
        return None if self.every is None else self.clock.time() + self.every

    def wait_for_ticks(self, count: int, timeout: float = 10.0) -> bool:
        with self.ticked:
            return self.ticked.wait_for(lambda: len(self.ticks) >= count, timeout)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def scheduler(clock: FakeClock) -> Iterator[Scheduler]:
    scheduler = Scheduler(clock)
    yield scheduler
    assert scheduler._thread is None or scheduler._thread.is_alive()


def settled(scheduler: Scheduler, clock: FakeClock) -> None:
    """Wait until every tick has finished and the scheduler sleeps on the clock, or
    has left because nothing is scheduled."""
    with scheduler._cond:
        done = scheduler._cond.wait_for(lambda: not scheduler._ready and not scheduler._ticking, 10)
        leaving = scheduler._thread is None or not scheduler._heap
    assert done, "a tick never finished"
    if leaving:
        assert idle(scheduler), "the scheduler did not leave"
    else:
        assert clock.wait_for_sleepers(1), "the scheduler never went to sleep"


def idle(scheduler: Scheduler) -> bool:
    """Whether the scheduler's threads all leave (they do once nothing is scheduled)."""
    with scheduler._cond:
        return scheduler._cond.wait_for(lambda: scheduler.threads == 0, 10)


def test_an_entry_ticks_at_its_due_time_and_not_before(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    item = Item(clock)
    entry = scheduler.register(item)
    start = clock.time()
    entry.wake(start + 10)
    settled(scheduler, clock)
    clock.advance(9.5)
    settled(scheduler, clock)
    assert item.ticks == []
    clock.advance(0.5)
    assert item.wait_for_ticks(1)
    assert item.ticks == [start + 10]


def test_a_later_wake_never_postpones_an_earlier_one(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    item = Item(clock)
    entry = scheduler.register(item)
    start = clock.time()
    entry.wake(start + 5)
    entry.wake(start + 50)
    entry.wake(start + 2)  # earlier: this one wins
    settled(scheduler, clock)
    clock.advance(2)
    assert item.wait_for_ticks(1)
    clock.advance(100)
    settled(scheduler, clock)
    assert item.ticks == [start + 2]  # one tick: the superseded wakes are gone


def test_the_tick_says_when_it_runs_next(scheduler: Scheduler, clock: FakeClock) -> None:
    item = Item(clock, every=10)
    entry = scheduler.register(item)
    start = clock.time()
    entry.wake()
    for count in range(1, 5):
        assert item.wait_for_ticks(count)
        settled(scheduler, clock)
        clock.advance(10)
    assert item.wait_for_ticks(5)
    assert item.ticks == [start + 10 * n for n in range(5)]


def test_a_wake_during_a_tick_runs_the_item_again_after_it(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    item = Item(clock)
    entry = scheduler.register(item)
    woken = threading.Event()

    def wake_self() -> None:
        if not woken.is_set():
            woken.set()
            entry.wake()  # as a refresh publishing new tokens does

    item.during = wake_self
    entry.wake()
    assert item.wait_for_ticks(2)
    settled(scheduler, clock)
    assert len(item.ticks) == 2


def test_the_scheduler_sleeps_on_the_clock_only_once_every_tick_has_finished(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    release = threading.Event()
    inside = threading.Event()
    item = Item(clock)

    def block() -> None:
        inside.set()
        assert release.wait(10)

    item.during = block
    other = Item(clock)
    scheduler.register(item).wake()
    scheduler.register(other).wake(clock.time() + 100)
    assert inside.wait(10)
    assert clock.sleepers == 0  # a tick runs: the scheduler is not asleep on the clock
    release.set()
    settled(scheduler, clock)
    assert len(item.ticks) == 1


def test_a_thousand_items_run_on_at_most_one_thread_and_the_workers(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    items = [Item(clock, every=60) for _ in range(1000)]
    entries = [scheduler.register(item) for item in items]
    for entry in entries:
        entry.wake()
    assert all(item.wait_for_ticks(1) for item in items)
    assert scheduler.threads <= 1 + WORKERS
    names = {t.name for t in threading.enumerate() if t.name.startswith("pleo-auth-")}
    assert names <= {"pleo-auth-scheduler", "pleo-auth-refresh"}


def test_the_threads_leave_once_nothing_is_scheduled(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    item = Item(clock)
    scheduler.register(item).wake()
    assert item.wait_for_ticks(1)
    # Nothing more is scheduled: the scheduler's thread and its workers leave.
    assert idle(scheduler)
    # And a new wake brings it back.
    scheduler.register(item).wake()
    assert item.wait_for_ticks(2)


def test_a_closed_entry_never_ticks_again(scheduler: Scheduler, clock: FakeClock) -> None:
    item = Item(clock, every=1)
    entry = scheduler.register(item)
    entry.wake()
    assert item.wait_for_ticks(1)
    entry.close()
    assert entry.settle(10)
    clock.advance(100)
    other = Item(clock)
    scheduler.register(other).wake()  # proof the scheduler went round since
    assert other.wait_for_ticks(1)
    assert len(item.ticks) == 1


def test_closed_entries_do_not_pile_up_in_the_heap(scheduler: Scheduler, clock: FakeClock) -> None:
    """A web app that builds and closes a session per request must not grow the heap."""
    keep = Item(clock)
    scheduler.register(keep).wake(clock.time() + 3600)
    for _ in range(5000):
        entry = scheduler.register(Item(clock))
        entry.wake(clock.time() + 900)
        entry.close()
    assert len(scheduler._heap) <= 200


def test_an_item_that_was_garbage_collected_is_dropped(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    item = Item(clock, every=1)
    entry: Entry = scheduler.register(item)
    entry.wake(clock.time() + 1)
    del item
    gc.collect()
    clock.advance(1)
    assert entry.settle(10)
    assert idle(scheduler)
    assert entry.when == math.inf


def test_a_tick_that_crashes_is_logged_and_retried_later_not_in_a_loop(
    scheduler: Scheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    item = Item(clock)

    def crash() -> None:
        raise RuntimeError("a bug")

    item.during = crash
    scheduler.register(item).wake()
    settled(scheduler, clock)
    assert [r.message for r in caplog.records if r.levelno == logging.ERROR] == [
        "a scheduled refresh crashed"
    ]
    assert scheduler._heap
    assert scheduler._heap[0][0] == clock.time() + 5.0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_what_the_parent_had_scheduled_on_threads_of_its_own(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    release = threading.Event()
    inside = threading.Event()
    busy = Item(clock)

    def block() -> None:
        if not inside.is_set():
            inside.set()
            release.wait(10)

    busy.during = block
    later = Item(clock)
    scheduler.register(busy).wake()
    later_entry = scheduler.register(later)
    later_entry.wake(clock.time() + 1)
    assert inside.wait(10)  # the parent's worker is inside busy's tick at the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            clock.advance(1)
            later_entry.wake(clock.time() + 1)  # the child's first wake starts its threads
            ok = busy.wait_for_ticks(1, 10) and later.wait_for_ticks(1, 10)
            code = 0 if ok else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    try:
        result = os.read(read, 1)
    finally:
        release.set()
        os.close(read)
        os.waitpid(pid, 0)
    assert result == b"\x00", "the child did not run the parent's scheduled ticks"
