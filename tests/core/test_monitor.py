"""The coordinator's Monitor: an RLock with a Condition's waits, made at the first wait."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

import pytest

from pleo_auth._monitor import Monitor


def test_no_condition_is_made_until_something_waits() -> None:
    monitor = Monitor()
    with monitor, monitor:  # re-entrant
        monitor.notify_all()
    assert monitor._condition is None
    with monitor:
        assert monitor.wait(0) is False
    assert isinstance(monitor._condition, threading.Condition)


def test_a_monitor_is_far_smaller_than_the_condition_it_replaces() -> None:
    size = sys.getsizeof
    condition = threading.Condition()
    made = size(condition) + size(condition.__dict__) + size(condition._waiters)  # type: ignore[attr-defined]
    assert size(Monitor()) * 4 < made


@pytest.mark.parametrize("call", ["wait", "wait_for", "notify_all"])
def test_waits_and_notifies_need_the_lock_as_a_conditions_do(call: str) -> None:
    monitor = Monitor()
    calls: dict[str, Callable[[], object]] = {
        "wait": lambda: monitor.wait(0),
        "wait_for": lambda: monitor.wait_for(lambda: True, 0),
        "notify_all": monitor.notify_all,
    }
    with pytest.raises(RuntimeError, match="un-acquired lock"):
        calls[call]()
    assert monitor._condition is None


def test_a_wait_lets_go_of_every_level_of_the_lock_and_takes_them_all_back() -> None:
    monitor = Monitor()
    state = {"set": False}
    waiting = threading.Event()

    def setter() -> None:
        waiting.wait(10)
        with monitor:  # only possible if the waiter let go of both levels
            state["set"] = True
            monitor.notify_all()

    thread = threading.Thread(target=setter)
    thread.start()
    with monitor, monitor:
        waiting.set()
        assert monitor.wait_for(lambda: state["set"], 10) is True
        assert monitor.is_owned()
        monitor.release()  # the inner level
        assert monitor.is_owned()  # the outer one is held still
        assert monitor.acquire()  # for the with's own release
    assert not monitor.is_owned()
    thread.join(10)


def test_notify_all_wakes_every_waiter_even_the_one_that_made_the_condition() -> None:
    monitor = Monitor()
    go = {"now": False}
    arrived = threading.Semaphore(0)
    woken: list[int] = []

    def waiter(n: int) -> None:
        with monitor:
            arrived.release()
            if monitor.wait_for(lambda: go["now"], 10):
                woken.append(n)

    threads = [threading.Thread(target=waiter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for _ in threads:
        assert arrived.acquire(timeout=10)
    with monitor:  # every waiter is inside wait_for: it arrived holding the lock
        go["now"] = True
        monitor.notify_all()
    for thread in threads:
        thread.join(10)
    assert sorted(woken) == [0, 1, 2, 3]


def test_acquire_with_a_timeout_fails_while_another_thread_holds_it() -> None:
    monitor = Monitor()
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        with monitor:
            held.set()
            done.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    assert monitor.acquire(timeout=0.01) is False
    assert monitor.acquire(blocking=False) is False
    done.set()
    thread.join(10)
    assert monitor.acquire(timeout=10) is True
    monitor.release()
