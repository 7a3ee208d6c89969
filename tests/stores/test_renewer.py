"""The lease renewer's bound: it never renews at or after ``until``, however late
its thread runs, and leaves once nothing is left to renew."""

from __future__ import annotations

import math
import threading
import time

import pytest
from support.integration_helpers import wait_until

from pleo_auth import TokenStoreError
from pleo_auth.stores.lease import Renewer


def test_no_renewal_runs_at_or_after_its_bound_and_the_renewer_then_leaves() -> None:
    renewer = Renewer()
    calls: list[float] = []
    until = time.monotonic() + 0.5
    renewer.keep(
        lambda: calls.append(time.monotonic()) is None, every=0.05, where="test", until=until
    )
    # The thread leaves once no turn is left before the bound: nothing is left to renew.
    assert wait_until(lambda: renewer._thread is None, timeout=30.0)
    assert renewer._queue == []
    assert all(called < until for called in calls), calls


def test_a_renewal_whose_first_turn_would_come_after_its_bound_never_starts_a_thread() -> None:
    renewer = Renewer()
    before = threading.active_count()
    renewal = renewer.keep(lambda: True, every=1.0, where="test", until=time.monotonic() + 0.5)
    assert renewal.stopped
    assert renewer._thread is None
    assert threading.active_count() == before


def test_a_lease_is_known_held_one_lease_past_its_last_granted_renewal_less_a_margin() -> None:
    renewer = Renewer()
    granted = threading.Event()
    answers = [True, False]  # the second renewal finds the lease another's

    def renew() -> bool:
        answer = answers.pop(0)
        granted.set()
        return answer

    taken_at = time.monotonic()
    renewal = renewer.keep(renew, every=0.05, where="test", lasts=2.0, taken_at=taken_at)
    assert renewal.held_until() == pytest.approx(taken_at + 2.0 - 0.2)
    assert granted.wait(30)
    # The first renewal was granted: confirmed one lease from when it was sent.
    assert wait_until(lambda: renewal.held_until() > taken_at + 1.8, timeout=30.0)
    after_first = renewal.held_until()
    assert after_first <= time.monotonic() + 1.8
    # The second was refused: the renewer stops, and the confirmation stays where it was.
    assert wait_until(lambda: renewer._thread is None, timeout=30.0)
    assert answers == []
    assert renewal.held_until() == after_first


def test_a_renewal_that_fails_confirms_nothing() -> None:
    renewer = Renewer()
    tried = threading.Event()

    def renew() -> bool:
        tried.set()
        raise TokenStoreError("the server did not answer", retryable=True)

    taken_at = time.monotonic()
    renewal = renewer.keep(renew, every=0.05, where="test", lasts=1.0, taken_at=taken_at)
    assert tried.wait(30)
    renewer.stop(renewal)
    assert wait_until(lambda: renewer._thread is None, timeout=30.0)
    assert renewal.held_until() == pytest.approx(taken_at + 1.0 - 0.1)


def test_a_lease_is_never_known_held_past_its_holders_bound() -> None:
    renewer = Renewer()
    taken_at = time.monotonic()
    renewal = renewer.keep(
        lambda: True, every=0.05, where="test", lasts=10.0, taken_at=taken_at, until=taken_at + 0.3
    )
    assert renewal.held_until() == pytest.approx(taken_at + 0.3 - 0.03)
    assert wait_until(lambda: renewer._thread is None, timeout=30.0)
    assert renewal.held_until() <= taken_at + 0.3


def test_a_renewal_that_does_not_say_how_long_a_lease_lasts_is_held_for_ever() -> None:
    renewal = Renewer().keep(lambda: True, every=1.0, where="test", until=time.monotonic() + 0.5)
    assert renewal.held_until() == math.inf
