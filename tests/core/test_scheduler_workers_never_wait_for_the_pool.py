"""One integration's busy refresh pool never stops the scheduler's other timers.

Found by review: a proactive tick waited for its slot of the refresh pool *on the
scheduler's worker*, and a proactive refresh yields to every request waiting for
a slot, without bound. The scheduler has two workers for every scheduled item of
the process (each grant of each Integration, each plain PleoSession's timer, each
keep-alive sweep, each write-back of a pair a failed save left in memory). So
while one integration's pool had requests waiting (a cold start, a 429 storm, a
slow token endpoint), two of its proactive ticks took both workers, and every
other timer stopped: here a plain PleoSession, with no pool at all, missed its
proactive refresh. Now a proactive tick takes a slot only if one is free at once;
else the pool wakes its entry when a slot is given back.
"""

from __future__ import annotations

import threading

from support.integration_helpers import (
    HeldTokenRequests,
    grant,
    integration,
    new_companies,
    settled,
    wait_until,
)

from pleo_auth import MemoryStore, PleoSession, TokenSet
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator

LIFETIME = 100.0
MARGIN = 10.0


def test_a_plain_sessions_timer_runs_while_an_integrations_pool_has_requests_waiting(
    clock: FakeClock,
) -> None:
    used_1, used_2, expired_1, expired_2 = new_companies(4)
    held = HeldTokenRequests()
    callers: list[threading.Thread] = []
    with (
        Emulator(access_token_lifetime=LIFETIME, clock=clock) as emu,
        Emulator(access_token_lifetime=LIFETIME, clock=clock) as other,
        integration(
            emu, MemoryStore.family(), clock=clock, refresh_margin=MARGIN,
            max_concurrent_refreshes=1,
        ) as pleo,
    ):  # fmt: skip
        start = clock.time()
        for company in (used_1, used_2):
            pleo.add(company, grant(emu, company, now=start))
            assert pleo.session(company).get("/v2/employees").status_code == 200  # used
        for company in (expired_1, expired_2):
            pleo.add(company, grant(emu, company, now=start, age=2 * LIFETIME))
        # A session of its own, due 5 s after the integration's used grants.
        plain = PleoSession(
            other.client_id, other.client_secret, store=MemoryStore(),
            token_url=other.token_url, api_url=other.api_url, refresh_margin=MARGIN,
            tokens=TokenSet.from_response(other.issue_tokens(), now=start + 5), clock=clock,
        )  # fmt: skip
        assert settled(clock)
        emu.set_token_request_hook(held)
        try:
            for company in (expired_1, expired_2):
                callers.append(
                    threading.Thread(target=pleo.session(company).get, args=("/v2/employees",))
                )
                callers[-1].start()
                if company == expired_1:
                    assert held.wait_inside(1)  # it has the pool's only slot
            assert wait_until(lambda: pleo._gate.waiting == (1, 0))  # the other waits
            clock.advance(LIFETIME - MARGIN + 1)  # both used grants are due
            assert wait_until(lambda: pleo._gate.waiting == (1, 2))  # on both workers
            clock.advance(5)  # the plain session's timer is due too
            refreshed = wait_until(lambda: other.counters.refresh_grants == 1, 10)
        finally:
            held.open()
            for thread in callers:
                thread.join(30)
        assert refreshed, "the plain session's timer waited for the integration's pool"
        assert settled(clock)
        plain.close()
    assert emu.counters.rejected_refreshes == 0
    assert other.counters.rejected_refreshes == 0
