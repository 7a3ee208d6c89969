"""Private databases for tests: one uniquely named database per test session on the
PostgreSQL and MariaDB servers of this machine, and SQLite files.

The servers are the ones ``.ci/run`` makes sure of:

* PostgreSQL on 127.0.0.1:5432, user ``postgres``, trust authentication;
* MariaDB on 127.0.0.1:3306, user ``root``, no password.

:func:`private_database` creates a database named ``pleo_auth_test_<pid>_<random>``
on one of them and drops it afterwards (with its connections, on PostgreSQL).
A server that does not answer skips the test, or fails it under CI (``CI`` set):
CI must never pass on tests that did not run. tests/conftest.py turns these into
the fixtures ``postgres_database``, ``mariadb_database`` (session-scoped),
``postgres_url``, ``mariadb_url``, ``sqlite_url`` and ``sql_url`` (the three, as
parameters). A test that needs a clean slate inside a shared database uses a table
or prefix of its own (:func:`unique_name`).

SQLAlchemy and the drivers (the ``sql`` extra) are imported when a database is
made, never by importing this module.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

__all__ = [
    "SERVERS",
    "Database",
    "Server",
    "dispose_engines",
    "private_database",
    "require_server",
    "server_answers",
    "shared_engine",
    "sqlite_url_for",
    "unique_name",
]


@attrs.frozen
class Server:
    """A database server the tests use, and how to reach it as its administrator."""

    kind: str  # "postgresql" or "mariadb"
    host: str
    port: int
    user: str
    #: The SQLAlchemy dialect and driver of its URLs.
    driver: str
    #: The database the administrator connects to, to create and drop others.
    admin_database: str

    def url(self, database: str) -> str:
        """A SQLAlchemy URL for ``database`` on this server (no password: trust/root)."""
        return f"{self.driver}://{self.user}@{self.host}:{self.port}/{database}"


SERVERS: dict[str, Server] = {
    "postgresql": Server(
        "postgresql", "127.0.0.1", 5432, "postgres", "postgresql+psycopg", "postgres"
    ),
    "mariadb": Server("mariadb", "127.0.0.1", 3306, "root", "mysql+pymysql", "mysql"),
}


@attrs.frozen
class Database:
    """A private database: where it is, and its SQLAlchemy URL.

    Attributes:
        server: The server it lives on.
        name: Its name, ``pleo_auth_test_<pid>_<random hex>``.
        url: A SQLAlchemy URL for it (``postgresql+psycopg://...`` or
            ``mysql+pymysql://...``).
    """

    server: Server
    name: str

    @property
    def url(self) -> str:
        return self.server.url(self.name)


def unique_name(prefix: str = "t") -> str:
    """A name no other test or process picks: ``<prefix>_<12 hex digits>``, safe
    as a table, schema or key prefix on every database."""
    return f"{prefix}_{secrets.token_hex(6)}"


def server_answers(server: Server, timeout: float = 2.0) -> bool:
    """Whether something accepts TCP connections on ``server``'s host and port."""
    try:
        with socket.create_connection((server.host, server.port), timeout=timeout):
            return True
    except OSError:
        return False


def require_server(server: Server) -> None:
    """Skip the test when ``server`` does not answer; under CI, fail it instead."""
    if server_answers(server):
        return
    message = (
        f"{server.kind} does not answer on {server.host}:{server.port}; "
        ".ci/run starts it (or install and start it yourself)"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _admin_engine(server: Server) -> Any:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(
        server.url(server.admin_database), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )


@contextlib.contextmanager
def private_database(kind: str) -> Iterator[Database]:
    """Create a uniquely named database on the ``kind`` server, and drop it afterwards.

    Args:
        kind: ``"postgresql"`` or ``"mariadb"``.

    Skips (fails under CI) when the server does not answer.
    """
    import sqlalchemy

    server = SERVERS[kind]
    require_server(server)
    name = f"pleo_auth_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = _admin_engine(server)
    try:
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        try:
            yield Database(server, name)
        finally:
            drop = f"DROP DATABASE IF EXISTS {name}"
            if kind == "postgresql":
                drop += " WITH (FORCE)"  # connections a test left open must not keep it
            with admin.connect() as connection:
                connection.execute(sqlalchemy.text(drop))
    finally:
        admin.dispose()


def sqlite_url_for(directory: Path, name: str = "grants.sqlite3") -> str:
    """A SQLAlchemy URL for a SQLite file in ``directory`` (created on first use)."""
    return f"sqlite:///{directory / name}"


_ENGINES: dict[str, Any] = {}


def shared_engine(url: str) -> Any:
    """One SQLAlchemy engine per URL in this process, so that the many handles a
    test makes share one connection pool instead of opening a pool each (the
    servers allow about a hundred connections, for every test run at once).
    :func:`dispose_engines` closes them."""
    engine = _ENGINES.get(url)
    if engine is None:
        import sqlalchemy

        engine = _ENGINES[url] = sqlalchemy.create_engine(url, pool_pre_ping=True)
    return engine


def dispose_engines() -> None:
    """Close every :func:`shared_engine`'s connections."""
    while _ENGINES:
        _url, engine = _ENGINES.popitem()
        engine.dispose()
