"""SQLStore across real processes: a lease holder SIGKILLed while it holds the lock,
and Integrations in several processes refreshing through one table, against the
emulator, on PostgreSQL, MariaDB and a SQLite file."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator

import pytest
import sqlalchemy
from support.databases import dispose_engines, shared_engine, unique_name
from support.integration_helpers import grant, new_companies, wait_until
from support.sql_workers import call_companies, hold_the_lease

from pleo_auth import Company
from pleo_auth.stores import SQLStore
from pleo_auth.stores.base import save_login
from pleo_auth.stores.lease import MAX_PAUSE
from pleo_auth.testing import Emulator

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
CLIENT = "client-sql-processes"
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture(scope="module", autouse=True)
def _engines() -> Iterator[None]:
    yield
    dispose_engines()


@pytest.fixture
def table(sql_url: str) -> str:
    name = unique_name("grants")
    SQLStore(shared_engine(sql_url), client_id=CLIENT, table=name).create_table()
    return name


def _lease_until(family: SQLStore) -> float:
    t = family.table
    with family.engine.connect() as connection:
        until = connection.execute(
            sqlalchemy.select(t.c.lease_until).where(t.c.company == A.id)
        ).scalar_one()
    return float(until)


@pytest.mark.slow
def test_a_holder_killed_while_holding_the_lease_delays_another_process_by_at_most_one_lease(
    sql_url: str, table: str
) -> None:
    lease = 1.0
    outbox = SPAWN.Queue()
    holder = SPAWN.Process(
        target=hold_the_lease, args=(sql_url, table, CLIENT, A.id, lease, outbox), daemon=True
    )
    holder.start()
    try:
        kind, _taken_at = outbox.get(timeout=60)
        assert kind == "holding"
        family = SQLStore(shared_engine(sql_url), client_id=CLIENT, table=table, lease=lease)
        first = _lease_until(family)
        # Kill it only once it has renewed its lease: a holder at work, not one just started.
        assert wait_until(lambda: _lease_until(family) > first, timeout=30.0)
        assert holder.is_alive()
        os.kill(holder.pid, signal.SIGKILL)  # type: ignore[arg-type]
        holder.join(30)
        killed_at = family.database_time()
        lease_until = _lease_until(family)
        assert lease_until > killed_at, "the holder's renewals kept its lease running"
        with family.for_company(A).lock(timeout=30.0, lease=30.0):
            # The take's own moment on the database's clock: its lease_until less a lease.
            taken_at = _lease_until(family) - lease
    finally:
        if holder.is_alive():
            holder.kill()
            holder.join(30)
    delay = taken_at - killed_at
    print(f"\n{sql_url.split(':')[0]}: taken over {delay:.3f}s after the kill (lease {lease}s)")
    # The dead holder's lease ran at most one lease past the kill (its last renewal
    # came before it), and nobody took it before it ran out.
    assert lease_until - killed_at <= lease
    assert taken_at >= lease_until - 0.001, "the lease was taken before it ran out"
    # The waiter noticed within one pause of its backoff, plus the statements' time
    # (generous: a loaded machine stretches the round trips, not the lease).
    assert taken_at - lease_until <= MAX_PAUSE + 1.0


@pytest.mark.slow
def test_integrations_in_three_processes_refresh_each_expired_grant_exactly_once(
    sql_url: str, table: str, emulator: Emulator
) -> None:
    companies = new_companies(4)
    family = SQLStore(shared_engine(sql_url), client_id=emulator.client_id, table=table)
    for company in companies:
        save_login(family.store(company), grant(emulator, company, now=time.time(), age=7200))
    client = {
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret or "",
        "token_url": emulator.token_url,
        "api_url": emulator.api_url,
    }
    processes, threads = 3, 4
    barrier, outbox = SPAWN.Barrier(processes), SPAWN.Queue()
    workers = [
        SPAWN.Process(
            target=call_companies,
            args=(sql_url, table, client, companies, threads, barrier, outbox),
            daemon=True,
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [outbox.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(60)
    assert [kind for kind, _ in results] == ["done"] * processes, results
    assert [result["errors"] for _, result in results] == [[]] * processes
    assert [result["statuses"] for _, result in results] == [[200] * 16] * processes
    counters = emulator.counters
    assert [emulator.counters_for(company).refresh_grants for company in companies] == [1] * 4
    assert counters.refresh_grants == 4
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
    for company in companies:
        stored = family.store(company).load()
        assert stored is not None
        assert emulator.is_current(stored.access_token, stored.refresh_token)
