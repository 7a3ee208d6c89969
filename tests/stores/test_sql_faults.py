"""SQLStore's faults on real databases: a server that is down or drops the
connection, a read-only database, a missing privilege, a missing table, a row
holding garbage, company strings that name no company, and SQL metacharacters
through every entry point."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from support.databases import dispose_engines, shared_engine, unique_name

from pleo_auth import Company, ConfigurationError, TokenSet, TokenStoreError
from pleo_auth.stores import SQLStore
from pleo_auth.testing import free_port, new_tokens
from pleo_auth.testing._family_contract import BAD_COMPANIES

A = Company("0b6e1a7c-55d2-4c1e-9a51-3f1d2c4b5a60")
B = Company("7f3c2d1e-0a9b-4c8d-8e7f-6a5b4c3d2e1f")
CLIENT = "client-sql-faults"


@pytest.fixture(scope="module", autouse=True)
def _engines() -> Iterator[None]:
    yield
    dispose_engines()


@pytest.fixture
def table(sql_url: str) -> str:
    name = unique_name("grants")
    SQLStore(shared_engine(sql_url), client_id=CLIENT, table=name).create_table()
    return name


def family_on(url_or_engine: Any, table: str = "pleo_auth_grants", **kwargs: Any) -> SQLStore:
    return SQLStore(url_or_engine, client_id=CLIENT, table=table, check_interval=0.0, **kwargs)


def every_call(family: SQLStore) -> dict[str, Callable[[], object]]:
    """Each entry point that talks to the database, by name."""
    store = family.for_company(A)
    tokens = new_tokens()

    def lock() -> None:
        with store.lock(timeout=0.5, lease=30.0):
            pass

    return {
        "load": store.load,
        "save": lambda: store.save(tokens),
        "clear": store.clear,
        "version": store.version,
        "lock": lock,
        "companies": family.companies,
        "remove": lambda: family.remove(A),
    }


# -- the server is down, or drops the connection ----------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://postgres@127.0.0.1:{port}/nowhere?connect_timeout=2",
        "mysql+pymysql://root@127.0.0.1:{port}/nowhere?connect_timeout=2",
    ],
    ids=["postgresql", "mariadb"],
)
def test_a_server_that_is_down_is_a_retryable_store_error_at_every_call(url: str) -> None:
    family = family_on(url.format(port=free_port()))
    try:
        for name, call in every_call(family).items():
            with pytest.raises(TokenStoreError) as raised:
                call()
            assert raised.value.retryable, name
            assert "cannot" in str(raised.value), name
    finally:
        family.close()


def _kill_connections(url: str, database: str) -> None:
    """End every connection of this test's database from the server's side."""
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            if admin.dialect.name == "postgresql":
                connection.execute(
                    sqlalchemy.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": database},
                )
            else:
                ids = connection.execute(
                    sqlalchemy.text(
                        "SELECT id FROM information_schema.processlist "
                        "WHERE db = :db AND id <> CONNECTION_ID()"
                    ),
                    {"db": database},
                ).scalars()
                for ident in list(ids):
                    connection.execute(sqlalchemy.text(f"KILL {int(ident)}"))
    finally:
        admin.dispose()


@pytest.mark.parametrize("server", ["postgres_url", "mariadb_url"])
def test_a_connection_dropped_by_the_server_is_a_retryable_error_then_the_store_recovers(
    server: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(server)
    engine = sqlalchemy.create_engine(url)  # the application's: no pre-ping
    try:
        table = unique_name("grants")
        family = family_on(engine, table)
        family.create_table()
        store = family.for_company(A)
        tokens = new_tokens()
        store.save(tokens)  # a pooled connection now exists
        _kill_connections(url, sqlalchemy.make_url(url).database or "")
        with pytest.raises(TokenStoreError) as raised:
            store.load()
        assert raised.value.retryable
        assert store.load() == tokens  # the pool replaced the dead connection
    finally:
        engine.dispose()


# -- read-only, privileges, a missing table ---------------------------------------------


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_a_read_only_postgresql_is_an_error_naming_the_table_and_privilege(
    sql_url: str, table: str
) -> None:
    url = sqlalchemy.make_url(sql_url).update_query_dict(
        {"options": "-c default_transaction_read_only=on"}
    )
    family = family_on(url, table)
    try:
        assert family.for_company(A).load() is None  # reading still works
        with pytest.raises(TokenStoreError) as raised:
            family.for_company(A).save(new_tokens())
        message = str(raised.value)
        assert "read-only" in message
        assert table in message
        assert "UPDATE" in message
        assert not raised.value.retryable
    finally:
        family.close()


def test_a_read_only_sqlite_file_is_an_error_naming_the_table(tmp_path: Path) -> None:
    path = tmp_path / "grants.sqlite3"
    writable = family_on(f"sqlite:///{path}")
    writable.create_table()
    writable.close()
    engine = sqlalchemy.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    )
    try:
        family = family_on(engine)
        with pytest.raises(TokenStoreError) as raised:
            family.for_company(A).save(new_tokens())
        assert "read-only" in str(raised.value)
        assert "pleo_auth_grants" in str(raised.value)
    finally:
        engine.dispose()


@pytest.fixture
def reader(sql_url: str, table: str) -> Iterator[str]:
    """A URL for a database user who may only SELECT from ``table``."""
    url = sqlalchemy.make_url(sql_url)
    name = unique_name("reader")
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    statements = {
        "postgresql": [
            f"CREATE ROLE {name} LOGIN",
            f"GRANT SELECT ON {table} TO {name}",
        ],
        "mysql": [
            f"CREATE USER '{name}'@'%'",
            f"CREATE USER '{name}'@'localhost'",
            f"GRANT SELECT ON {url.database}.{table} TO '{name}'@'%'",
            f"GRANT SELECT ON {url.database}.{table} TO '{name}'@'localhost'",
        ],
    }[admin.dialect.name]
    with admin.connect() as connection:
        for statement in statements:
            connection.execute(sqlalchemy.text(statement))
    try:
        yield url.set(username=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            if admin.dialect.name == "postgresql":
                connection.execute(sqlalchemy.text(f"REVOKE ALL ON {table} FROM {name}"))
                connection.execute(sqlalchemy.text(f"DROP ROLE {name}"))
            else:
                for host in ("%", "localhost"):
                    connection.execute(sqlalchemy.text(f"DROP USER '{name}'@'{host}'"))
        admin.dispose()


@pytest.mark.parametrize("sql_url", ["postgresql", "mariadb"], indirect=True)
def test_a_missing_privilege_is_an_error_naming_the_table_and_the_privilege(
    reader: str, table: str
) -> None:
    family = family_on(reader, table)
    try:
        assert family.for_company(A).load() is None
        for call, privilege in (
            (lambda: family.for_company(A).save(new_tokens()), "UPDATE"),
            (family.for_company(A).clear, "UPDATE"),
        ):
            with pytest.raises(TokenStoreError) as raised:
                call()
            message = str(raised.value)
            assert f"refused {privilege} on table {table}" in message
            assert "grant SELECT, INSERT and UPDATE" in message
    finally:
        family.close()


def test_a_missing_table_is_an_error_naming_create_table_and_alembic(sql_url: str) -> None:
    family = family_on(shared_engine(sql_url), unique_name("absent"))
    for name, call in every_call(family).items():
        with pytest.raises(TokenStoreError) as raised:
            call()
        message = str(raised.value)
        assert "does not exist" in message, name
        assert "create_table()" in message, name
        assert "Alembic" in message, name
        assert family.table_name in message, name


# -- garbage in a row -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        "not json at all {secret}",
        '{{"access_token": "{secret}"}}',
        '["{secret}"]',
        "",
    ],
)
def test_a_row_holding_garbage_is_an_error_naming_table_and_company_never_the_content(
    sql_url: str, table: str, content: str
) -> None:
    family = family_on(shared_engine(sql_url), table)
    secret = "garbage-" + secrets.token_hex(12)
    with family.engine.begin() as connection:
        connection.execute(
            sqlalchemy.insert(family.table).values(
                client_id=CLIENT,
                company=A.id,
                tokens=content.format(secret=secret),
                fence="0" * 64,
                epoch="e",
                version=1,
            )
        )
    with pytest.raises(TokenStoreError) as raised:
        family.for_company(A).load()
    message = str(raised.value)
    assert table in message
    assert A.id in message
    assert secret not in message
    assert secret not in repr(raised.value)
    # A new login replaces it.
    fresh = new_tokens()
    family.for_company(A).save(fresh)
    assert family.for_company(A).load() == fresh


# -- company strings, and SQL metacharacters --------------------------------------------


class Statements:
    """Every statement an engine runs (SQLAlchemy's own event)."""

    def __init__(self, engine: sqlalchemy.Engine):
        self.seen: list[tuple[str, Any]] = []
        self._engine = engine
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        self.seen.append((statement, parameters))

    def close(self) -> None:
        sqlalchemy.event.remove(self._engine, "before_cursor_execute", self._record)


@pytest.fixture
def statements(sql_url: str) -> Iterator[Statements]:
    recorder = Statements(shared_engine(sql_url))
    yield recorder
    recorder.close()


@pytest.mark.parametrize("bad", BAD_COMPANIES, ids=repr)
def test_a_company_string_that_names_no_company_is_refused_before_any_sql(
    sql_url: str, table: str, statements: Statements, bad: object
) -> None:
    family = family_on(shared_engine(sql_url), table)
    statements.seen.clear()
    for call in (family.store, family.for_company, family.remove):
        with pytest.raises(ConfigurationError):
            call(bad)  # type: ignore[arg-type]
    assert statements.seen == []


EVIL = "x'); DROP TABLE {table}; -- \" ` \\ % _ ; SELECT * FROM pg_user; /*"


def test_sql_metacharacters_through_every_entry_point_are_data_never_sql(
    sql_url: str, table: str, statements: Statements
) -> None:
    evil = EVIL.format(table=table)
    bystander = family_on(shared_engine(sql_url), table)
    kept = new_tokens()
    bystander.for_company(B).save(kept)
    family = SQLStore(shared_engine(sql_url), client_id=evil, table=table, check_interval=0.0)
    store = family.for_company(A.urn)
    tokens = TokenSet(
        access_token=f"at_{evil}",
        refresh_token=f"rt_{evil}",
        expires_at=2_000_000_000.0,
        scope=evil,
        issued_at=1_999_999_000.0,
    )
    statements.seen.clear()
    with store.lock(timeout=5.0, lease=30.0):
        assert store.version() is None  # the row the lock made holds nothing yet
        store.save(tokens)
        assert store.version() is not None
    assert store.load() == tokens
    store.save(new_tokens("after"), replaces=tokens)
    store.clear(only=tokens)  # not the stored pair: a no-op
    assert family.companies() == [A]
    family.remove(A)
    assert family.companies() == []
    # Every value travelled as a parameter: no statement's text holds any of it.
    assert statements.seen
    for statement, _parameters in statements.seen:
        assert "DROP" not in statement.upper()
        assert "pg_user" not in statement
    # The table and the other client's grant are intact.
    assert bystander.for_company(B).load() == kept
    assert bystander.companies() == [B]
