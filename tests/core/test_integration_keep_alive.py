"""A keep-alive never holds a slot of the refresh pool while it waits for a
refresh that needs one.

Bug: ``Coordinator.keep_alive`` took its (proactive) slot of the pool first,
then waited, slot in hand, for any operation under way on the same coordinator
(``_wait_until_idle_locked``). A request's refresh makes the coordinator busy
first and takes its (urgent) slot afterwards. With ``max_concurrent_refreshes=1``
(a proactive refresh may take the only slot), a keep-alive that took the slot
just before a request of the same company started its refresh waited for that
refresh, which waited for the keep-alive's slot: both waited for ever, and so did
every later refresh of every company of the integration (each waits for a slot).

The gate below only widens the window between the keep-alive's taking its slot
and its looking at the coordinator; the interleaving is one a real process meets.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from support.integration_helpers import grant, integration, new_companies, settled, wait_until

from pleo_auth import MemoryStore
from pleo_auth._clock import FakeClock
from pleo_auth._gate import RefreshGate
from pleo_auth._scheduler import WORKER_NAME
from pleo_auth.testing import Emulator

KEEP_ALIVE = 100.0


class _PausingGate(RefreshGate):
    """Once armed, the next proactive slot taken on a scheduler worker is held,
    before its refresh goes on, until ``go`` is set."""

    def __init__(self, slots: int):
        super().__init__(slots)
        self.armed = False
        self.inside = threading.Event()
        self.go = threading.Event()

    @contextlib.contextmanager
    def slot(self, *, urgent: bool) -> Iterator[None]:
        with super().slot(urgent=urgent):
            if self.armed and not urgent and threading.current_thread().name == WORKER_NAME:
                self.armed = False
                self.inside.set()
                self.go.wait(30)
            yield


def test_a_keep_alive_and_a_requests_refresh_of_one_company_never_wait_for_each_other(
    clock: FakeClock,
) -> None:
    (company,) = new_companies(1)
    finished = threading.Event()
    with (
        Emulator(access_token_lifetime=3600, clock=clock) as emu,
        integration(
            emu, MemoryStore.family(), clock=clock, keep_alive=KEEP_ALIVE,
            max_concurrent_refreshes=1,
        ) as pleo,
    ):  # fmt: skip
        gate = pleo._gate = _PausingGate(1)  # before any coordinator is built
        assert settled(clock)  # the sweep's first pass, over no grant
        # Its access token is fresh, but it was issued before the keep-alive interval.
        pleo.add(company, grant(emu, company, now=clock.time(), age=2 * KEEP_ALIVE))
        session = pleo.session(company)
        assert settled(clock)
        gate.armed = True
        clock.advance(KEEP_ALIVE)  # the sweep's next pass: the keep-alive is due
        assert gate.inside.wait(10)  # the keep-alive holds the only slot
        requester = threading.Thread(target=lambda: (session.refresh(), finished.set()))
        requester.start()
        assert wait_until(lambda: gate.waiting == (1, 0))  # the request's refresh waits
        gate.go.set()
        done = finished.wait(10)
        if not done:  # break the deadlock, so that the test can end
            with gate._cond:
                gate._busy = 0
                gate._cond.notify_all()
        requester.join(10)
        assert done, "the request's refresh and the keep-alive waited for each other"
        assert settled(clock)
    # The request's refresh; the keep-alive found it under way, and it was enough.
    assert emu.counters_for(company).refresh_grants == 1
    assert emu.counters.rejected_refreshes == 0
