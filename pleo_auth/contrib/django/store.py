"""The Django model store: each company's grant in a :class:`~.models.PleoGrant` row of
the app's own database, written through the ORM.

Select it with ``PLEO_AUTH = {"STORE": "django", ...}`` (``"django:<alias>"`` for a
database other than ``default``), or build :class:`DjangoStoreFamily` yourself.

**The lock is a lease in the row**, never a transaction held across the token
request:

* taking it is one ``UPDATE`` that sets ``lease_owner`` (random, this acquisition's
  own) and ``lease_until`` (the *database's* clock plus the lease) where the lease
  is free or has run out; a waiter tries again after a pause that doubles, with
  jitter, up to a quarter of a second;
* the refresh then runs with no transaction open, while a thread renews the
  lease every third of it (10 s by default), so a killed holder delays the others
  by at most one lease, and a slow refresh keeps it;
* the save is one fenced ``UPDATE``: it matches the refresh token the new pair
  replaces (its SHA-256, ``fence``) and this owner's lease, writes both tokens in
  one column, and bumps the version;
* every query runs in autocommit, on a connection outside any transaction of the
  app's (under ``transaction.atomic()`` or ``ATOMIC_REQUESTS``, on one of the
  store's own threads), so a request that rolls back never rolls back a rotation.

**Versions.** A process notices a rotation made elsewhere by the row's
``(epoch, version)``, cached per family for ``check_interval`` seconds (default 1)
and read for every grant the process uses in one query (see
:class:`~pleo_auth.stores.versions.VersionCache`): a request costs no query.
A check may be ``check_interval`` stale; that is safe, because a request sent with
an access token rotated away meanwhile is refused with 401, and pleo_auth then
re-reads the store and replays it with the new token.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import math
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from ..._clock import Clock, as_clock
from ...company import Company
from ...errors import ConfigurationError, TokenStoreError
from ...stores.base import Lease, TokenStore, decode_tokens, encode_tokens
from ...stores.family import TokenStoreFamily
from ...stores.lease import (
    DEFAULT_LEASE,
    HELD,
    RENEWER,
    LeaseTerms,
    check_requested,
    fence,
    new_owner,
    wait_for_lease,
)
from ...stores.versions import Reading, VersionCache, version_of
from ...tokens import TokenSet

__all__ = ["DEFAULT_LEASE", "DjangoGrantStore", "DjangoStoreFamily"]

logger = logging.getLogger(__name__)

#: The table's name, for messages written before the app registry is ready.
_TABLE = "pleo_auth_pleogrant"
#: Seconds a save or clear outside a lock waits for another holder's lease.
_WRITE_TIMEOUT = 30.0

_T = TypeVar("_T")


def _expiry(tokens: TokenSet) -> datetime.datetime | None:
    """The access token's expiry as a datetime for the admin; None if out of range."""
    try:
        return datetime.datetime.fromtimestamp(tokens.expires_at, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return None


# -- queries outside the app's transactions ---------------------------------------------

_FAMILIES: weakref.WeakSet[DjangoStoreFamily] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for family in list(_FAMILIES):
        family.watch.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _outside_transactions(alias: str, work: Callable[[], _T]) -> _T:
    """Run ``work`` in autocommit: here, or, when this thread is inside a
    transaction, on a thread of its own with a connection of its own, which it
    closes before it ends. A thread per call, not a pool: such calls are rare (a
    refresh, a version check per interval), and a pool's threads would stay for
    the life of the process."""
    from django.db import connections

    if not connections[alias].in_atomic_block:
        return _recovering(alias, work)
    outcome: list[_T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(_recovering(alias, work))
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)
        finally:
            connections.close_all()  # this thread's own: it ends here

    thread = threading.Thread(target=run, name="pleo-auth-django", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def _recovering(alias: str, work: Callable[[], _T]) -> _T:
    """Run ``work``; after a database error, drop this thread's connection if it is
    broken. Django does that only when a request starts or ends, and pleo_auth's own
    threads (the refresh pool, the lease renewer) serve no requests: without this,
    one restart of the database would leave their connections failing for good."""
    from django.db import DatabaseError, connections

    try:
        return work()
    except DatabaseError:
        connection = connections[alias]
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
        raise


class DjangoStoreFamily(TokenStoreFamily):
    """Grants of many Pleo companies in the app's own database: one
    :class:`~pleo_auth.contrib.django.models.PleoGrant` row per (client id, company).

    Needs ``"pleo_auth.contrib.django"`` in ``INSTALLED_APPS`` and its table
    (``manage.py migrate pleo_auth``). Building the family and its stores does no
    I/O; the model is imported at the first query.

    Args:
        client_id: The OAuth client the grants belong to: the family's rows are those
            of this client.
        using: The Django database alias.
        check_interval: Seconds a cached version stays valid (see the module).
        lease: Seconds a lease in a row lasts unless renewed (at most 10 is wise: a
            killed holder delays the others that long).
        clock: The sessions' clock; its monotonic time dates the version cache and
            the lease deadlines.

    Raises:
        ConfigurationError: An argument is invalid.

    Thread safety:
        Every method may be called from any thread and process. Each thread uses
        its own Django connection, as Django does.
    """

    def __init__(
        self,
        client_id: str,
        *,
        using: str = "default",
        check_interval: float = 1.0,
        lease: float = DEFAULT_LEASE,
        clock: Clock | Callable[[], float] | None = None,
    ):
        if not isinstance(client_id, str) or not client_id or len(client_id) > 255:
            raise ConfigurationError("the Django model store needs a client id of 1-255 characters")
        if not isinstance(using, str) or not using:
            raise ConfigurationError("using must name a Django database alias")
        if not (isinstance(check_interval, int | float) and 0 <= check_interval < math.inf):
            raise ConfigurationError("check_interval must be a finite number of seconds >= 0")
        self.client_id = client_id
        self.using = using
        self.terms = LeaseTerms(lease)
        self._clock = as_clock(clock, owner="DjangoStoreFamily")
        self.watch = VersionCache(
            self._clock,
            float(check_interval),
            read_one=lambda company: self._read_versions([company]).get(company, (None, False)),
            read_many=self._read_versions,
        )
        _FAMILIES.add(self)

    def build_store(self, company: Company) -> DjangoGrantStore:
        return DjangoGrantStore(self, company)

    def companies(self) -> list[Company]:
        def work() -> list[str]:
            rows = self.rows().filter(tokens__isnull=False).values_list("company", flat=True)
            return list(rows)

        found = self.query("list the companies", work)
        companies = []
        for text in found:
            try:
                companies.append(Company(text))
            except ConfigurationError:
                logger.warning("%s: a row names no company; skipped", self.describe())
        return sorted(companies)

    # -- queries -----------------------------------------------------------------

    def rows(self) -> Any:
        """The family's rows: a queryset over this client's grants."""
        from .models import PleoGrant

        return PleoGrant.objects.using(self.using).filter(client_id=self.client_id)

    def query(self, action: str, work: Callable[[], _T], company: Company | None = None) -> _T:
        """Run ``work`` outside the app's transactions; database errors become
        :class:`~pleo_auth.TokenStoreError` (retryable when the database may recover)."""
        from django.db import DatabaseError, InterfaceError, OperationalError

        try:
            return _outside_transactions(self.using, work)
        except DatabaseError as exc:
            where = self.describe() if company is None else f"{self.describe()}, company {company}"
            if self._table_missing():
                raise TokenStoreError(
                    f"cannot {action} in {where}: the table {self.table} does not exist; "
                    f"run `python manage.py migrate pleo_auth` (database {self.using!r})"
                ) from None
            # Not chained, and the driver's first line only: PostgreSQL's DETAIL lines
            # (and a chained error's traceback) may quote a row's values, tokens included.
            raise TokenStoreError(
                f"cannot {action} in {where}: {type(exc).__name__}: {_first_line(exc)}",
                retryable=isinstance(exc, OperationalError | InterfaceError),
            ) from None

    def _table_missing(self) -> bool:
        from django.db import DatabaseError, connections

        def work() -> bool:
            with connections[self.using].cursor() as cursor:
                return self.table not in connections[self.using].introspection.table_names(cursor)

        try:
            return _outside_transactions(self.using, work)
        except DatabaseError:
            return False

    def _read_versions(self, companies: Iterable[Hashable]) -> Mapping[Hashable, Reading]:
        wanted = [str(company) for company in companies]
        readings: dict[Hashable, Reading] = {}

        def work() -> None:
            for first in range(0, len(wanted), 500):
                batch = wanted[first : first + 500]
                rows = self.rows().filter(company__in=batch)
                for company, epoch, version, tokens_null in rows.values_list(
                    "company", "epoch", "version", is_null("tokens")
                ):
                    if version:  # a row the lock made holds no more than a missing one
                        readings[company] = ((epoch, version), not tokens_null)

        self.query("read the grants' versions", work)
        return readings

    @property
    def table(self) -> str:
        """The model's table name."""
        from django.apps import apps

        if not apps.ready:
            return _TABLE
        from .models import PleoGrant

        return str(PleoGrant._meta.db_table)

    def describe(self) -> str:
        return f"Django database {self.using!r}, table {self.table}, client {self.client_id!r}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def is_null(field: str) -> Any:
    """An annotation: whether ``field`` is NULL, without reading its value."""
    from django.db.models import BooleanField, ExpressionWrapper, Q

    return ExpressionWrapper(Q(**{f"{field}__isnull": True}), output_field=BooleanField())


def _after(seconds: float) -> Any:
    """The database's clock plus ``seconds``, as an expression."""
    from django.db.models import DateTimeField, ExpressionWrapper, Value
    from django.db.models.functions import Now

    return ExpressionWrapper(
        Now() + Value(datetime.timedelta(seconds=seconds)), output_field=DateTimeField()
    )


def _lease_free() -> Any:
    from django.db.models import Q
    from django.db.models.functions import Now

    return Q(lease_owner__isnull=True) | Q(lease_until__lt=Now())


class DjangoGrantStore(TokenStore):
    """One company's grant in a :class:`~pleo_auth.contrib.django.models.PleoGrant` row.

    Get it from :meth:`DjangoStoreFamily.store`. See the module for the lease, the
    fenced save and the cached version.

    Thread safety:
        Every method may be called from any thread and process. A lease belongs to
        the thread that took it: that thread's saves (through any store object over
        the same row) are fenced on it; the lock is re-entrant within that thread.
    """

    fenced = True

    def __init__(self, family: DjangoStoreFamily, company: Company):
        self.family = family
        self.company = Company(company)
        self._row = (family.using, family.client_id, self.company.id)

    def _rows(self) -> Any:
        return self.family.rows().filter(company=self.company.id)

    def _query(self, action: str, work: Callable[[], _T]) -> _T:
        return self.family.query(action, work, self.company)

    def _ensure_row(self) -> None:
        """Make the company's row (a tombstone, with a new epoch) if it is missing."""
        from .models import PleoGrant

        row = PleoGrant(
            client_id=self.family.client_id,
            company=self.company.id,
            epoch=secrets.token_hex(8),
        )
        PleoGrant.objects.using(self.family.using).bulk_create([row], ignore_conflicts=True)

    # -- TokenStore ----------------------------------------------------------------

    def load(self) -> TokenSet | None:
        read_at = self.family._clock.monotonic()
        row = self._query(
            "read the tokens",
            lambda: self._rows().values_list("tokens", "epoch", "version").first(),
        )
        if row is None:
            self.family.watch.remember(self.company.id, None, False, read_at)
            return None
        raw, epoch, version = row
        stored = version_of(epoch, version)
        self.family.watch.remember(self.company.id, stored, raw is not None, read_at)
        if raw is None:
            return None
        return decode_tokens(raw, f"the {self.family.table} row of company {self.company.id}")

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        from django.db.models import F
        from django.db.models.functions import Now

        values = {
            "tokens": encode_tokens(tokens),
            "fence": fence(tokens),
            "access_expires_at": _expiry(tokens),
            "version": F("version") + 1,
            "updated_at": Now(),
        }
        saved = self._write("save the tokens", values, replaces, make_row=replaces is None)
        if not saved:
            raise TokenStoreError(
                f"not saved: the tokens of company {self.company.id} in {self.family.describe()} "
                "were replaced meanwhile, or another process took over the refresh lease "
                "(this one's ran out?)"
            )

    def clear(self, *, only: TokenSet | None = None) -> None:
        """Delete the stored tokens (the row stays, as a tombstone); with ``only``,
        only if they are still those (newer tokens are left alone, silently)."""
        from django.db.models import F
        from django.db.models.functions import Now

        values = {
            "tokens": None,
            "fence": "",
            "access_expires_at": None,
            "version": F("version") + 1,
            "updated_at": Now(),
        }
        self._write("clear the tokens", values, only, make_row=False)

    def _write(
        self, action: str, values: dict[str, Any], expected: TokenSet | None, *, make_row: bool
    ) -> bool:
        """One fenced UPDATE: where the stored pair is ``expected`` (if given) and the
        lease is this thread's, or free (then waiting for it, as a lock would).
        False when the fence refused it (or there is no row and ``make_row`` is False)."""
        from django.db.models import Q

        match = Q() if expected is None else Q(fence=fence(expected), tokens__isnull=False)
        holding = HELD.get(self.key)
        try:
            if holding is not None:
                rows = self._rows().filter(match, lease_owner=holding.owner)
                return bool(self._query(action, functools.partial(rows.update, **values)))
            outcome: list[bool] = []
            made = [not make_row]

            def attempt() -> float | None:
                def work() -> int:
                    return int(self._rows().filter(match, _lease_free()).update(**values))

                if self._query(action, work):
                    outcome.append(True)
                    return None
                # Why not: the fence (never the tokens), or no row at all.
                found = self._query(action, self._rows().values_list("fence", flat=True).first)
                if found is None and not made[0]:
                    made[0] = True
                    self._query("make the company's row", self._ensure_row)
                    return 0.0
                if found is None or (expected is not None and found != fence(expected)):
                    outcome.append(False)  # refused by the fence, not by a lease: never wait
                    return None
                return 0.0  # another owner holds the lease: wait for it

            wait_for_lease(attempt, timeout=_WRITE_TIMEOUT, where=self.describe())
            return outcome[0]
        finally:
            self.family.watch.forget(self.company.id)

    def version(self) -> Hashable:
        """The row's ``(epoch, version)``, or None without a row or before its first
        write; cached (see the module)."""
        return self.family.watch.version(self.company.id)

    def lost(self) -> bool:
        """Whether the company's row is gone, or was made by the lock since and never
        written: no tokens and no tombstone of a clear (pleo_auth._restore)."""
        row = self._query("read the tokens", self._rows().values_list("version", "tokens").first)
        return row is None or (int(row[0]) == 0 and row[1] is None)

    def restore(self, tokens: TokenSet) -> None:
        """Write ``tokens`` into the lost row (or a new one), only while it is lost."""
        from django.db.models.functions import Now

        values = {
            "tokens": encode_tokens(tokens),
            "fence": fence(tokens),
            "access_expires_at": _expiry(tokens),
            "version": 1,
            "updated_at": Now(),
        }
        read_at = self.family._clock.monotonic()

        def work() -> tuple[Any, Any] | None:
            def write() -> int:
                return int(self._rows().filter(version=0, tokens__isnull=True).update(**values))

            if not write():
                if self._rows().exists():
                    return None  # written meanwhile: not lost any more
                self._ensure_row()  # as the lock makes it: version 0, no tokens
                if not write():
                    return None
            row: tuple[Any, Any] | None = self._rows().values_list("epoch", "version").first()
            return row

        row = self._query("restore the tokens", work)
        if row is None:
            raise TokenStoreError(
                f"not restored: company {self.company.id} in {self.family.describe()} "
                "was written meanwhile",
                retryable=True,
            )
        self.family.watch.remember(self.company.id, (row[0], row[1]), True, read_at)

    # -- the lease -------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, *, timeout: float, lease: float) -> Iterator[Lease]:
        """Hold the lease in the row: see the module. Re-entrant within a thread.

        Raises:
            ConfigurationError: ``lease`` is not a positive number of seconds.
            TokenStoreError: Not acquired within ``timeout`` (retryable), or the
                database failed.
        """
        requested = check_requested(lease)
        held = HELD.get(self.key)
        if held is not None:  # re-entered by the thread that holds it
            yield Lease(deadline=held.deadline, held_until=held.held_until)
            return
        terms = self.family.terms
        owner = new_owner()
        acquired_at, sent_at = self._acquire(owner, timeout, terms)
        deadline = terms.deadline(acquired_at, requested)
        pid = os.getpid()
        renewal = terms.keep(
            functools.partial(self._renew, owner, terms.lease),
            where=self.describe(),
            taken_at=sent_at,
            requested=requested,
        )
        try:
            with HELD.holding(self.key, owner, deadline, renewal.held_until):
                self.family.watch.forget(self.company.id)
                yield Lease(deadline=deadline, held_until=renewal.held_until)
        finally:
            RENEWER.stop(renewal)
            if os.getpid() == pid:  # a forked child never releases its parent's lease
                self._release(owner, terms.lease)

    def _acquire(self, owner: str, timeout: float, terms: LeaseTerms) -> tuple[float, float]:
        """Take the lease; the clock's monotonic time at the attempt that got it, and
        the real monotonic time (:func:`time.monotonic`) it was sent at."""
        values = {"lease_owner": owner, "lease_until": _after(terms.lease)}
        acquired_at = [0.0, 0.0]
        made = [False]

        def attempt() -> float | None:
            acquired_at[0] = self.family._clock.monotonic()
            acquired_at[1] = time.monotonic()

            def work() -> int:
                return int(self._rows().filter(_lease_free()).update(**values))

            if self._query("take the refresh lease", work):
                return None
            if not made[0]:
                made[0] = True
                self._query("make the company's row", self._ensure_row)
            return 0.0

        wait_for_lease(attempt, timeout=timeout, where=self.describe())
        return acquired_at[0], acquired_at[1]

    def _renew(self, owner: str, length: float) -> bool:
        rows = self._rows().filter(lease_owner=owner)
        values = {"lease_until": _after(length)}
        return bool(
            self._query("renew the refresh lease", functools.partial(rows.update, **values))
        )

    def _release(self, owner: str, length: float) -> None:
        rows = self._rows().filter(lease_owner=owner)
        release = functools.partial(rows.update, lease_owner=None, lease_until=None)
        try:
            released = self._query("release the refresh lease", release)
        except TokenStoreError as exc:
            # Never raise from here: the refresh may have succeeded, and its new
            # tokens must reach the caller. The lease ends by itself.
            logger.warning("%s; it runs out within %.0fs", exc, length)
            return
        if not released:
            logger.warning(
                "the refresh lease of company %s in %s ran out before it was released",
                self.company.id,
                self.family.describe(),
            )

    # -- identity ---------------------------------------------------------------------

    @property
    def key(self) -> Hashable:
        return ("django", *self._row)

    def describe(self) -> str:
        return f"{self.family.describe()}, company {self.company.id}"
