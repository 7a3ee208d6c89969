"""SQLStore's renewer keeps a stuck holder's row lease only for the time it asked
for: a holder that never lets go (alive, but deadlocked) holds the others up that
time and one row lease more at most, never for ever."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from support.databases import dispose_engines, shared_engine, unique_name

from pleo_auth import Company
from pleo_auth.stores import SQLStore

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
CLIENT = "client-sql-stuck-holder"
LEASE = 1.0


@pytest.fixture(scope="module", autouse=True)
def _engines() -> Iterator[None]:
    yield
    dispose_engines()


@pytest.mark.slow
def test_a_stuck_holder_is_renewed_only_for_the_time_it_asked_for(sql_url: str) -> None:
    table = unique_name("grants")
    engine = shared_engine(sql_url)
    stuck = SQLStore(engine, client_id=CLIENT, table=table, lease=LEASE)
    stuck.create_table()
    other = SQLStore(engine, client_id=CLIENT, table=table, lease=LEASE)
    asked = 2.5 * LEASE
    held = stuck.for_company(A).lock(timeout=5.0, lease=asked)
    started = time.monotonic()
    held.__enter__()  # and never let go, as a deadlocked holder would not
    try:
        # Another thread's lock: this thread's own would re-enter the held lease.
        taken: list[float] = []

        def take() -> None:
            with other.for_company(A).lock(timeout=30.0, lease=1.0):
                taken.append(time.monotonic() - started)

        waiter = threading.Thread(target=take)
        waiter.start()
        waiter.join(60)
    finally:
        held.__exit__(None, None, None)
    assert len(taken) == 1
    print(f"\na holder stuck for good kept the row lease {taken[0]:.3f}s (it asked {asked}s)")
    # Without the bound the waiter would time out (30 s): the holder is renewed for
    # ever. With it, the lease ends one lease at most after the holder's time is up;
    # the rest is the waiter's pause (0.2 s at most) and a loaded machine's latency.
    assert taken[0] <= asked + LEASE + 5.0
