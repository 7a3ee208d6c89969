"""Loss is not logout (issue 14, part 1): a store that lost its data without a
logout's tombstone is restored by a process holding the live pair, and never by
one a rotation behind.

Real parts: a private redis-server (``redis_url``), PostgreSQL (``postgres_url``),
the emulator over HTTP. Two "hosts" in one process are two coordinators over two
store objects with connections of their own (:class:`Host`), so that the test can
stop one between two reads and force the interleaving; they share nothing but the
Redis key, as two processes would. tests/hunt/test_store_loss_processes.py runs
real processes through the same events under load.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from pleo_auth import (
    FileStore,
    PleoSession,
    ReauthenticationRequired,
    TokenSet,
    TokenStore,
    events,
)
from pleo_auth.stores.base import Lease
from pleo_auth.stores.redis import RedisStore
from pleo_auth.testing import Emulator

API = "/v2/employees"


class Host(TokenStore):
    """Another host's view of a store: its own object, connections and coordinator
    (its :attr:`key` differs, so sessions over it share no coordinator with the
    other host's). :meth:`hold_next_load` stops its next load until released."""

    fenced = True

    def __init__(self, inner: TokenStore, name: str):
        self.inner = inner
        self.name = name
        self.restores = 0
        self._held: tuple[threading.Event, threading.Event] | None = None
        #: Set once lost() has answered True.
        self.found_lost = threading.Event()

    def hold_next_load(self) -> tuple[threading.Event, threading.Event]:
        """(set when the load is reached, set by the test to let it go on)."""
        reached, go_on = threading.Event(), threading.Event()
        self._held = (reached, go_on)
        return reached, go_on

    def load(self) -> TokenSet | None:
        held, self._held = self._held, None
        if held is not None:
            held[0].set()
            assert held[1].wait(30), "the test never let the load go on"
        return self.inner.load()

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        self.inner.save(tokens, replaces=replaces)

    def clear(self, *, only: TokenSet | None = None) -> None:
        self.inner.clear(only=only)

    def lost(self) -> bool:
        lost = self.inner.lost()
        if lost:
            self.found_lost.set()
        return lost

    def restore(self, tokens: TokenSet) -> None:
        self.inner.restore(tokens)
        self.restores += 1

    def version(self) -> Hashable:
        return self.inner.version()

    def lock(self, *, timeout: float, lease: float) -> contextlib.AbstractContextManager[Lease]:
        return self.inner.lock(timeout=timeout, lease=lease)

    @property
    def key(self) -> Hashable:
        return ("host", self.name, self.inner.key)

    def describe(self) -> str:
        return f"{self.inner.describe()} (host {self.name})"


@pytest.fixture
def key() -> str:
    return f"test:loss:{uuid.uuid4().hex}"


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def session_over(store: TokenStore, emulator: Emulator, calls: list[str]) -> PleoSession:
    return PleoSession(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        api_url=emulator.api_url,
        on_reauthentication_required=lambda: calls.append("hook"),
    )


def redis_host(redis_url: str, key: str, name: str) -> Host:
    # check_interval=0: every request reads the version, so what a host saw is exact.
    return Host(RedisStore(redis_url, key=key, check_interval=0.0), name)


def stored(redis_url: str, key: str) -> TokenSet | None:
    return RedisStore(redis_url, key=key).load()


@pytest.mark.parametrize("loss", ["del", "flushdb"])
def test_a_redis_key_lost_under_a_live_session_is_restored_and_the_grant_goes_on(
    emulator: Emulator,
    redis_url: str,
    key: str,
    raw: redis.Redis,
    loss: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    host = redis_host(redis_url, key, "a")
    first = TokenSet.from_response(emulator.issue_tokens())
    host.save(first)
    seen: list[events.Event] = []
    unsubscribe = events.subscribe(seen.append)
    try:
        with session_over(host, emulator, calls) as session:
            assert session.get(API).status_code == 200
            assert raw.exists(key) == 1
            raw.delete(key) if loss == "del" else raw.flushdb()
            # The request (or the timer, if it looks first) finds the store lost.
            assert session.get(API).status_code == 200
            assert session.tokens == first
        assert events.flush(10)
    finally:
        unsubscribe()
    restored_events = [event for event in seen if event.kind == "store_restored"]
    assert len(restored_events) == 1
    assert getattr(restored_events[0], "store", None) == host.describe()
    after = stored(redis_url, key)
    assert after is not None
    assert after.refresh_token == first.refresh_token
    assert host.restores == 1
    assert calls == []
    counters = emulator.counters
    assert (counters.refresh_grants, counters.rejected_refreshes, counters.reuse_detections) == (
        0,
        0,
        0,
    )
    assert "lost its data" in caplog.text
    assert first.refresh_token not in caplog.text
    assert first.access_token not in caplog.text


def test_a_logout_leaves_a_tombstone_and_is_not_undone(
    emulator: Emulator, redis_url: str, key: str
) -> None:
    calls: list[str] = []
    host = redis_host(redis_url, key, "a")
    host.save(TokenSet.from_response(emulator.issue_tokens()))
    with session_over(host, emulator, calls) as session:
        assert session.get(API).status_code == 200
        RedisStore(redis_url, key=key).clear()  # `pleo-auth logout` in another process
        assert not host.lost()
        with pytest.raises(ReauthenticationRequired) as caught:
            session.get(API)
    assert "lost its data" not in str(caught.value)
    assert stored(redis_url, key) is None
    assert host.restores == 0
    assert calls == ["hook"]


def test_a_process_holding_no_pair_asks_for_a_login_saying_the_store_lost_its_data(
    emulator: Emulator, redis_url: str, key: str, raw: redis.Redis
) -> None:
    calls: list[str] = []
    RedisStore(redis_url, key=key).save(TokenSet.from_response(emulator.issue_tokens()))
    raw.delete(key)
    host = redis_host(redis_url, key, "late")
    with (
        session_over(host, emulator, calls) as session,
        pytest.raises(ReauthenticationRequired) as caught,
    ):
        session.get(API)
    assert "lost its data" in str(caught.value)
    assert host.restores == 0
    assert raw.exists(key) == 0


@pytest.mark.parametrize("loss", ["del", "flushdb"])
def test_a_process_a_rotation_behind_never_restores_its_pair(
    emulator: Emulator, redis_url: str, key: str, raw: redis.Redis, loss: str
) -> None:
    """Host A rotates; host B sees the new version, and the data vanishes before B
    loads it. B finds the store lost first, holding the spent pair: it must not
    restore it. A restores the current pair; B then adopts it."""
    calls: list[str] = []
    a, b = redis_host(redis_url, key, "a"), redis_host(redis_url, key, "b")
    first = TokenSet.from_response(emulator.issue_tokens())
    a.save(first)
    with session_over(a, emulator, calls) as at_a, session_over(b, emulator, calls) as at_b:
        assert at_a.get(API).status_code == 200
        assert at_b.get(API).status_code == 200
        assert at_b.tokens == first
        current = at_a.refresh()  # B has not looked since
        assert current.descends_from(first)

        reached, go_on = b.hold_next_load()
        outcome: list[Any] = []
        worker = threading.Thread(target=lambda: outcome.append(at_b.get(API).status_code))
        worker.start()
        assert reached.wait(30)  # B saw the new version and is about to load it
        raw.delete(key) if loss == "del" else raw.flushdb()
        go_on.set()
        assert b.found_lost.wait(30)  # B, holding the spent pair, found the store lost
        assert raw.exists(key) == 0, "B restored the spent pair"

        # A holds the current pair and restores it; B's request (its old access token
        # refused with 401 meanwhile, or not) then goes out with the restored pair.
        assert at_a.get(API).status_code == 200
        worker.join(30)
        assert not worker.is_alive()
        assert outcome == [200]
        assert a.restores == 1
        assert b.restores == 0
        restored = stored(redis_url, key)
        assert restored is not None
        assert restored.refresh_token == current.refresh_token
        assert at_b.tokens is not None
        assert at_b.tokens.refresh_token == current.refresh_token
    counters = emulator.counters
    assert counters.refresh_grants == 1  # A's refresh, and nothing else
    assert (counters.rejected_refreshes, counters.reuse_detections) == (0, 0)
    assert calls == []


def test_a_deleted_token_file_is_a_logout(emulator: Emulator, tmp_path: Path) -> None:
    """FileStore keeps no tombstone: deleting the file is how a person logs out by
    hand (docs/guide/stores.md), so it is never restored."""
    calls: list[str] = []
    store = FileStore(tmp_path / "tokens.json")
    store.save(TokenSet.from_response(emulator.issue_tokens()))
    with session_over(store, emulator, calls) as session:
        assert session.get(API).status_code == 200
        store.path.unlink()
        with pytest.raises(ReauthenticationRequired):
            session.get(API)
    assert not store.path.exists()
    assert calls == ["hook"]
    assert not store.lost()


# -- PostgreSQL ----------------------------------------------------------------------------


def test_a_truncated_sql_table_is_restored_by_the_holder_and_a_clear_is_not(
    emulator: Emulator, postgres_url: str
) -> None:
    import sqlalchemy
    from support.databases import unique_name

    from pleo_auth.stores import SQLStore

    table = unique_name("loss")
    family = SQLStore(postgres_url, client_id=emulator.client_id, table=table, check_interval=0.0)
    family.create_table()
    company = emulator.default_company
    host = Host(family.for_company(company), "a")
    first = TokenSet.from_response(emulator.issue_tokens())
    host.save(first)
    calls: list[str] = []
    try:
        with session_over(host, emulator, calls) as session:
            assert session.get(API).status_code == 200
            with family.engine.begin() as connection:
                connection.execute(sqlalchemy.text(f"TRUNCATE {table}"))
            # A request reads the version unless another thread (the timer) is reading
            # it: then it goes out with the cached one, and the next request looks.
            for _ in range(5):
                assert session.get(API).status_code == 200
                if host.restores:
                    break
            assert host.restores == 1
            back = family.for_company(company).load()
            assert back is not None
            assert back.refresh_token == first.refresh_token

            family.for_company(company).clear()  # a logout: the row stays, tokens NULL
            assert not host.lost()
            with pytest.raises(ReauthenticationRequired):
                session.get(API)
        assert host.restores == 1
        assert calls == ["hook"]
        counters = emulator.counters
        assert (counters.rejected_refreshes, counters.reuse_detections) == (0, 0)
    finally:
        with family.engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP TABLE {table}"))
        family.close()
