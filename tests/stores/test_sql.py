"""SQLStore against real PostgreSQL, MariaDB and a SQLite file: the store contract
(over one company, through ``for_company``), the family contract, and what the
SQL store adds: the row, the version cache, the lease."""

from __future__ import annotations

import functools
import secrets
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import sqlalchemy
from support.databases import dispose_engines, shared_engine, unique_name
from support.session_helpers import MakeSession

from pleo_auth import Company, ConfigurationError, TokenSet, TokenStoreError
from pleo_auth.stores import SQLStore
from pleo_auth.stores.sql import grants_table
from pleo_auth.testing import (
    Emulator,
    FakeClock,
    MakeFamily,
    MakeStore,
    TokenStoreContract,
    TokenStoreFamilyContract,
    new_tokens,
)

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
B = Company("7f3c2d1e-0a9b-4c8d-8e7f-6a5b4c3d2e1f")
CLIENT = "client-sql-tests"


def sql_family(url: str, table: str, check_interval: float = 0.0, **kwargs: object) -> SQLStore:
    """A handle on the grants in ``table`` (importable, so picklable in a partial)."""
    return SQLStore(
        shared_engine(url),
        client_id=CLIENT,
        table=table,
        check_interval=check_interval,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module", autouse=True)
def _engines() -> Iterator[None]:
    yield
    dispose_engines()


@pytest.fixture
def table(sql_url: str) -> str:
    """A grants table of the test's own, created for it."""
    name = unique_name("grants")
    sql_family(sql_url, name).create_table()
    return name


@pytest.fixture
def family(sql_url: str, table: str) -> SQLStore:
    return sql_family(sql_url, table)


class TestSQLStoreFamilyContract(TokenStoreFamilyContract):
    """The family contract, and the store contract over company A, on each database.
    Handles re-read the version at every call (``check_interval=0``)."""

    rounds_per_process = 10

    @pytest.fixture
    def make_family(self, sql_url: str, table: str) -> MakeFamily:
        return functools.partial(sql_family, sql_url, table)


class TestSQLGrantStoreContract(TokenStoreContract):
    """The store contract over a plain store, as a PleoSession gets it (``for_company``)."""

    @pytest.fixture
    def make_store(self, sql_url: str, table: str) -> MakeStore:
        return lambda: sql_family(sql_url, table).for_company(A.urn)


# -- the row ---------------------------------------------------------------------------------


def test_a_grant_is_one_row_keyed_by_client_id_and_company(
    sql_url: str, table: str, family: SQLStore
) -> None:
    family.for_company(A).save(new_tokens())
    t = family.table
    with family.engine.connect() as connection:
        rows = connection.execute(
            sqlalchemy.select(t.c.client_id, t.c.company, t.c.version, t.c.lease_owner)
        ).all()
    assert [tuple(row) for row in rows] == [(CLIENT, A.id, 1, None)]


def test_two_client_ids_keep_separate_grants_in_one_table(sql_url: str, table: str) -> None:
    ours, theirs = (
        sql_family(sql_url, table),
        SQLStore(
            shared_engine(sql_url), client_id="another-client", table=table, check_interval=0.0
        ),
    )
    kept = new_tokens()
    ours.store(A).save(kept)
    theirs.store(A).save(new_tokens())
    theirs.store(B).save(new_tokens())
    assert ours.store(A).load() == kept
    assert ours.companies() == [A]
    assert theirs.companies() == [A, B]


def test_grants_table_adds_the_public_table_to_an_applications_metadata() -> None:
    metadata = sqlalchemy.MetaData()
    table = grants_table(metadata, schema=None)
    assert metadata.tables["pleo_auth_grants"] is table
    assert [column.name for column in table.primary_key] == ["client_id", "company"]
    assert {column.name for column in table.columns} == {
        "client_id",
        "company",
        "tokens",
        "fence",
        "epoch",
        "version",
        "lease_owner",
        "lease_until",
    }


def test_create_table_is_idempotent(family: SQLStore) -> None:
    family.create_table()
    family.create_table()
    assert family.companies() == []


def test_a_fenced_save_refuses_after_a_clear(family: SQLStore) -> None:
    store = family.for_company(A)
    stored = new_tokens()
    store.save(stored)
    store.clear()
    with pytest.raises(TokenStoreError):
        store.save(new_tokens(), replaces=stored)
    assert store.load() is None


def test_a_clear_keeps_the_row_so_the_version_never_repeats(family: SQLStore) -> None:
    store = family.for_company(A)
    store.save(new_tokens())
    saved = store.version()
    store.clear()
    cleared = store.version()
    store.save(new_tokens())
    assert len({saved, cleared, store.version()}) == 3


# -- the version cache -------------------------------------------------------------------------


class CountingEngine:
    """Counts the SELECTs an engine runs (SQLAlchemy's own event, no mock)."""

    def __init__(self, engine: sqlalchemy.Engine):
        self.selects = 0
        #: SELECTs run on the thread that made the counter (the test's requests).
        self.selects_here = 0
        self._thread = threading.current_thread()
        self._engine = engine
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *args: object) -> None:
        statement = args[2]
        if isinstance(statement, str) and statement.lstrip().upper().startswith("SELECT"):
            self.selects += 1
            if threading.current_thread() is self._thread:
                self.selects_here += 1

    def close(self) -> None:
        sqlalchemy.event.remove(self._engine, "before_cursor_execute", self._count)


@pytest.fixture
def counted(sql_url: str) -> Iterator[CountingEngine]:
    counter = CountingEngine(shared_engine(sql_url))
    yield counter
    counter.close()


def test_versions_of_every_grant_in_use_are_checked_by_one_query_per_interval(
    sql_url: str, table: str, counted: CountingEngine
) -> None:
    clock = FakeClock()
    family = sql_family(sql_url, table, check_interval=1.0, clock=clock)
    companies = [Company(f"{n:08x}-0000-4000-8000-000000000000") for n in range(20)]
    stores = [family.store(company) for company in companies]
    for store in stores:
        store.save(new_tokens())
    counted.selects = 0
    for _ in range(50):
        for store in stores:
            store.version()
    assert counted.selects == 0, "a fresh cached version cost a query"
    clock.advance(1.0)
    for _ in range(50):
        for store in stores:
            store.version()
    assert counted.selects == 1, "one query checks every grant in use"


def test_a_rotation_elsewhere_is_seen_within_check_interval(sql_url: str, table: str) -> None:
    clock = FakeClock()
    watcher = sql_family(sql_url, table, check_interval=1.0, clock=clock).store(A)
    writer = sql_family(sql_url, table).store(A)
    writer.save(new_tokens())
    before = watcher.version()
    writer.save(new_tokens())
    clock.advance(0.5)
    assert watcher.version() == before  # cached: at most check_interval stale
    clock.advance(0.5)
    assert watcher.version() != before


def test_a_grant_without_tokens_is_asked_every_time(
    sql_url: str, table: str, counted: CountingEngine
) -> None:
    clock = FakeClock()
    watcher = sql_family(sql_url, table, check_interval=60.0, clock=clock).store(A)
    assert watcher.version() is None
    counted.selects = 0
    watcher.version()
    watcher.version()
    assert counted.selects == 2
    sql_family(sql_url, table).store(A).save(new_tokens())
    assert watcher.version() is not None  # a login elsewhere, seen at once


def test_taking_the_lock_forgets_the_cached_version(sql_url: str, table: str) -> None:
    clock = FakeClock()
    watcher = sql_family(sql_url, table, check_interval=60.0, clock=clock).store(A)
    writer = sql_family(sql_url, table).store(A)
    writer.save(new_tokens())
    before = watcher.version()
    writer.save(new_tokens())
    assert watcher.version() == before
    with watcher.lock(timeout=5.0, lease=30.0):
        assert watcher.version() != before


# -- the lease ------------------------------------------------------------------------------------


def _lease_row(family: SQLStore, company: Company) -> tuple[object, object]:
    t = family.table
    with family.engine.connect() as connection:
        row = connection.execute(
            sqlalchemy.select(t.c.lease_owner, t.c.lease_until - family._now).where(
                t.c.company == company.id
            )
        ).one()
    return row[0], row[1]


def test_the_lease_is_in_the_row_dated_by_the_database_and_cleared_on_release(
    family: SQLStore,
) -> None:
    store = family.for_company(A)
    with store.lock(timeout=5.0, lease=30.0) as lease:
        owner, left = _lease_row(family, A)
        assert isinstance(owner, str)
        assert len(owner) == 32
        assert isinstance(left, float)
        assert 0 < left <= family.terms.lease
        assert lease.deadline is not None
    assert _lease_row(family, A) == (None, None)


def test_the_lock_is_reentrant_in_a_thread_and_writes_under_its_lease(family: SQLStore) -> None:
    store = family.for_company(A)
    with store.lock(timeout=5.0, lease=30.0):
        owner, _ = _lease_row(family, A)
        with store.lock(timeout=0.1, lease=30.0):
            store.save(new_tokens())
        assert _lease_row(family, A)[0] == owner  # the inner block released nothing


def test_the_lock_and_its_reentry_say_until_when_the_lease_is_known_held(
    family: SQLStore,
) -> None:
    store = family.for_company(A)
    before = time.monotonic()
    with store.lock(timeout=5.0, lease=30.0) as outer:
        assert outer.held_until is not None
        lasts = family.terms.lease
        assert before + 0.9 * lasts <= outer.held_until() <= time.monotonic() + 0.9 * lasts
        with store.lock(timeout=0.1, lease=30.0) as inner:
            assert inner.held_until is not None
            assert inner.held_until() == outer.held_until()


@pytest.mark.slow
def test_a_holder_keeps_its_lease_past_the_row_lease_by_renewing_it(
    sql_url: str, table: str
) -> None:
    lease = 1.2
    family = sql_family(sql_url, table, lease=lease)
    store, rival = family.for_company(A), sql_family(sql_url, table, lease=lease).for_company(A)
    taken = threading.Event()
    with store.lock(timeout=5.0, lease=30.0):
        # Two row leases: the renewer must have renewed it, or the rival gets in.
        def contend() -> None:
            try:
                with rival.lock(timeout=2 * lease, lease=30.0):
                    taken.set()
            except TokenStoreError:
                pass

        thread = threading.Thread(target=contend)
        thread.start()
        thread.join(30)
        assert not taken.is_set()
        store.save(new_tokens())  # still ours: the fenced save matches our owner


def test_a_save_under_a_lease_taken_over_is_refused(sql_url: str, table: str) -> None:
    family = sql_family(sql_url, table)
    store = family.for_company(A)
    stored = new_tokens()
    store.save(stored)
    with store.lock(timeout=5.0, lease=30.0):
        t = family.table
        with family.engine.begin() as connection:  # another owner takes the row's lease
            connection.execute(
                sqlalchemy.update(t).where(t.c.company == A.id).values(lease_owner="f" * 32)
            )
        with pytest.raises(TokenStoreError, match="taken over"):
            store.save(new_tokens(), replaces=stored)
    assert store.load() == stored


# -- arguments -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"table": "grants; DROP TABLE x"},
        {"table": "1grants"},
        {"table": ""},
        {"schema": 'public"; --'},
        {"lease": 0},
        {"lease": -1.0},
        {"lease": float("nan")},
        {"lease": 301},
        {"check_interval": -1},
        {"client_id": ""},
    ],
    ids=repr,
)
def test_bad_arguments_are_configuration_errors(sqlite_url: str, kwargs: dict[str, object]) -> None:
    arguments: dict[str, object] = {"client_id": CLIENT, **kwargs}
    with pytest.raises(ConfigurationError):
        SQLStore(sqlite_url, **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_database_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match="SQLite file"):
        SQLStore(url, client_id=CLIENT)


def test_a_non_engine_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="Engine or a database URL"):
        SQLStore(42, client_id=CLIENT)  # type: ignore[arg-type]


def test_describe_key_and_repr_never_show_a_password(postgres_url: str) -> None:
    password = "pw-" + secrets.token_hex(6)
    url = postgres_url.replace("postgres@", f"postgres:{password}@")
    family = SQLStore(url, client_id=CLIENT)
    try:
        store = family.for_company(A)
        for text in (repr(family), family.describe(), repr(store), str(store.key)):
            assert password not in text
    finally:
        family.close()


# -- requests ---------------------------------------------------------------------------------


def test_requests_cost_no_query_while_the_grants_version_is_fresh(
    sql_url: str, table: str, counted: CountingEngine, emulator: Emulator, make_session: MakeSession
) -> None:
    store = sql_family(sql_url, table, check_interval=3600.0).for_company(A)
    store.save(TokenSet.from_response(emulator.issue_tokens(company=A)))
    session = make_session(emulator, store)
    assert session.get("/v2/employees").status_code == 200  # loads the grant
    counted.selects_here = 0
    for _ in range(200):
        assert session.get("/v2/employees").status_code == 200
    # On the requests' thread: the refresh timer reads the grant once when it first
    # runs (a warm-up, per grant and process, not per request).
    assert counted.selects_here == 0
    assert emulator.counters.refresh_grants == 0


def test_a_rotation_the_cached_version_has_not_seen_costs_one_refused_request_never_a_refresh(
    sql_url: str, table: str, emulator: Emulator, make_session: MakeSession
) -> None:
    """The staleness check_interval allows is safe: the stale access token is refused
    with 401, and the session replays the request with the stored pair."""
    first = TokenSet.from_response(emulator.issue_tokens(company=A))
    stale = sql_family(sql_url, table, check_interval=3600.0).for_company(A)
    stale.save(first)
    session = make_session(emulator, stale)
    assert session.get("/v2/employees").status_code == 200
    other_process = sql_family(sql_url, table).for_company(A)
    reply = requests.post(
        emulator.token_url,
        data={"grant_type": "refresh_token", "refresh_token": first.refresh_token},
        auth=(emulator.client_id, emulator.client_secret or ""),
        timeout=10,
    )
    rotated = TokenSet.from_response(reply.json())
    other_process.save(rotated.succeeding(first), replaces=first)
    assert session.get("/v2/employees").status_code == 200  # 401, reload, replay
    counters = emulator.counters
    assert counters.unauthorized == 1
    assert counters.refresh_grants == 1  # the other process's, none here
    assert counters.rejected_refreshes == 0
    assert counters.reuse_detections == 0
