"""The lease renewer's bound: it never renews at or after ``until``, however late
its thread runs, and leaves once nothing is left to renew."""

from __future__ import annotations

import threading
import time

from support.integration_helpers import wait_until

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
