"""The rate limit's bucket in a SQLStore's database (PostgreSQL, MariaDB, SQLite):
shared by every store object, made once however many race to make it, and
shared by sessions over the family's grants."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import pytest

from pleo_auth import PleoSession, RateLimit, RateLimited, TokenSet
from pleo_auth.stores.buckets import bucket_for
from pleo_auth.stores.sql import SQLStore
from pleo_auth.stores.sql_buckets import SQLBucket
from pleo_auth.testing import Emulator

INTERVAL = 3600.0  # so long that no slot comes due during a test, however slow
TOLERANCE = 3 * INTERVAL  # three slots
COMPANY = "5b4c0d1e-2f3a-4b5c-8d6e-7f8091a2b3c4"


@pytest.fixture
def family(sql_url: str) -> Iterator[SQLStore]:
    store = SQLStore(sql_url, client_id="rate-client", table=f"g_{secrets.token_hex(4)}")
    store.create_table()
    yield store
    store.close()


def test_two_store_objects_share_one_bucket_row(family: SQLStore, sql_url: str) -> None:
    name = secrets.token_hex(8)
    other = SQLStore(sql_url, client_id="rate-client", table=str(family.table.name))
    try:
        first = bucket_for(family.for_company(COMPANY), name)
        second = bucket_for(other.for_company(COMPANY), name)
        assert isinstance(first, SQLBucket)
        assert isinstance(second, SQLBucket)
        assert first.take(2, INTERVAL, TOLERANCE) == (2, 0.0)
        assert second.take(5, INTERVAL, TOLERANCE) == (1, 0.0)
        granted, wait = first.take(1, INTERVAL, TOLERANCE)
        assert granted == 0
        assert 0 < wait <= INTERVAL
    finally:
        other.close()


def test_eight_threads_making_a_new_bucket_at_once_get_exactly_its_slots(
    family: SQLStore,
) -> None:
    name = secrets.token_hex(8)
    buckets = [SQLBucket(family, name) for _ in range(8)]
    barrier = threading.Barrier(len(buckets))
    granted: list[int] = []
    failures: list[BaseException] = []

    def take(bucket: SQLBucket) -> None:
        barrier.wait()
        try:
            granted.append(bucket.take(1, INTERVAL, TOLERANCE)[0])
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=take, args=(bucket,)) for bucket in buckets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert sorted(granted) == [0] * 5 + [1] * 3


def test_sessions_over_a_sql_family_share_one_budget(family: SQLStore) -> None:
    with Emulator() as emu:
        tokens = TokenSet.from_response(emu.issue_tokens(company=COMPANY))
        limit = RateLimit(1, burst=3, wait=0)  # two slots, then one a minute
        sessions = [
            PleoSession(
                emu.client_id,
                emu.client_secret,
                store=family.for_company(COMPANY),
                token_url=emu.token_url,
                api_url=emu.api_url,
                tokens=tokens,
                rate_limit=limit,
            )
            for _ in range(2)
        ]
        try:
            assert "pleo_auth_rate_limits" in repr(sessions[0]._limiter)
            for session in sessions:
                assert session.get("/v2/employees").status_code == 200
            for session in sessions:
                with pytest.raises(RateLimited):
                    session.get("/v2/employees")
        finally:
            for session in sessions:
                session.close()
        assert emu.counters.api_requests == 2
