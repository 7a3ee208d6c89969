"""Grants in the application's own database: :class:`SQLStore`, on SQLAlchemy 2 Core.

Needs the ``pleo-auth[sql]`` extra (SQLAlchemy, and psycopg 3 or PyMySQL for
PostgreSQL or MySQL/MariaDB; SQLite needs nothing more). SQLAlchemy is imported
only when this module is, so ``import pleo_auth`` never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import time
import weakref
from collections.abc import Hashable, Iterator
from typing import Any

from .._clock import Clock, as_clock
from ..company import Company
from ..errors import ConfigurationError, TokenStoreError
from ..tokens import TokenSet
from ._sql_spec import url_has_password
from .base import Lease, TokenStore, decode_tokens, encode_tokens
from .family import TokenStoreFamily
from .lease import HELD, RENEWER, LeaseTerms, check_requested, fence, new_owner, wait_for_lease

try:
    import sqlalchemy
    import sqlalchemy.exc
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ConfigurationError(
        "SQLStore needs SQLAlchemy 2: install it with `pip install 'pleo-auth[sql]'`"
    ) from exc

from ._sql import (
    DEFAULT_TABLE,
    DatabaseError,
    database_now,
    describe_url,
    grants_table,
    identity,
    translate,
)
from ._sql_restore import SQLRestoring
from .versions import Reading, Version, VersionCache, version_of

__all__ = ["DEFAULT_TABLE", "SQLGrantStore", "SQLStore", "grants_table"]

logger = logging.getLogger(__name__)

#: Companies asked for by name in one version check; with more in use, the check
#: reads every row of the client id instead (still one query).
_BATCH_BY_NAME = 500
#: Seconds a write outside ``lock`` waits for another holder's lease.
_WRITE_TIMEOUT = 60.0


# Families alive in this process, so that a forked child can replace their
# threading locks, which a parent thread may have held at the fork.
_INSTANCES: weakref.WeakSet[SQLStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for family in list(_INSTANCES):
        family.versions.reset_after_fork()
        # The parent's pooled connections are its own (a child's statements would mix
        # with its own on one socket): a new pool, theirs left open (SQLAlchemy's advice).
        family.engine.dispose(close=False)


os.register_at_fork(after_in_child=_after_fork_in_child)


class SQLStore(TokenStoreFamily):
    """Grants in one table of the application's own database, one row per
    (client id, company): PostgreSQL, MySQL/MariaDB or SQLite, through SQLAlchemy 2
    Core and the application's own engine and connection pool.

    Use it as an :class:`~pleo_auth.Integration`'s store, or take one company's
    :class:`~pleo_auth.TokenStore` for a :class:`~pleo_auth.PleoSession` with
    :meth:`for_company`::

        engine = sqlalchemy.create_engine("postgresql+psycopg://app@db/app")
        grants = SQLStore(engine, client_id=CLIENT_ID)
        grants.create_table()  # or grants_table(Base.metadata) in your migrations
        pleo = Integration(CLIENT_ID, CLIENT_SECRET, store=grants)

    **The client id.** Rows are keyed by the OAuth client id and the company, so
    several integrations (or staging and production clients) may share one table.
    The store is told the client id when it is built: give it the same one as the
    Integration or session it serves.

    **The lock is a lease in the row**, never a transaction held across the token
    request. A short transaction sets ``lease_owner`` (random, per acquisition)
    and ``lease_until`` (the database's clock plus ``lease`` seconds) where the
    lease is free or expired; the refresh runs with no transaction open; one
    thread per process renews the lease every ``lease / 3`` seconds while its
    holder works, and the release clears it. A holder killed mid-refresh keeps the
    others waiting at most one ``lease`` (10 s by default). Waiters poll with
    backoff and jitter (5 ms doubling to 200 ms). Nothing needs a session: no
    advisory lock, no temporary table, so PgBouncer's transaction mode works.

    **Fenced writes.** A save is one ``UPDATE`` that matches this owner's lease
    and, when it replaces tokens, the SHA-256 of their refresh token (``fence``);
    it bumps ``version``. A holder that lost its lease can never overwrite newer
    tokens: its save raises :class:`~pleo_auth.TokenStoreError`. A save or clear
    outside :meth:`~pleo_auth.TokenStore.lock` takes a lease for its own duration.

    **Cheap version.** :meth:`~pleo_auth.TokenStore.version` answers from a
    per-process cache, refreshed by one query for every grant this process has in
    use, at most once per ``check_interval`` (1 s by default). A rotation made by
    another process is therefore noticed within ``check_interval``; before that,
    a request with the stale access token is refused with 401 and replayed with
    the stored tokens, so staleness costs one request, never a refresh (pleo_auth
    never refreshes without reading the store under the lock). A grant without
    tokens is asked every time, so a login made elsewhere is seen at once.

    The tokens are not encrypted by pleo_auth: protect the database (TLS,
    encryption at rest, a user of its own).

    Args:
        engine_or_url: The application's ``sqlalchemy.Engine``, or a database URL
            (then the store makes an engine of its own, with ``pool_pre_ping``;
            for psycopg without prepared statements, for PgBouncer).
        client_id: The OAuth client id whose grants these are.
        table: The table's name.
        schema: Its schema (PostgreSQL) or database (MySQL), if not the default.
        lease: Seconds the row lease lasts past its last renewal (at most 300).
        check_interval: Seconds a cached version stays valid.
        clock: The sessions' clock, whose monotonic time dates the version cache
            and the lease deadlines. Defaults to the system clock.

    Attributes:
        table: The grants table, a ``sqlalchemy.Table`` (for queries and Alembic).
        engine: The engine the store uses.
        client_id: As given.

    Raises:
        ConfigurationError: An argument is invalid, the database is not PostgreSQL,
            MySQL/MariaDB or SQLite, or SQLAlchemy is not installed.

    Thread safety:
        Every method may be called from any thread, in any number of processes
        and hosts. Each statement borrows a connection from the engine's pool and
        returns it at once. A forked child gets a fresh renewer and never renews
        or releases a lease its parent holds, and the engine's pool is replaced in
        the child (``engine.dispose(close=False)``, as SQLAlchemy advises), so the
        child never uses a connection of its parent's.
    """

    def __init__(
        self,
        engine_or_url: sqlalchemy.Engine | str | sqlalchemy.URL,
        *,
        client_id: str,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        lease: float = 10.0,
        check_interval: float = 1.0,
        clock: Clock | None = None,
    ):
        from ..settings import check_client_id

        self.client_id = check_client_id(client_id)
        if isinstance(check_interval, bool) or not (
            isinstance(check_interval, int | float) and 0 <= check_interval < math.inf
        ):
            raise ConfigurationError("check_interval must be a finite number of seconds >= 0")
        self.check_interval = float(check_interval)
        self.terms = LeaseTerms(lease)
        self.table = grants_table(sqlalchemy.MetaData(), table, schema=schema)
        self._owns_engine = not isinstance(engine_or_url, sqlalchemy.Engine)
        self.engine = self._engine_for(engine_or_url)
        self._dialect = self.engine.dialect.name
        self._now = database_now(self._dialect)

        self._clock = as_clock(clock, owner="SQLStore")
        self._where = describe_url(self.engine.url)
        self._identity = identity(self.engine.url)
        self.versions = VersionCache(
            self._clock, self.check_interval, self._read_one, self._read_many
        )
        _INSTANCES.add(self)

    @staticmethod
    def _engine_for(engine_or_url: object) -> sqlalchemy.Engine:
        if isinstance(engine_or_url, sqlalchemy.Engine):
            return engine_or_url
        if not isinstance(engine_or_url, str | sqlalchemy.URL):
            raise ConfigurationError(
                "SQLStore needs a sqlalchemy.Engine or a database URL, "
                f"not {type(engine_or_url).__name__}"
            )
        try:
            url = sqlalchemy.make_url(engine_or_url)
        except (sqlalchemy.exc.ArgumentError, ValueError):
            raise ConfigurationError("SQLStore: the database URL cannot be parsed") from None
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            raise ConfigurationError(
                "SQLStore needs a SQLite file (sqlite:///path), not an in-memory database: "
                "each connection would see a database of its own"
            )
        connect_args: dict[str, Any] = {}
        if url.get_driver_name() == "psycopg":
            connect_args["prepare_threshold"] = None  # PgBouncer's transaction mode
        try:
            return sqlalchemy.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ImportError) as exc:
            raise ConfigurationError(
                f"SQLStore cannot open {describe_url(url)}: {type(exc).__name__}; install the "
                "driver (`pip install 'pleo-auth[sql]'`) and check the URL"
            ) from None

    # -- the family ---------------------------------------------------------------------

    def build_store(self, company: Company) -> SQLGrantStore:
        return SQLGrantStore(self, company)

    def for_company(self, company: Company | str) -> SQLGrantStore:
        """The :class:`~pleo_auth.TokenStore` of ``company``'s grant, for a
        :class:`~pleo_auth.PleoSession` (the same as :meth:`store`).

        Raises:
            ConfigurationError: ``company`` is not a company id or URN.
        """
        return self.build_store(Company(company))

    def companies(self) -> list[Company]:
        t = self.table
        query = (
            sqlalchemy.select(t.c.company)
            .where(t.c.client_id == self.client_id, t.c.tokens.is_not(None))
            .order_by(t.c.company)
        )
        with self._talking("list the companies", "SELECT") as connection:
            names = connection.execute(query).scalars().all()
        found: list[Company] = []
        for name in names:
            try:
                found.append(Company(str(name)))
            except ConfigurationError:
                logger.warning("%s has a row whose company is not a company id: skipped", self)
        return sorted(found)

    def create_table(self) -> None:
        """Create the grants table if it does not exist (``CREATE TABLE IF NOT EXISTS``).

        For applications without migrations of their own; with Alembic, add
        :func:`grants_table` to your metadata instead.

        Raises:
            TokenStoreError: The database refused (its message names the privilege).
        """
        with self._talking("create the table", "CREATE") as connection:
            self.table.create(connection, checkfirst=True)

    def database_time(self) -> float:
        """The database's clock, in seconds since 1970: what leases are dated by."""
        with self._talking("read the database's clock", "SELECT") as connection:
            return float(connection.execute(sqlalchemy.select(self._now)).scalar_one())

    def close(self) -> None:
        """Close the connection pool of an engine the store made from a URL; an
        engine you passed in is yours, and is left alone."""
        if self._owns_engine:
            self.engine.dispose()

    @property
    def table_name(self) -> str:
        """The table's name, with its schema."""
        return self.table.fullname

    def describe(self) -> str:
        return f"{self._where} table {self.table_name}, client {self.client_id!r}"

    @property
    def spec(self) -> str:
        """The family's ``--store`` spec; never with the password (give that in ``PLEO_STORE``)."""
        from ._sql_spec import sql_spec

        return f"family:{sql_spec(self)}"

    # -- statements ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _talking(self, action: str, privilege: str) -> Iterator[sqlalchemy.Connection]:
        """A connection in a transaction, committed and returned to the pool at the
        end; any database error as a TokenStoreError that never quotes a value."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise translate(
                exc,
                action=action,
                privilege=privilege,
                table=self.table_name,
                where=self.describe(),
            ) from None

    def _row(self, company: str) -> Any:
        t = self.table
        return (t.c.client_id == self.client_id) & (t.c.company == company)

    def _take(self, company: str, owner: str) -> float | None:
        """One attempt to take ``company``'s lease: None when taken, else the seconds
        left on the holder's lease."""
        t, now = self.table, self._now
        seconds = self.terms.lease
        take = (
            sqlalchemy.update(t)
            .where(self._row(company), t.c.lease_until.is_(None) | (t.c.lease_until <= now))
            .values(lease_owner=owner, lease_until=now + seconds)
        )
        try:
            with self._talking("take the refresh lock", "UPDATE") as connection:
                if connection.execute(take).rowcount == 1:
                    return None
            with self._talking("read the refresh lock", "SELECT") as connection:
                left = connection.execute(
                    sqlalchemy.select(t.c.lease_until - now).where(self._row(company))
                ).first()
        except DatabaseError as exc:
            if exc.kind != "conflict":
                raise
            return 0.0  # a deadlock, a lock wait, a busy SQLite file: try again
        if left is not None:
            return max(0.0, float(left[0] or 0.0))
        # No row yet (no tokens were ever saved): make it, holding the lease.
        insert = sqlalchemy.insert(t).values(
            client_id=self.client_id,
            company=company,
            tokens=None,
            fence=None,
            epoch=secrets.token_hex(8),
            version=0,
            lease_owner=owner,
            lease_until=now + seconds,
        )
        try:
            with self._talking("take the refresh lock", "INSERT") as connection:
                connection.execute(insert)
        except DatabaseError as exc:
            if exc.kind == "conflict" or self._exists(company):
                return 0.0  # another process made it first: try again
            raise
        return None

    def _exists(self, company: str) -> bool:
        t = self.table
        with self._talking("read the refresh lock", "SELECT") as connection:
            row = connection.execute(sqlalchemy.select(t.c.version).where(self._row(company)))
            return row.first() is not None

    def _renew(self, company: str, owner: str) -> bool:
        t = self.table
        renew = (
            sqlalchemy.update(t)
            .where(self._row(company), t.c.lease_owner == owner)
            .values(lease_until=self._now + self.terms.lease)
        )
        with self._talking("renew the refresh lock", "UPDATE") as connection:
            return bool(connection.execute(renew).rowcount == 1)

    def _release(self, company: str, owner: str) -> None:
        t = self.table
        release = (
            sqlalchemy.update(t)
            .where(self._row(company), t.c.lease_owner == owner)
            .values(lease_owner=None, lease_until=None)
        )
        try:
            with self._talking("release the refresh lock", "UPDATE") as connection:
                released = connection.execute(release).rowcount == 1
        except TokenStoreError as exc:
            # Never raise from here: the refresh may have succeeded, and its tokens
            # must reach the caller. The lease ends the lock anyway.
            logger.warning("%s; it expires within %.0fs", exc, self.terms.lease)
            return
        if not released:
            logger.warning(
                "the refresh lock of %s, company %s, was taken over before its release: "
                "its lease ran out under its holder",
                self.describe(),
                company,
            )

    def _write(
        self, company: str, owner: str, values: dict[str, Any], expected: str | None, action: str
    ) -> tuple[bool, Version | None, bool]:
        """One fenced UPDATE under ``owner``'s lease, and the version it left.

        Returns:
            Whether it matched, the row's version after it, and whether it holds tokens.
        """
        t = self.table
        condition = self._row(company) & (t.c.lease_owner == owner)
        if expected is not None:
            condition = condition & (t.c.fence == expected)
        write = sqlalchemy.update(t).where(condition).values(version=t.c.version + 1, **values)
        with self._talking(action, "UPDATE") as connection:
            matched = connection.execute(write).rowcount == 1
            row = connection.execute(
                sqlalchemy.select(t.c.epoch, t.c.version, t.c.fence).where(self._row(company))
            ).first()
        if row is None:
            return matched, None, False
        return matched, (str(row[0]), int(row[1])), row[2] is not None

    def _read(self, company: str) -> tuple[Any, Version | None]:
        t = self.table
        with self._talking("read the tokens", "SELECT") as connection:
            row = connection.execute(
                sqlalchemy.select(t.c.tokens, t.c.epoch, t.c.version).where(self._row(company))
            ).first()
        if row is None:
            return None, None
        return row[0], version_of(row[1], row[2])

    def _read_one(self, company: Hashable) -> Reading:
        t = self.table
        query = sqlalchemy.select(t.c.epoch, t.c.version, t.c.fence).where(self._row(str(company)))
        with self._talking("read the tokens' version", "SELECT") as connection:
            row = connection.execute(query).first()
        if row is None:
            return None, False
        return version_of(row[0], row[1]), row[2] is not None

    def _read_many(self, companies: list[Hashable]) -> dict[Hashable, Reading]:
        """One query for the versions of ``companies``: by name, or (for more than
        :data:`_BATCH_BY_NAME`) every row of the client id."""
        if not companies:
            return {}
        t = self.table
        query = sqlalchemy.select(t.c.company, t.c.epoch, t.c.version, t.c.fence).where(
            t.c.client_id == self.client_id
        )
        if len(companies) <= _BATCH_BY_NAME:
            query = query.where(t.c.company.in_([str(company) for company in companies]))
        with self._talking("read the tokens' versions", "SELECT") as connection:
            rows = connection.execute(query).all()
        return {str(row[0]): (version_of(row[1], row[2]), row[3] is not None) for row in rows}


class SQLGrantStore(SQLRestoring, TokenStore):
    """One company's grant in a :class:`SQLStore`: a plain
    :class:`~pleo_auth.TokenStore`, for a :class:`~pleo_auth.PleoSession` or an
    :class:`~pleo_auth.Integration`. Get it with :meth:`SQLStore.for_company` or
    :meth:`SQLStore.store`; it does no I/O until used.

    Thread safety:
        Every method may be called from any thread and process at once. The lock
        is re-entrant within a thread: a save or clear inside it writes under the
        lease the thread holds.
    """

    fenced = True

    def __init__(self, family: SQLStore, company: Company):
        self.family = family
        self.company = company
        self._id = company.id

    # -- the lock -------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        """Take the grant's row lease; renewed while held, released at the end.

        Raises:
            ConfigurationError: ``lease`` is not a positive number of seconds.
            TokenStoreError: Not taken within ``timeout`` (retryable), or the
                database failed.
        """
        requested = check_requested(lease)
        held = HELD.get(self.key)
        if held is not None:
            yield Lease(deadline=held.deadline, held_until=held.held_until)
            return
        with self._leased(timeout, requested) as granted:
            yield granted

    @contextlib.contextmanager
    def _leased(self, timeout: float, requested: float) -> Iterator[Lease]:
        family, company = self.family, self._id
        owner = new_owner()
        started: list[tuple[float, float]] = []  # the clock's time, and real time

        def attempt() -> float | None:
            started.append((family._clock.monotonic(), time.monotonic()))
            return family._take(company, owner)

        wait_for_lease(attempt, timeout=timeout, where=self.describe())
        pid = os.getpid()
        deadline = family.terms.deadline(started[-1][0], requested)
        renewal = family.terms.keep(
            lambda: family._renew(company, owner),
            where=self.describe(),
            taken_at=started[-1][1],
            requested=requested,
        )
        try:
            family.versions.forget(company)  # the holder must see the current version
            with HELD.holding(self.key, owner, deadline, renewal.held_until):
                yield Lease(deadline=deadline, held_until=renewal.held_until)
        finally:
            RENEWER.stop(renewal)
            if os.getpid() == pid:  # a forked child has this frame, not the lease
                family._release(company, owner)

    @contextlib.contextmanager
    def _owner(self) -> Iterator[str]:
        """The owner to write as: this thread's lease, or one taken for the write."""
        held = HELD.get(self.key)
        if held is not None:
            yield held.owner
            return
        with self._leased(_WRITE_TIMEOUT, self.family.terms.lease):
            held = HELD.get(self.key)
            assert held is not None
            yield held.owner

    # -- TokenStore -------------------------------------------------------------------------

    def load(self) -> TokenSet | None:
        family = self.family
        read_at = family._clock.monotonic()
        raw, version = family._read(self._id)
        family.versions.remember(self._id, version, raw is not None, read_at)
        if raw is None:
            return None
        if not isinstance(raw, str | bytes):
            raise TokenStoreError(f"{self.describe()} does not hold pleo-auth tokens")
        return decode_tokens(raw, self.describe())

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        family = self.family
        values = {"tokens": encode_tokens(tokens), "fence": fence(tokens)}
        expected = fence(replaces) if replaces is not None else None
        with self._owner() as owner:
            read_at = family._clock.monotonic()
            matched, version, holds = family._write(
                self._id, owner, values, expected, "save the tokens"
            )
        family.versions.remember(self._id, version, holds, read_at)
        if not matched:
            raise TokenStoreError(
                f"not saved: the tokens in {self.describe()} were replaced while this "
                "process refreshed them, or its lock's lease was taken over"
            )

    def clear(self, *, only: TokenSet | None = None) -> None:
        """Delete the stored tokens (the row stays, with its version); with ``only``,
        only if they are still those: newer tokens are left alone, silently."""
        family = self.family
        expected = fence(only) if only is not None else None
        with self._owner() as owner:
            read_at = family._clock.monotonic()
            _matched, version, holds = family._write(
                self._id, owner, {"tokens": None, "fence": None}, expected, "clear the tokens"
            )
        family.versions.remember(self._id, version, holds, read_at)

    def version(self) -> Hashable:
        """``(epoch, counter)``, or None before anything was written to the row.

        From the family's cache, refreshed for every grant in use by one query at
        most once per ``check_interval``; asked afresh while the grant holds no
        tokens, so that a login made elsewhere is seen at once.
        """
        return self.family.versions.version(self._id)

    # -- identity -------------------------------------------------------------------------------

    @property
    def key(self) -> Hashable:
        """The database, table, client id and company: equal for every store over
        the same row."""
        family = self.family
        return ("sql", family._identity, family.table_name, family.client_id, self._id)

    @property
    def spec(self) -> str:
        """The grant's ``--store`` spec; never with the password (give that in ``PLEO_STORE``)."""
        from ._sql_spec import sql_spec

        return sql_spec(self.family, self._id)

    @property
    def spec_omits_password(self) -> bool:
        return url_has_password(self.family.engine.url)

    def describe(self) -> str:
        family = self.family
        return (
            f"{family._where} table {family.table_name}, client {family.client_id!r}, "
            f"company {self._id}"
        )
