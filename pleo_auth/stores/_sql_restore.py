"""Loss is not logout, for :class:`~pleo_auth.stores.sql.SQLStore`'s rows (issue 14).

A clear sets ``tokens`` to NULL and bumps ``version``: the row is the tombstone of
a logout. A grant whose row is gone (a truncated table, a deleted row), or holds
only what the refresh lock makes when it finds no row (``version`` 0, no tokens:
nothing was ever written since), lost its data. See :mod:`pleo_auth._restore`.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import sqlalchemy

from ..errors import TokenStoreError
from ..tokens import TokenSet
from ._sql import DatabaseError
from .base import encode_tokens
from .lease import fence

if TYPE_CHECKING:
    from .sql import SQLStore

__all__ = ["SQLRestoring"]


class SQLRestoring:
    """:meth:`TokenStore.lost` and :meth:`TokenStore.restore` of an SQLGrantStore."""

    family: SQLStore
    _id: str

    if TYPE_CHECKING:

        def describe(self) -> str: ...

    def lost(self) -> bool:
        """Whether the grant's row is gone, or was made by the lock since and never
        written: no tokens, and no tombstone of a clear."""
        family = self.family
        t = family.table
        query = sqlalchemy.select(t.c.version, t.c.tokens.is_(None)).where(family._row(self._id))
        with family._talking("read the tokens", "SELECT") as connection:
            row = connection.execute(query).first()
        return row is None or (int(row[0]) == 0 and bool(row[1]))

    def restore(self, tokens: TokenSet) -> None:
        """Write ``tokens`` into the lost row (or a new one), only while it is lost:
        one UPDATE of a row at version 0 without tokens, else one INSERT."""
        family = self.family
        t = family.table
        values = {"tokens": encode_tokens(tokens), "fence": fence(tokens)}
        read_at = family._clock.monotonic()
        lost_row = family._row(self._id) & (t.c.version == 0) & t.c.tokens.is_(None)
        update = sqlalchemy.update(t).where(lost_row).values(version=1, **values)
        insert = sqlalchemy.insert(t).values(
            client_id=family.client_id,
            company=self._id,
            epoch=secrets.token_hex(8),
            version=1,
            lease_owner=None,
            lease_until=None,
            **values,
        )
        read = sqlalchemy.select(t.c.epoch, t.c.version).where(family._row(self._id))
        try:
            with family._talking("restore the tokens", "UPDATE") as connection:
                done = connection.execute(update).rowcount == 1
                if not done and connection.execute(read).first() is None:
                    connection.execute(insert)
                    done = True
                row = connection.execute(read).first()
        except DatabaseError as exc:
            if exc.kind != "conflict":
                raise
            done, row = False, None  # another process made the row meanwhile
        if not done or row is None:
            raise TokenStoreError(
                f"not restored: {self.describe()} was written meanwhile", retryable=True
            )
        family.versions.remember(self._id, (str(row[0]), int(row[1])), True, read_at)
