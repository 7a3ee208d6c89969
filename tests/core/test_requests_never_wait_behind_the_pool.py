"""A request never waits for the refresh pool when its own token is fresh.

An adversarial review of the scheduler found that a proactive refresh marked its
coordinator busy *before* it queued for a slot of the refresh pool (RefreshGate),
and a proactive refresh yields to every request waiting for a slot. Meanwhile
every request of that company waited for the busy coordinator, so a request whose
token was fresh waited behind other companies' refreshes for as long as the pool
stayed full (in a 429 storm: without bound). Now the timer and the keep-alive
take their slot first, and only then make the coordinator busy.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import pytest
from support.integration_helpers import (
    HeldTokenRequests,
    grant,
    integration,
    new_companies,
    settled,
    wait_until,
)

from pleo_auth import MemoryStore
from pleo_auth._clock import FakeClock
from pleo_auth.testing import Emulator

LIFETIME = 100.0
MARGIN = 10.0


def test_a_request_with_a_fresh_token_never_waits_for_other_companies_refreshes(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The largest jitter share: the timer comes due 2.475 s before a request would.
    monkeypatch.setattr("pleo_auth._coordinator.random", types.SimpleNamespace(random=lambda: 0.99))
    used, other = new_companies(2)
    held = HeldTokenRequests()
    answered = threading.Event()
    statuses: list[Any] = []
    with (
        Emulator(access_token_lifetime=LIFETIME, clock=clock) as emu,
        integration(
            emu, MemoryStore.family(), clock=clock, max_concurrent_refreshes=1,
            refresh_margin=MARGIN,
        ) as pleo,
    ):  # fmt: skip
        for company in (used, other):
            pleo.add(company, grant(emu, company, now=clock.time(), age=200))
        session = pleo.session(used)
        assert session.get("/v2/employees").status_code == 200  # refreshed, and used
        issued = session.tokens
        assert issued is not None
        assert issued.issued_at == clock.time()
        emu.set_access_token_lifetime(100 * LIFETIME)
        clock.advance(87)  # not yet due: the timer at 87.525 s, a request at 90 s
        assert settled(clock)
        emu.set_token_request_hook(held)
        caller = threading.Thread(target=lambda: pleo.session(other).get("/v2/x"))
        caller.start()  # its refresh takes the pool's only slot, and is held there
        requester: threading.Thread | None = None
        try:
            assert held.wait_inside(1)
            clock.advance(2)  # 89 s: the used grant's timer is due; a request's is not
            assert wait_until(lambda: pleo._gate.waiting == (0, 1))  # the timer queues
            assert clock.time() < issued.expires_at - MARGIN

            def request() -> None:
                statuses.append(session.get("/v2/employees").status_code)
                answered.set()

            requester = threading.Thread(target=request)
            requester.start()
            # Its token is fresh (expires at 100 s, due at 90 s): nothing to wait for.
            fresh_request_answered = answered.wait(10)
        finally:
            held.open()
            caller.join(30)
            if requester is not None:
                requester.join(30)
        assert settled(clock)
        assert fresh_request_answered, "a request with a fresh token waited for the pool"
    assert statuses == [200]
