"""``Integration.remove(company)`` stays removed, even when a failed save left the
company's live pair only in memory.

Bug: when a refresh's save fails, the coordinator keeps the new pair in memory
(``_unsaved``) and withdraws the spent one from the store. ``remove()`` then
deletes the store's grant and detaches the coordinator; the registry sees that it
owes a write-back and lets it *linger*, and its write-back (``_write_back``) takes
an empty store for its own withdrawal (``_owes_write_back(None)`` is
``_unsaved``) and saves the pair again. The company the app removed is back:
``companies()`` lists it, ``status()`` says no login is needed, the keep-alive
refreshes it for ever, and after ``remove(revoke=True)`` it is a revoked grant
that later asks a person to log in for a company the app disconnected.

Proposed fix: ``remove()`` tells the company's coordinator, under the store's
lock, that the store's state is now the truth (clear ``_unsaved``, drop the
tokens in memory), and ``_publish_locked`` must not set ``_unsaved`` again for
an operation that started before the removal (a removal generation the outcome
is checked against).
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
