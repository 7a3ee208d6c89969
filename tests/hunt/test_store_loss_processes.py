"""Loss is not logout, under load (issue 14, part 1's must-show): two processes of
four threads call the emulator over HTTP on short tokens while the store loses its
data, and nobody is asked to log in.

* Redis, a private redis-server this test starts: the key deleted (what an
  eviction does), ``FLUSHALL``, and the server killed and started again on the same
  port without persistence (``--save '' --appendonly no``), one after the other.
* PostgreSQL: the grants table truncated, twice (soak run: spawning two processes that
  import SQLAlchemy and the driver costs most of its 20 to 35 s here).

Each asserts: 0 ReauthenticationRequired and 0 hook calls in any process; failures
only while Redis is down, each a retryable TokenStoreError, and none in a call
started after it answered again; 0 rejected refreshes and 0 reuse detections at the
emulator; and the grant alive at the end (the stored pair is the one Pleo made
last), having advanced once per refresh grant (its lineage holds every one).

6-second tokens: a process whose pair is due when it finds the store lost waits
1.5 s (pleo_auth._restore.RESTORE_GRACE) before restoring it, using its access
token meanwhile; with 3-second tokens that token can expire inside the wait after a
restart (half its life is left when due, less the restart), which would fail calls
after Redis is back for a reason of the test's making.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from support.loss_workers import Client, Where, work
from support.redis_servers import RedisServer, private_redis

from pleo_auth import RedisStore, TokenSet, TokenStore
from pleo_auth.testing import Emulator
from pleo_auth.tokens import LINEAGE_LIMIT

LIFETIME = 6.0
PROCESSES, THREADS = 2, 4
#: Seconds between the start and the first event, between events, and after the last.
PHASE = 3.5


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with private_redis("pleo-auth-loss-") as server:
        yield server


def run(
    emulator: Emulator, where: Where, events: list[Callable[[], tuple[float, float] | None]]
) -> tuple[list[dict[str, Any]], list[tuple[float, float]]]:
    """Start the workers, run each event PHASE seconds apart, stop PHASE seconds
    after the last; the workers' records, and the (down, back) times of outages."""
    client = Client(emulator.client_id, emulator.client_secret, emulator.token_url,
                    emulator.api_url)  # fmt: skip
    ctx = multiprocessing.get_context("spawn")
    outbox, go, stop = ctx.Queue(), ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=work, args=(client, where, THREADS, outbox, go, stop), daemon=True)
        for _ in range(PROCESSES)
    ]
    outages: list[tuple[float, float]] = []
    try:
        for proc in procs:
            proc.start()
        for _ in procs:
            kind, payload = outbox.get(timeout=120)
            assert kind == "ready", payload
        go.set()
        for event in events:
            time.sleep(PHASE)  # load between events: the time is the test's subject
            outage = event()
            if outage is not None:
                outages.append(outage)
        time.sleep(PHASE)
        stop.set()
        results = []
        for _ in procs:
            kind, payload = outbox.get(timeout=240)
            assert kind == "result", payload
            results.append(payload)
    finally:
        stop.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
    return results, outages


def assert_nobody_asked_to_log_in(
    results: list[dict[str, Any]], outages: list[tuple[float, float]]
) -> None:
    downtime = sum(back - down for down, back in outages)
    print(  # the figures docs/reliability.md quotes (pytest -s)
        f"calls {[r['calls'] for r in results]}, failures {[len(r['failures']) for r in results]}"
        f", outage {downtime:.2f}s"
    )
    seen = Counter(
        f"{name}: {message[:160]}" for r in results for _, name, _, message in r["failures"]
    )
    for result in results:
        assert result["calls"] > 0
        assert result["hooks"] == [], seen
        for started, name, retryable, message in result["failures"]:
            assert name == "TokenStoreError", (name, message)
            assert retryable, message
            during = [down for down, back in outages if down - 0.5 <= started <= back]
            assert during, f"a failure in a call started while the store answered: {message}"


def assert_grant_alive(emulator: Emulator, store: TokenStore) -> TokenSet:
    final = store.load()
    assert final is not None
    assert emulator.is_current(final.access_token, final.refresh_token)
    counters = emulator.counters
    assert (counters.rejected_refreshes, counters.reuse_detections) == (0, 0)
    # Every refresh grant advanced the chain the store holds: none was spent twice
    # or lost (the lineage keeps the last LINEAGE_LIMIT - 1, and the first).
    print(f"refresh grants {counters.refresh_grants}, lineage {len(final.lineage)}")
    assert counters.refresh_grants >= 3  # the grant rotated through the events
    if counters.refresh_grants < LINEAGE_LIMIT:
        assert len(final.lineage) == counters.refresh_grants
    return final


@pytest.mark.slow
def test_redis_evicted_flushed_and_restarted_empty_under_two_processes_asks_nobody_to_log_in(
    emulator: Emulator, redis_server: RedisServer
) -> None:
    emulator.set_access_token_lifetime(LIFETIME)
    key = f"test:loss:{uuid.uuid4().hex}"
    RedisStore(redis_server.url, key=key).save(TokenSet.from_response(emulator.issue_tokens()))

    def evict() -> None:
        with redis.Redis.from_url(redis_server.url) as raw:
            assert raw.delete(key) == 1

    def flushall() -> None:
        with redis.Redis.from_url(redis_server.url) as raw:
            assert raw.exists(key) == 1  # restored after the eviction
            raw.flushall()

    def restart() -> tuple[float, float]:
        with redis.Redis.from_url(redis_server.url) as raw:
            assert raw.exists(key) == 1  # restored after the flush
        down = time.time()
        redis_server.kill()
        redis_server.start()
        return down, time.time()

    results, outages = run(
        emulator, Where("redis", redis_server.url, key), [evict, flushall, restart]
    )
    assert_nobody_asked_to_log_in(results, outages)
    assert_grant_alive(emulator, RedisStore(redis_server.url, key=key))


@pytest.mark.soak  # ~30 s, most of it two processes importing SQLAlchemy; see the module
def test_soak_a_postgresql_table_truncated_under_two_processes_asks_nobody_to_log_in(
    emulator: Emulator, postgres_url: str
) -> None:
    import sqlalchemy
    from support.databases import unique_name

    from pleo_auth.stores import SQLStore

    emulator.set_access_token_lifetime(LIFETIME)
    table = unique_name("loss")
    family = SQLStore(postgres_url, client_id=emulator.client_id, table=table)
    family.create_table()
    company = emulator.default_company
    store = family.for_company(company)
    store.save(TokenSet.from_response(emulator.issue_tokens()))

    def truncate() -> None:
        with family.engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"TRUNCATE {table}"))

    try:
        where = Where("sql", postgres_url, table, company, emulator.client_id)
        results, outages = run(emulator, where, [truncate, truncate])
        assert_nobody_asked_to_log_in(results, outages)
        assert_grant_alive(emulator, store)
    finally:
        with family.engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP TABLE {table}"))
        family.close()
