"""A company whose refresh lock is held elsewhere never holds a slot of the
refresh pool while it waits for that lock.

Found by review: every refresh took its slot of the pool *before* the store's
lock, and kept it while it waited for the lock, up to the coordinator's lock
timeout (about 100 s by default). The lock of a company is held elsewhere
whenever another process or host refreshes it, is slow to, or died holding a
lease. ``max_concurrent_refreshes`` such companies (4 by default) then took every
slot, and every other company's request that needed a refresh waited behind them,
though the token endpoint was idle. Now a request's refresh takes its slot under
the lock, just for its token request.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from support.integration_helpers import grant, integration, new_companies, wait_until

from pleo_auth import Company, FileStore
from pleo_auth.testing import Emulator

SLOTS = 4
BOUND = 10.0  # seconds; only a starved request gets near it


def test_companies_whose_locks_are_held_elsewhere_never_starve_another_companys_refresh(
    emulator: Emulator, tmp_path: Path
) -> None:
    *locked, free = new_companies(SLOTS + 1)
    family = FileStore.family(tmp_path / "grants")
    release = threading.Event()
    holding = threading.Barrier(SLOTS + 1)

    def hold_elsewhere(company: str) -> None:
        # As another process refreshing this company (or one that is stuck) would.
        with family.store(company).lock(timeout=10, lease=60):
            holding.wait(BOUND)
            release.wait(3 * BOUND)

    with integration(emulator, family, max_concurrent_refreshes=SLOTS) as pleo:
        for company in [*locked, free]:
            pleo.add(company, grant(emulator, company, now=time.time(), age=7200))  # expired
        holders = [threading.Thread(target=hold_elsewhere, args=(c,)) for c in locked]
        for thread in holders:
            thread.start()
        holding.wait(BOUND)
        callers = [
            threading.Thread(target=lambda c=c: pleo.session(c).get("/v2/employees"))
            for c in locked
        ]
        for thread in callers:
            thread.start()
        try:
            # Each locked company's request refreshes, waiting for its lock: holding no slot.
            def refreshing(company: str) -> bool:
                grant = pleo._grants.get(Company(company))
                return grant is not None and grant.coordinator._busy == "refresh"

            assert wait_until(lambda: all(map(refreshing, locked)), BOUND)
            assert pleo._gate._busy == 0
            statuses: list[int] = []
            other = threading.Thread(
                target=lambda: statuses.append(pleo.session(free).get("/v2/employees").status_code)
            )
            other.start()
            other.join(BOUND)
            served_while_locked = not other.is_alive()
            waiting = pleo._gate.waiting  # (requests, proactive) waiting for a slot
        finally:
            release.set()
            for thread in [*holders, *callers]:
                thread.join(3 * BOUND)
        other.join(3 * BOUND)
        assert served_while_locked, f"the free company's refresh waits for a slot: {waiting}"
    assert statuses == [200]
    assert emulator.counters.refresh_grants == SLOTS + 1
    assert emulator.counters.rejected_refreshes == 0
