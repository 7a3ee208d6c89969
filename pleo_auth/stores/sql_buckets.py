"""The rate limit's GCRA bucket (:mod:`pleo_auth.stores.buckets`) in the database
of a :class:`~pleo_auth.stores.sql.SQLStore`: one row of a small table, shared
by every host that shares the database.

The table, ``pleo_auth_rate_limits`` in the grants table's schema, is created on
first use if missing (``CREATE TABLE IF NOT EXISTS``); with Alembic, add
:func:`rate_limits_table` to your metadata instead. Each take is one transaction
that locks the row (``SELECT ... FOR UPDATE`` on PostgreSQL and MariaDB/MySQL;
SQLite's write lock, taken first), dated by the database's clock.

Imported only with SQLAlchemy installed (the ``pleo-auth[sql]`` extra).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

import sqlalchemy
import sqlalchemy.exc

from ._sql import check_name, database_now, kind_of
from .buckets import Bucket, BucketUnavailable, gcra

if TYPE_CHECKING:
    from .sql import SQLStore

__all__ = ["RATE_LIMITS_TABLE", "SQLBucket", "rate_limits_table"]

#: The rate-limit table's name.
RATE_LIMITS_TABLE = "pleo_auth_rate_limits"

#: Attempts when two processes make a bucket's row at once, or conflict.
_ATTEMPTS = 5


def rate_limits_table(
    metadata: sqlalchemy.MetaData, *, schema: str | None = None
) -> sqlalchemy.Table:
    """The rate-limit table, added to ``metadata``: ``name`` (the bucket, a digest
    of the API URL, client id and, per company, the company) and ``tat`` (its
    GCRA time, in seconds since 1970 on the database's clock).

    Raises:
        ConfigurationError: ``schema`` is not a plain identifier.
    """
    return sqlalchemy.Table(
        RATE_LIMITS_TABLE,
        metadata,
        sqlalchemy.Column("name", sqlalchemy.String(64), primary_key=True),
        sqlalchemy.Column("tat", sqlalchemy.Double, nullable=False),
        schema=None if schema is None else check_name("schema", schema),
        comment="pleo-auth: Pleo API rate limit buckets",
    )


class SQLBucket(Bucket):
    """A bucket in a row of :data:`RATE_LIMITS_TABLE`, beside the family's grants."""

    def __init__(self, family: SQLStore, name: str):
        self.name = name
        self._engine = family.engine
        self._dialect = self._engine.dialect.name
        self._now = database_now(self._dialect)
        self._table = rate_limits_table(sqlalchemy.MetaData(), schema=family.table.schema)
        self._where = family.describe()
        self._created = False

    def take(self, wanted: int, interval: float, tolerance: float) -> tuple[int, float]:
        for attempt in range(_ATTEMPTS):
            try:
                if not self._created:
                    self._create()
                result = self._take(wanted, interval, tolerance)
            except sqlalchemy.exc.SQLAlchemyError as exc:
                # A deadlock, a lock wait, a busy SQLite file: try again at once.
                if kind_of(exc) == "conflict" and attempt < _ATTEMPTS - 1:
                    continue
                # Never str(exc): SQLAlchemy's message repeats the statement.
                raise BucketUnavailable(
                    f"rate-limit row in {self._where} failed ({type(exc).__name__}: {kind_of(exc)})"
                ) from None
            if result is not None:
                return result
        raise BucketUnavailable(f"rate-limit row in {self._where}: could not be made")

    def _create(self) -> None:
        """The table, if missing; another process making it at the same moment
        (CREATE TABLE's check is not atomic) is as good."""
        try:
            with self._engine.begin() as connection:
                self._table.create(connection, checkfirst=True)
        except sqlalchemy.exc.SQLAlchemyError:
            with self._engine.connect() as connection:
                table = self._table
                if not sqlalchemy.inspect(connection).has_table(table.name, table.schema):
                    raise
        self._created = True

    def _take(self, wanted: int, interval: float, tolerance: float) -> tuple[int, float] | None:
        t = self._table
        row = t.c.name == self.name
        with self._engine.begin() as connection:
            if self._dialect == "sqlite":
                # Take the database's write lock before reading, as FOR UPDATE would.
                connection.execute(sqlalchemy.update(t).where(row).values(tat=t.c.tat))
            found = connection.execute(
                sqlalchemy.select(t.c.tat, self._now).where(row).with_for_update()
            ).first()
            if found is None:
                now = float(connection.execute(sqlalchemy.select(self._now)).scalar_one())
                granted, wait, tat = gcra(0.0, now, wanted, interval, tolerance)
                try:
                    with connection.begin_nested():
                        connection.execute(sqlalchemy.insert(t).values(name=self.name, tat=tat))
                except sqlalchemy.exc.IntegrityError:
                    return None  # another process made it first: try again
                return granted, wait
            granted, wait, tat = gcra(float(found[0]), float(found[1]), wanted, interval, tolerance)
            if granted:
                connection.execute(sqlalchemy.update(t).where(row).values(tat=tat))
        return granted, wait

    def identity(self) -> Hashable:
        return ("sql", str(self._engine.url), self._table.fullname, self.name)

    def describe(self) -> str:
        return f"row {self.name!r} of {self._table.fullname} in {self._where}"
