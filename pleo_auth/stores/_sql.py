"""What :class:`~pleo_auth.stores.sql.SQLStore` needs to know about each database:
its table, its clock, and what its errors mean.

Imported only with SQLAlchemy installed (the ``pleo-auth[sql]`` extra).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy
import sqlalchemy.exc

from ..errors import ConfigurationError, TokenStoreError

__all__ = [
    "DEFAULT_TABLE",
    "DatabaseError",
    "check_name",
    "database_now",
    "grants_table",
    "translate",
]

#: The table's name when none is given.
DEFAULT_TABLE = "pleo_auth_grants"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_name(what: str, name: object) -> str:
    """A table or schema name: letters, digits and ``_``, at most 63 characters,
    not starting with a digit (what every database takes unquoted).

    Raises:
        ConfigurationError: Anything else; the message never repeats it.
    """
    if type(name) is not str or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"the {what} name must be 1 to 63 letters, digits or '_', not starting with a digit"
        )
    return name


def grants_table(
    metadata: sqlalchemy.MetaData, name: str = DEFAULT_TABLE, *, schema: str | None = None
) -> sqlalchemy.Table:
    """The grants table of :class:`~pleo_auth.stores.sql.SQLStore`, added to ``metadata``.

    Pass your application's ``MetaData`` (``Base.metadata`` with the ORM) so that
    Alembic's autogenerate creates and migrates it with your own tables::

        from pleo_auth.stores.sql import grants_table
        grants_table(Base.metadata)

    Columns: ``client_id`` and ``company`` (the primary key); ``tokens`` (the JSON
    document, NULL once cleared) and ``fence`` (the SHA-256 of its refresh token);
    ``epoch`` and ``version`` (bumped by every write); ``lease_owner`` and
    ``lease_until`` (the refresh lock: who holds it, and until when, in seconds
    since 1970 on the database's clock).

    Raises:
        ConfigurationError: ``name`` or ``schema`` is not a plain identifier.
    """
    return sqlalchemy.Table(
        check_name("table", name),
        metadata,
        sqlalchemy.Column("client_id", sqlalchemy.String(255), primary_key=True),
        sqlalchemy.Column("company", sqlalchemy.String(36), primary_key=True),
        sqlalchemy.Column("tokens", sqlalchemy.Text, nullable=True),
        sqlalchemy.Column("fence", sqlalchemy.String(64), nullable=True),
        sqlalchemy.Column("epoch", sqlalchemy.String(32), nullable=False),
        sqlalchemy.Column("version", sqlalchemy.BigInteger, nullable=False),
        sqlalchemy.Column("lease_owner", sqlalchemy.String(64), nullable=True),
        sqlalchemy.Column("lease_until", sqlalchemy.Double, nullable=True),
        schema=None if schema is None else check_name("schema", schema),
        comment="pleo-auth: one OAuth grant per (client id, Pleo company)",
    )


def database_now(dialect: str) -> sqlalchemy.ColumnElement[float]:
    """The database's own time, in seconds since 1970, as an SQL expression.

    Leases are dated by the database, never by a host: hosts' clocks disagree,
    and the lease is compared where it lives.
    """
    if dialect == "postgresql":
        text = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"
    elif dialect in ("mysql", "mariadb"):
        text = "UNIX_TIMESTAMP(NOW(6))"
    elif dialect == "sqlite":
        text = "((julianday('now') - 2440587.5) * 86400.0)"
    else:
        raise ConfigurationError(
            f"SQLStore supports PostgreSQL, MySQL/MariaDB and SQLite, not {dialect}"
        )
    return sqlalchemy.literal_column(text, type_=sqlalchemy.Double)


# -- errors ------------------------------------------------------------------------------

# What each database answers for a missing table, a refused privilege, a read-only
# server, and a conflict worth trying again at once.
_PG_MISSING: set[object] = {"42P01", "3F000"}  # undefined table, undefined schema
_PG_PRIVILEGE: set[object] = {"42501"}
_PG_READ_ONLY: set[object] = {"25006"}
_PG_CONFLICT: set[object] = {"40001", "40P01", "55P03"}
_MY_MISSING: set[object] = {1146, 1049}  # no such table, no such database
_MY_PRIVILEGE: set[object] = {1142, 1143, 1044, 1227, 1370}
_MY_READ_ONLY: set[object] = {1290, 1792, 1036}
_MY_CONFLICT: set[object] = {1213, 1205}  # deadlock, lock wait timeout


def _codes(orig: BaseException | None) -> set[object]:
    """The error's SQLSTATE (psycopg; PyMySQL too, lately) and number (MySQL drivers)."""
    if orig is None:
        return set()
    codes: set[object] = set()
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is not None:
        codes.add(sqlstate)
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
    if args and isinstance(args[0], int):
        codes.add(args[0])
    return codes


def _first_line(orig: BaseException | None) -> str:
    """The driver's message, first line only: PostgreSQL's DETAIL lines may quote a
    row's values (tokens included); the first line never does."""
    if orig is None:
        return ""
    args: tuple[object, ...] = tuple(getattr(orig, "args", ()))
    text = str(args[1]) if len(args) > 1 and isinstance(args[0], int) else str(orig)
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:200]


def kind_of(exc: sqlalchemy.exc.SQLAlchemyError) -> str:
    """``missing``, ``privilege``, ``read-only``, ``conflict``, ``unreachable`` or ``other``."""
    if isinstance(exc, sqlalchemy.exc.TimeoutError | sqlalchemy.exc.DisconnectionError):
        return "unreachable"  # the pool had no connection to give, or lost it
    orig = getattr(exc, "orig", None)
    codes = _codes(orig)
    message = _first_line(orig).lower()
    if codes & (_PG_MISSING | _MY_MISSING) or message.startswith("no such table"):
        return "missing"
    if codes & (_PG_PRIVILEGE | _MY_PRIVILEGE):
        return "privilege"
    if codes & (_PG_READ_ONLY | _MY_READ_ONLY) or "readonly database" in message:
        return "read-only"
    if codes & (_PG_CONFLICT | _MY_CONFLICT) or "database is locked" in message:
        return "conflict"
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return "unreachable"
    if isinstance(exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
        return "unreachable"
    return "other"


class DatabaseError(TokenStoreError):
    """A :class:`~pleo_auth.TokenStoreError` from the database, with what kind of
    failure it was (:func:`kind_of`), so the lease can try a conflict again at once."""

    def __init__(self, message: str, *, kind: str, retryable: bool = False):
        super().__init__(message, retryable=retryable)
        self.kind = kind


def translate(
    exc: sqlalchemy.exc.SQLAlchemyError, *, action: str, privilege: str, table: str, where: str
) -> DatabaseError:
    """The :class:`~pleo_auth.TokenStoreError` for a failed statement.

    Never built from ``str(exc)``: SQLAlchemy's message repeats the statement's
    parameters, tokens included. Raise it ``from None``.

    Args:
        action: What was being done ("read the tokens").
        privilege: The privilege it needs on the table (SELECT, UPDATE, INSERT).
        table: The table's name, with its schema.
        where: The store, for the message.
    """
    kind = kind_of(exc)
    orig = getattr(exc, "orig", None)
    cause = type(orig if orig is not None else exc).__name__
    detail = _first_line(orig)
    said = f"{cause}: {detail}" if detail else cause
    failed = f"cannot {action} in {where}"
    if kind == "missing":
        return DatabaseError(
            f"{failed}: the table {table} does not exist ({said}). Create it with "
            "SQLStore.create_table(), or add pleo_auth.stores.sql.grants_table(metadata) "
            "to your Alembic migrations",
            kind=kind,
        )
    if kind == "privilege":
        return DatabaseError(
            f"{failed}: the database refused {privilege} on table {table} ({said}); grant "
            f"SELECT, INSERT and UPDATE on {table} to the application's database user",
            kind=kind,
        )
    if kind == "read-only":
        return DatabaseError(
            f"{failed}: the database is read-only ({said}), so {privilege} on table "
            f"{table} is refused; point the store at the primary, not a replica",
            kind=kind,
        )
    retryable = kind in ("unreachable", "conflict")
    return DatabaseError(f"{failed}: {said}", kind=kind, retryable=retryable)


def describe_url(url: sqlalchemy.URL) -> str:
    """The database a URL names, free of its password: ``postgresql 127.0.0.1:5432/app``."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return f"sqlite {url.database or ':memory:'}"
    host = url.host or "localhost"
    port = f":{url.port}" if url.port else ""
    return f"{backend} {host}{port}/{url.database or ''}"


def identity(url: sqlalchemy.URL) -> tuple[Any, ...]:
    """What tells two databases apart: not the user or password, which reach the
    same rows under other names."""
    return (url.get_backend_name(), url.host, url.port, url.database)
