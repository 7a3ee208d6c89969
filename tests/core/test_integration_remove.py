"""``Integration.remove(company)`` stays removed, even when a failed save left the
company's live pair only in memory.

Found by review: when a refresh's save fails, the coordinator keeps the new
pair in memory (``_unsaved``) and withdraws the spent one from the store.
``remove()`` then deleted the store's grant and detached the coordinator; the
registry saw that it owed a write-back and let it *linger*, and its write-back
(``_write_back``) took the empty store for its own withdrawal and saved the pair
again. The company the app removed came back: ``companies()`` listed it,
``status()`` said no login was needed, the keep-alive refreshed it for ever, and
after ``remove(revoke=True)`` it was a revoked grant that later asked a person
to log in for a company the app had disconnected.

The fix: ``remove()`` tells the company's coordinator, under the store's lock,
that the removal is the truth (``Coordinator.abandon_unsaved``), and an operation
under way at that moment publishes nothing to write back.
"""

from __future__ import annotations

import time

from support.integration_helpers import grant, integration, new_companies

from pleo_auth import Company, MemoryStore, TokenSet, TokenStoreError
from pleo_auth._clock import FakeClock
from pleo_auth.stores.family import MemoryStoreFamily
from pleo_auth.testing import Emulator


class _FailingSaves(MemoryStore):
    """A store whose saves fail while ``failing`` is set (a full disk, say)."""

    failing = False

    def save(self, tokens: TokenSet, *, replaces: TokenSet | None = None) -> None:
        if self.failing:
            raise TokenStoreError("disk full", retryable=True)
        super().save(tokens, replaces=replaces)


class _Family(MemoryStoreFamily):
    def build_store(self, company: Company) -> MemoryStore:
        with self._guard:
            store = self._stores.get(company)
            if store is None:
                store = self._stores[company] = _FailingSaves()
            return store


def test_a_removed_company_is_not_written_back_by_a_pair_a_failed_save_left_in_memory(
    clock: FakeClock,
) -> None:
    (company,) = new_companies(1)
    family = _Family()
    with (
        Emulator(access_token_lifetime=3600) as emu,
        integration(emu, family, clock=clock) as pleo,
    ):
        pleo.add(company, grant(emu, company, now=time.time()))
        store = family.store(company)
        assert isinstance(store, _FailingSaves)
        session = pleo.session(company)
        store.failing = True
        try:
            session.refresh()
        except TokenStoreError:
            pass  # refreshed at Pleo; the new pair is only in memory
        else:
            raise AssertionError("the save should have failed")
        store.failing = False
        assert session._coordinator.owes_write_back

        pleo.remove(company)

        assert pleo.companies() == [], "the removed company's grant was written back"
        assert pleo.status(company).needs_login
    assert emu.counters.refresh_grants == 1
